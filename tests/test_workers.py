"""Tokenising on every core (node/tokens/workers.py): the same tokens and proofs with one
process as with several, a worker that dies, and the ``workers`` setting."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from samenloop.node.client import SignalInput
from samenloop.node.provision import PartySpec, Provisioned
from samenloop.node.tokens import evaluation, oprf, threshold, workers
from samenloop.node.tokens.arithmetic import IN_PROCESS
from samenloop.node.tokens.derive import PendingTokens
from samenloop.node.tokens.threshold import FaultyHolders, HolderPlanner, Share
from samenloop.node.tokens.workers import Workers
from samenloop.policies.config import config_to_toml, load_node_config, node_config_from_toml
from samenloop.policies.covenant import Role
from samenloop.policies.errors import ConfigurationError, Unavailable
from tests.daemons import running_covenant, sqlite_count
from tests.test_evaluation import NOW, Broker, Ident, LyingHolder, World, world
from tests.test_oprf import VOPRF_PKSM, VOPRF_SKSM, VOPRF_VECTORS, h

COUNT = 300  # several slices of MIN_SLICE, one request


@pytest.fixture(scope="module")
def w() -> World:
    return world(2, 3)


@pytest.fixture(scope="module")
def pool(w: World) -> Iterator[Workers]:
    """Two worker processes holding the shares of holders 1 and 2 (as two holders' nodes would)."""
    with Workers(2, shares=[w.shares[1], w.shares[2]]) as pool:
        yield pool


def identifiers(count: int) -> list[Ident]:
    return [Ident("bsn", f"{j:09d}") for j in range(count)]


def tokenise(w: World, pool: Workers, ids: list[Ident]) -> list[bytes]:
    for holder in w.holders.values():
        holder.evaluate_partial = pool.evaluate_partial
    try:
        return evaluation.tokenise(
            w.node, w.directory, w.domain, w.epoch, ids, Broker(w.holders), now=NOW, workers=pool
        )
    finally:
        for holder in w.holders.values():
            holder.evaluate_partial = threshold.evaluate_partial


def test_slices_are_large_enough_and_cover_the_batch():
    assert workers.slices(1000, 2) == [(0, 500), (500, 1000)]
    assert workers.slices(100, 8) == [(0, 100)]  # fewer than two slices' worth: one
    assert workers.slices(130, 8) == [(0, 65), (65, 130)]
    assert workers.slices(1, 4) == [(0, 1)]
    cut = workers.slices(1001, 3)
    assert cut[0][0] == 0
    assert cut[-1][1] == 1001
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cut))


def test_tokens_with_two_workers_equal_one_worker_and_the_single_key(w: World, pool: Workers):
    ids = identifiers(COUNT)
    in_process = w.tokenise(Broker(w.holders), ids)  # evaluation.IN_PROCESS
    one = tokenise(w, Workers(1), ids)
    two = tokenise(w, pool, ids)
    assert in_process == one == two == w.expected(ids)
    assert len(pool.pids()) == 2  # the work did go to the worker processes


@pytest.mark.parametrize("vector", VOPRF_VECTORS, ids=["vector1", "vector2", "batch2"])
def test_the_pooled_proof_is_the_rfc_9497_proof(vector, monkeypatch, pool: Workers):
    # The whole key as one holder's share (t = 1: its Lagrange coefficient is 1), so the
    # holder's proof is the RFC's VOPRF proof; slices of one element, each in a worker.
    monkeypatch.setattr(workers, "MIN_SLICE", 1)
    sk = h(VOPRF_SKSM)
    share = Share(index=1, scalar=sk)
    assert share.commitment.hex() == VOPRF_PKSM
    blinded = [h(b) for b in vector["blinded"]]
    with Workers(2, shares=[share]) as own:
        partial = own.evaluate_partial(share, blinded, (1,), r=h(vector["proof_r"]))
        if len(blinded) > 1:
            assert own.pids()  # it ran in the workers
    assert [e.hex() for e in partial.evaluated_elements] == vector["evaluated"]
    assert partial.proof.hex() == vector["proof"]


def test_a_holders_pooled_answer_is_its_one_process_answer(w: World, pool: Workers):
    elements = [oprf.blind(f"x{j}".encode())[1] for j in range(COUNT)]
    r = oprf.random_scalar()
    for index in (1, 2):
        alone = threshold.evaluate_partial(w.shares[index], elements, (1, 2), r=r)
        assert pool.evaluate_partial(w.shares[index], elements, (1, 2), r=r) == alone
    # A share the workers were not given is evaluated here, the same way.
    assert pool.evaluate_partial(w.shares[3], elements, (1, 3), r=r) == (
        threshold.evaluate_partial(w.shares[3], elements, (1, 3), r=r)
    )


def test_the_pooled_check_names_every_faulty_holder(w: World, pool: Workers):
    elements = [oprf.blind(f"y{j}".encode())[1] for j in range(COUNT)]
    rset = (1, 3)
    answers = {i: threshold.evaluate_partial(w.shares[i], elements, rset) for i in rset}
    assert pool.combine(w.epoch, rset, elements, answers) == threshold.combine(
        w.epoch, rset, elements, answers
    )
    wrong_proof = replace(answers[1], proof=answers[3].proof)
    swapped = list(answers[3].evaluated_elements)
    swapped[200], swapped[201] = swapped[201], swapped[200]  # in the second slice
    wrong_element = replace(answers[3], evaluated_elements=tuple(swapped))
    with pytest.raises(FaultyHolders) as raised:
        pool.combine(w.epoch, rset, elements, {1: wrong_proof, 3: wrong_element})
    assert raised.value.indices == {1, 3}
    not_an_element = list(answers[3].evaluated_elements)
    not_an_element[250] = b"\xff" * 32
    with pytest.raises(FaultyHolders) as raised:
        pool.combine(
            w.epoch,
            rset,
            elements,
            {1: answers[1], 3: replace(answers[3], evaluated_elements=tuple(not_an_element))},
        )
    assert raised.value.indices == {3}


def test_a_killed_worker_is_replaced_and_the_call_answered(
    w: World, caplog: pytest.LogCaptureFixture
):
    ids = identifiers(COUNT)
    with Workers(2, shares=[w.shares[1]]) as pool:
        first = pool.start(w.domain, ids)
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="samenloop.node.tokens.workers"):
            again = pool.start(w.domain, ids)  # retried on a new pool
        assert "a crypto worker process died" in caplog.text
        assert victim not in pool.pids()
        assert len(again.blinded_elements) == COUNT
        assert again.inputs == first.inputs
        # And it goes on working.
        assert tokenise(w, pool, ids) == w.expected(ids)


def test_batches_of_several_requests_go_through_the_pipeline(w: World, pool: Workers):
    ids = identifiers(2 * evaluation.MAX_ELEMENTS + 70)
    assert tokenise(w, pool, ids) == w.expected(ids)


def test_a_lying_holder_found_while_the_next_request_is_out_is_left_out(pool: Workers):
    w = world(2, 3)
    liar = LyingHolder(w.holders[1], w.holder_keys[1])
    broker = Broker({**w.holders, 1: liar})
    ids = identifiers(2 * evaluation.MAX_ELEMENTS + 70)
    planner = HolderPlanner(w.epoch)
    made = evaluation.tokenise(
        w.node, w.directory, w.domain, w.epoch, ids, broker, now=NOW, planner=planner, workers=pool
    )
    assert made == w.expected(ids)
    assert planner.excluded == {1}
    # The first request went to holders 1 and 2, the second out before the first's proofs
    # were checked; then the first chunk asked again without holder 1.
    assert [sorted(r) for r in broker.requests[:3]] == [[1, 2], [2, 3], [2, 3]]


@pytest.mark.parametrize("parallel", [False, True])
def test_holders_running_out_midway_keep_every_token_made(parallel: bool, pool: Workers):
    w = world(2, 3, quota={1: 1200, 2: 1200, 3: 1200})
    ids = identifiers(2 * evaluation.MAX_ELEMENTS + 70)
    made = evaluation.tokenise(
        w.node,
        w.directory,
        w.domain,
        w.epoch,
        ids,
        Broker(w.holders),
        now=NOW,
        workers=pool if parallel else IN_PROCESS,
    )
    assert made == w.expected(ids)[: evaluation.MAX_ELEMENTS]


def test_a_worker_killed_while_a_batch_is_under_way_is_replaced(
    w: World, caplog: pytest.LogCaptureFixture
):
    ids = identifiers(COUNT)
    with Workers(2) as pool:
        pending, evaluated = _evaluated(w, pool.start(w.domain, ids))
        expected = pool.finish(pending, evaluated)
        os.kill(pool.pids()[0], signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="samenloop.node.tokens.workers"):
            later = pool.finish_later(pending, evaluated)  # in the broken pool, or refused
            assert later.result() == expected
        assert "a crypto worker process died" in caplog.text


def _evaluated(w: World, pending: PendingTokens) -> tuple[PendingTokens, list[bytes]]:
    """The batch and its evaluation with the whole key (what the holders' answers add up to)."""
    return pending, [oprf.scalar_mult(w.key, e) for e in pending.blinded_elements]


def _die() -> None:
    os._exit(3)


def test_workers_that_keep_dying_fail_with_unavailable_naming_workers():
    with Workers(2) as pool, pytest.raises(Unavailable) as raised:
        pool._map(_die, [(), ()])
    assert raised.value.field == "workers"


NODE_TOML = """
party = "gemeente"
broker = "broker.example.nl:7443"
data_dir = "data"
covenant = "covenant.toml"
certificate = "node.crt"
private_key = "node.key"
ca_certificate = "ca.crt"
party_keys = "party.keys"
"""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be 1..256, not 0"),
        ("257", "must be 1..256, not 257"),
        ("-1", "must be 1..256, not -1"),
        ('"2"', "must be a whole number"),
        ("true", "must be a whole number"),
        ("1.5", "must be a whole number"),
    ],
)
def test_the_workers_setting_is_checked_and_named(value, message, tmp_path: Path):
    data = (NODE_TOML + f"workers = {value}\n").encode()
    with pytest.raises(ConfigurationError) as raised:
        node_config_from_toml(data, source="node.toml", base_dir=tmp_path)
    assert raised.value.field == "node.toml: workers"
    assert raised.value.message == message


def test_the_workers_setting_reads_and_writes(tmp_path: Path):
    unset = node_config_from_toml(NODE_TOML.encode(), source="node.toml", base_dir=tmp_path)
    assert unset.workers is None
    assert "\nworkers =" not in config_to_toml(unset).decode()
    config = node_config_from_toml(
        (NODE_TOML + "workers = 4\n").encode(), source="node.toml", base_dir=tmp_path
    )
    assert config.workers == 4
    again = node_config_from_toml(
        config_to_toml(config, relative_to=tmp_path), source="node.toml", base_dir=tmp_path
    )
    assert again == config
    with pytest.raises(ConfigurationError) as raised:
        Workers(0)
    assert raised.value.field == "workers"


# --- through the daemons ------------------------------------------------------------------

DAEMON_SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
)


def _with_two_workers(provisioned: Provisioned) -> None:
    for path in provisioned.node_configs.values():
        path.write_text(path.read_text() + "workers = 2\n")


def _worker_pids(pid: int) -> list[int]:
    """The node's crypto worker processes: its children started by multiprocessing's spawn."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def _rows(prefix: str, count: int, offset: int) -> list[SignalInput]:
    return [
        SignalInput(f"{prefix}-{j}", "witwasindicatie", [("bsn", bsn)])
        for j, bsn in enumerate(_bsns(offset + count)[offset:])
    ]


def _bsns(count: int) -> list[str]:
    """The first ``count`` valid BSNs (the eleven-test) from 100000000 up."""
    found: list[str] = []
    n = 10_000_000
    while len(found) < count:
        n += 1
        digits = [int(c) for c in f"{n:08d}"]
        rest = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if rest < 10:  # the check digit d: 9..2-weighted sum - d = 0 (mod 11)
            found.append(f"{n:08d}{rest}")
    return found


def test_a_killed_worker_in_each_daemon_is_replaced_and_the_nodes_keep_serving(
    tmp_path: Path,
):
    with running_covenant(
        tmp_path / "covenant",
        "samenloop-workers",
        DAEMON_SPECS,
        ["gemeente", "politie"],
        2,
        now=datetime.now(UTC) - timedelta(minutes=5),
        configure=_with_two_workers,
    ) as daemons:
        node = daemons.clients["gemeente"]
        db = daemons.node_database("gemeente")
        waiting = "SELECT count(*) FROM signal_identifiers WHERE state IN ('pending', 'tokenised')"

        def sent(count: int) -> Callable[[], bool]:
            return lambda: (
                sqlite_count(db, waiting) == 0
                and sqlite_count(daemons.broker_database, "SELECT count(*) FROM token_entries")
                == count
            )

        assert node.import_signals(_rows("A", COUNT, 0)).imported == COUNT
        daemons.until("first import at the broker", 60, sent(COUNT))
        # Both nodes' workers started: the importing node's (blind, check, unblind) and
        # the other holder's (evaluate). The share reached them through their pipe, not on
        # their command line or in their environment. Kill one of each.
        for party in ("gemeente", "politie"):
            pids = _worker_pids(daemons.processes[party].pid)
            assert len(pids) == 2, party
            share_file = load_node_config(daemons.provisioned.node_configs[party]).key_share
            assert share_file is not None
            encoded = json.loads(share_file.read_text())["share"]
            scalar = base64.b64decode(encoded)
            for pid in pids:
                for what in ("cmdline", "environ"):
                    seen = Path(f"/proc/{pid}/{what}").read_bytes()
                    assert encoded.encode() not in seen
                    assert scalar not in seen
                    assert scalar.hex().encode() not in seen
            os.kill(pids[0], signal.SIGKILL)
        assert node.import_signals(_rows("B", COUNT, COUNT)).imported == COUNT
        daemons.until("second import at the broker", 60, sent(2 * COUNT))
        daemons.check_alive()
        for party in ("gemeente", "politie"):
            assert b"a crypto worker process died" in daemons.log(party), party
            assert len(_worker_pids(daemons.processes[party].pid)) == 2, party
        status = node.status()
        assert status.broker_connection == "connected"
