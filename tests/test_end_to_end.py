"""End to end: the broker and three nodes as real processes, mTLS on loopback, SQLite.

A covenant of three partners (gemeente, politie, belastingdienst; all three hold
a share of the OPRF key, 2-of-3) is provisioned in a temporary directory, its
databases are migrated with the CLI, and ``samenloop broker serve`` and three
``samenloop node serve`` run as separate processes, as in ``make demo``. The
tests drive them through the client library, as a partner's application would,
and look at the databases and logs on disk.

* A crash run: each node imports a few thousand BSNs, among them subjects that
  two or three partners hold, written differently at each (dots, spaces, a
  dropped leading zero). Once the first tokens reach the broker it is SIGKILLed
  and restarted while the import goes on; once tokens flow again a node is
  SIGKILLed and restarted while the rest is imported. Each partner's
  application follows ``watch_hits`` and resumes after the last feed sequence
  it saw. Every expected hit arrives at every involved node, no application
  sees a hit change twice, the broker holds exactly the token entries the nodes
  hold as acknowledged, and the outboxes and mailboxes drain.
* Bad input over the daemons: refused with the offending field, nothing stored,
  and the node keeps serving.
* A byte scan of the broker's database files and log for every raw identifier
  (as written and canonical), reference, detail and category that was imported:
  none may appear.

Every process is SIGKILLed at teardown, whatever happened; every wait is bounded.
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from samenloop.node.client import Hit, HitWatch, ImportReport, NodeClient, SignalInput
from samenloop.node.daemon.api_token import bearer, read_token
from samenloop.node.identifiers.normalise import IdentifierType
from samenloop.node.provision import PartySpec
from samenloop.policies.covenant import Role
from samenloop.policies.errors import InvalidInput, LocalError, NotFound, UnknownType
from samenloop.policies.policy import Level, VisibilityRule, example_policy
from samenloop.policies.rpc import error_from_rpc
from samenloop.v1 import common_pb2, node_pb2, node_pb2_grpc

from daemons import (
    START_SECONDS,
    Daemons,
    cli_command,
    running_covenant,
    sqlite_count,
    sqlite_rows,
    wait_until,
)

COVENANT = "riec-e2e"
SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("belastingdienst", "Belastingdienst", Role.BELASTINGDIENST),
)
PARTIES = tuple(spec.id for spec in SPECS)
CATEGORIES = {
    "gemeente": "vastgoedmisbruik",
    "politie": "drugsproductie",
    "belastingdienst": "witwasindicatie",
}
PREFIXES = {"gemeente": "GEM", "politie": "POL", "belastingdienst": "BD"}
#: Who holds each shared subject, in turn: all three, then each pair.
HOLDER_SETS = (PARTIES, PARTIES[:2], (PARTIES[0], PARTIES[2]), PARTIES[1:])
SHARED_SUBJECTS = 60
UNIQUE_PER_NODE = 2_500
IMPORT_CHUNK = 500
#: The node that is killed and restarted (a key holder: the other two carry on).
VICTIM = "gemeente"

RUN_SECONDS = 60.0


# --- synthetic data --------------------------------------------------------------------


def valid_bsn(rng: random.Random, *, leading_zero: bool) -> str:
    """A BSN that passes the 11-test; with ``leading_zero`` it starts with one 0."""
    while True:
        head = [0, rng.randrange(1, 10)] if leading_zero else [rng.randrange(1, 10)]
        digits = head + [rng.randrange(10) for _ in range(8 - len(head))]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10:
            return "".join(map(str, digits)) + str(check)


def written(party: str, bsn: str) -> str:
    """A BSN the way each partner's source writes it."""
    if party == "gemeente":  # a spreadsheet column of numbers: the leading zero is gone
        return bsn[1:] if bsn.startswith("0") else bsn
    if party == "politie":
        return f"{bsn[:4]}.{bsn[4:6]}.{bsn[6:]}"
    return f"{bsn[:2]} {bsn[2:4]} {bsn[4:6]} {bsn[6:]}"


@dataclass(frozen=True)
class Row:
    """One signal as a partner imports it, and what the test knows about it."""

    party: str
    reference: str
    value: str  # as written
    canonical: str
    detail: str
    subject: int | None  # index of the shared subject, None if only this party holds it

    def signal(self) -> SignalInput:
        return SignalInput(
            reference=self.reference,
            category=CATEGORIES[self.party],
            identifiers=[(IdentifierType.BSN, self.value)],
            details={"toelichting": self.detail},
            leading_zero_dropped=frozenset({IdentifierType.BSN})
            if self.party == "gemeente"
            else False,
        )


@dataclass(frozen=True)
class Dataset:
    rows: dict[str, list[Row]]
    #: subject index -> the parties that hold it
    holders: dict[int, tuple[str, ...]]
    #: reference -> subject index (None: not shared)
    subjects: dict[str, int | None]

    def expected(self, party: str) -> dict[int, set[str]]:
        """The shared subjects a party holds -> the other parties in its hit."""
        return {
            subject: set(holders) - {party}
            for subject, holders in self.holders.items()
            if party in holders
        }


def make_dataset(seed: int = 4) -> Dataset:
    rng = random.Random(seed)
    seen: set[str] = set()

    def fresh(leading_zero: bool) -> str:
        bsn = valid_bsn(rng, leading_zero=leading_zero)
        while bsn in seen:  # unshared means unshared: no chance overlaps
            bsn = valid_bsn(rng, leading_zero=leading_zero)
        seen.add(bsn)
        return bsn

    rows: dict[str, list[Row]] = {party: [] for party in PARTIES}
    holders: dict[int, tuple[str, ...]] = {}

    def add(party: str, bsn: str, subject: int | None) -> None:
        n = len(rows[party]) + 1
        reference = f"{PREFIXES[party]}-{n:05d}"
        rows[party].append(
            Row(party, reference, written(party, bsn), bsn, f"e2e-detail {reference}", subject)
        )

    for subject in range(SHARED_SUBJECTS):
        holders[subject] = HOLDER_SETS[subject % len(HOLDER_SETS)]
        bsn = fresh(leading_zero=subject % 3 == 0)  # a third lose their zero at the gemeente
        for party in holders[subject]:
            add(party, bsn, subject)
    for party in PARTIES:
        for _ in range(UNIQUE_PER_NODE):
            add(party, fresh(leading_zero=rng.random() < 0.1), None)
        rng.shuffle(rows[party])  # hits arise all through the import, not at its start
    subjects = {row.reference: row.subject for party_rows in rows.values() for row in party_rows}
    return Dataset(rows, holders, subjects)


# --- the processes -----------------------------------------------------------------------


@dataclass
class Cluster(Daemons):
    """The covenant's daemons, with what the crash run keeps track of."""

    #: Every row any test sent to a node (valid or not): what the broker must never hold.
    sent: list[Row] = field(default_factory=list)
    #: Identifiers the nodes accepted, per party: the token entries the broker must hold.
    accepted: Counter[str] = field(default_factory=Counter)
    #: What happened when (seconds since the cluster was set up), for failure messages.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def mark(self, event: str) -> None:
        self.timeline.append((round(time.monotonic() - self.started, 2), event))

    @property
    def broker_db(self) -> Path:
        return self.broker_database

    def node_db(self, party: str) -> Path:
        return self.node_database(party)

    def broker_tokens(self) -> int:
        return sqlite_count(self.broker_db, "SELECT count(*) FROM token_entries")


#: Crash safety is about delivery, not about who sees what: every role sees every member
#: (the covenant's visibility rules are tested in test_rules and test_broker_covenant).
SEE_ALL = replace(
    example_policy(),
    visibility=tuple(VisibilityRule(role, Level.CATEGORIES) for role in Role),
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_covenant(
        tmp_path_factory.mktemp("e2e"),
        COVENANT,
        SPECS,
        PARTIES,
        2,
        now=datetime.now(UTC) - timedelta(minutes=5),
        policy=SEE_ALL,
        daemons=Cluster,
    ) as running:
        assert isinstance(running, Cluster)
        running.mark("broker and nodes ready")
        yield running


# --- the application's hit watcher -------------------------------------------------------


class Watcher:
    """A partner's application following its node's hits with ``watch_hits``.

    It keeps the feed sequence of the last change it processed and, when the
    stream breaks (the node went away), connects again and resumes after it.
    """

    def __init__(self, config: Path) -> None:
        self._client = NodeClient.from_config(config, timeout=5)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: HitWatch | None = None
        self.seen: list[tuple[bytes, int, int]] = []  # (group, revision, feed sequence)
        self.last_sequence = 0
        self.breaks = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    watch = self._client.watch_hits(after_feed_seq=self.last_sequence)
                    self._watch = watch
                    if self._stop.is_set():  # stopped meanwhile: do not wait on this one
                        watch.cancel()
                for hit in watch:
                    assert hit.sequence is not None
                    with self._lock:
                        self.seen.append((hit.group_id, hit.revision, hit.sequence))
                        self.last_sequence = hit.sequence
            except LocalError:  # the node is down or restarting: resume after the last seen
                with self._lock:
                    self.breaks += 1
                self._stop.wait(0.1)
            except BaseException as error:  # reported by the test
                self.error = error
                return

    def snapshot(self) -> tuple[list[tuple[bytes, int, int]], int]:
        with self._lock:
            return list(self.seen), self.last_sequence

    def latest(self) -> dict[bytes, int]:
        """The newest revision seen of each group."""
        newest: dict[bytes, int] = {}
        for group, revision, _ in self.snapshot()[0]:
            newest[group] = max(revision, newest.get(group, 0))
        return newest

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._watch is not None:
                self._watch.cancel()
        self._thread.join(10)
        self._client.close()


# --- the crash run -------------------------------------------------------------------------


class Importer(threading.Thread):
    """Imports a party's rows in chunks, as an application would: a chunk whose call fails
    because the node went away is sent again once the node is back.

    The rows come in parts, each after a gate opens (the broker was killed, the node was
    killed), so that the crashes fall in the middle of the import by construction.
    """

    def __init__(
        self,
        client: NodeClient,
        parts: Sequence[tuple[threading.Event | None, Sequence[Row]]],
        deadline: float,
    ) -> None:
        super().__init__(name="importer", daemon=True)
        self._client = client
        self._parts = parts
        self._deadline = deadline
        self.reports: list[ImportReport] = []
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for gate, rows in self._parts:
                if gate is not None and not gate.wait(max(0.0, self._deadline - time.monotonic())):
                    raise TimeoutError("the import waited too long for its next part")
                for start in range(0, len(rows), IMPORT_CHUNK):
                    self._send([row.signal() for row in rows[start : start + IMPORT_CHUNK]])
        except BaseException as error:  # reported by the test
            self.error = error

    def _send(self, chunk: list[SignalInput]) -> None:
        while True:
            try:
                self.reports.append(self._client.import_signals(chunk))
                return
            except LocalError:  # the node is down: send the chunk again when it is back
                if time.monotonic() > self._deadline:
                    raise
                self.retries += 1
                time.sleep(0.1)


@dataclass
class CrashRun:
    dataset: Dataset
    watchers: dict[str, Watcher]
    importers: dict[str, Importer]
    tokens_when_broker_killed: int
    expected_tokens: int
    #: The victim's watcher, just before the node was killed: (hits seen, last sequence).
    victim_seen_before_kill: tuple[int, int]


def hits_complete(cluster: Cluster, dataset: Dataset, party: str) -> bool:
    """Whether a node holds one hit per shared subject of the party, each showing all of
    its other holders."""
    hits = cluster.clients[party].hits()
    want = dataset.expected(party)
    if len(hits) != len(want):
        return False
    return all(
        h.party_count is not None and h.party_count == len(want.get(_subject(dataset, h), ())) + 1
        for h in hits
    )


def _subject(dataset: Dataset, hit: Hit) -> int:
    """The shared subject a hit is about, by the reference of the node's own signal in it."""
    own = hit.own_signals
    subject = dataset.subjects.get(own[0].reference or "") if own else None
    return -1 if subject is None else subject


def mailboxes_acked(cluster: Cluster) -> bool:
    return (
        sqlite_count(
            cluster.broker_db, "SELECT count(*) FROM mailbox_heads WHERE acked_cursor < head_cursor"
        )
        == 0
    )


@pytest.fixture(scope="module")
def crash_run(cluster: Cluster) -> Iterator[CrashRun]:
    dataset = make_dataset()
    configs = cluster.provisioned.node_configs
    watchers = {party: Watcher(configs[party]) for party in PARTIES}
    deadline = time.monotonic() + RUN_SECONDS
    broker_killed, victim_killed = threading.Event(), threading.Event()
    importers: dict[str, Importer] = {}
    expected_tokens = sum(cluster.accepted.values()) + sum(len(r) for r in dataset.rows.values())
    try:
        for rows in dataset.rows.values():
            cluster.sent.extend(rows)
        for party in PARTIES:
            rows = dataset.rows[party]
            first, second = len(rows) * 4 // 10, len(rows) * 7 // 10
            importers[party] = Importer(
                cluster.clients[party],
                [
                    (None, rows[:first]),
                    (broker_killed, rows[first:second]),  # imported while the broker is down
                    (victim_killed, rows[second:]),  # while the victim node is down
                ],
                deadline,
            )
            importers[party].start()

        # 1. The broker dies while the nodes import and tokenise; it comes back.
        before = cluster.broker_tokens()
        wait_until(
            lambda: cluster.broker_tokens() > before,
            START_SECONDS,
            "the broker stored a first batch of tokens",
            check=cluster.check_alive,
        )
        cluster.kill("broker")
        broker_killed.set()
        tokens_at_kill = cluster.broker_tokens()
        cluster.mark(f"broker killed at {tokens_at_kill} tokens")
        time.sleep(0.5)  # the nodes notice: calls fail, the work goes on offline
        cluster.start("broker")
        cluster.mark("broker restarted")

        # 2. A node dies once tokens flow again and its application has seen hits.
        wait_until(
            lambda: (
                cluster.broker_tokens() > tokens_at_kill and bool(watchers[VICTIM].snapshot()[0])
            ),
            RUN_SECONDS,
            "tokens reach the restarted broker and the victim's application sees a hit",
            check=cluster.check_alive,
        )
        seen, last = watchers[VICTIM].snapshot()
        cluster.kill(VICTIM)
        victim_killed.set()
        cluster.mark(f"{VICTIM} killed at {cluster.broker_tokens()} tokens")
        cluster.start(VICTIM)

        for importer in importers.values():
            importer.join(max(0.1, deadline - time.monotonic()))

        # 3. Everything settles: tokens in, outboxes empty, hits complete, applications told.
        for party in PARTIES:
            cluster.accepted[party] += len(dataset.rows[party])

        def settled() -> bool:
            if any(i.is_alive() for i in importers.values()):
                return False
            if cluster.broker_tokens() != expected_tokens:
                return False
            for party in PARTIES:
                status = cluster.status(party)
                if status is None or status.outbox_pending != 0:
                    return False
                if not hits_complete(cluster, dataset, party):
                    return False
                current = {h.group_id: h.revision for h in cluster.clients[party].hits()}
                if watchers[party].latest() != current:
                    return False
            return mailboxes_acked(cluster)

        def progress() -> str:
            statuses = {p: cluster.status(p) for p in PARTIES}
            return (
                f"{cluster.timeline}; broker tokens {cluster.broker_tokens()}/{expected_tokens}; "
                + "; ".join(
                    f"{p}: outbox {s.outbox_pending if s else '?'}, "
                    f"hits {len(cluster.clients[p].hits()) if s else '?'}"
                    f"/{len(dataset.expected(p))}, watcher {len(watchers[p].latest())}"
                    f" {watchers[p].error!r}, importer {importers[p].error!r}"
                    for p, s in statuses.items()
                )
            )

        wait_until(
            settled,
            max(1.0, deadline - time.monotonic()),
            progress,
            check=cluster.check_alive,
            interval=0.2,
        )
        cluster.mark("settled")
        yield CrashRun(
            dataset=dataset,
            watchers=watchers,
            importers=importers,
            tokens_when_broker_killed=tokens_at_kill,
            expected_tokens=expected_tokens,
            victim_seen_before_kill=(len(seen), last),
        )
    finally:
        broker_killed.set()
        victim_killed.set()
        for importer in importers.values():
            importer.join(10)
        for watcher in watchers.values():
            watcher.stop()


def test_broker_and_node_crashes_lose_nothing_and_duplicate_nothing(
    cluster: Cluster, crash_run: CrashRun
) -> None:
    dataset = crash_run.dataset
    # The crashes came mid-run: the broker died with tokens still to come.
    assert 0 < crash_run.tokens_when_broker_killed < crash_run.expected_tokens

    # Every row stored exactly once: each chunk was answered once (a chunk that was
    # stored but not answered before the node died comes back unchanged when re-sent).
    for party, importer in crash_run.importers.items():
        assert importer.error is None, f"{party}: {importer.error!r}"
        assert sum(r.rejected for r in importer.reports) == 0
        stored = sum(r.imported + r.unchanged for r in importer.reports)
        assert stored == len(dataset.rows[party])
        assert sqlite_count(
            cluster.node_db(party),
            f"SELECT count(*) FROM signals WHERE reference GLOB '{PREFIXES[party]}-[0-9]*'",
        ) == len(dataset.rows[party])

    # Every expected hit at every involved node, showing every other holder and category.
    for party in PARTIES:
        hits = cluster.clients[party].hits()
        want = dataset.expected(party)
        got = {_subject(dataset, hit): hit for hit in hits}
        assert len(hits) == len(got) == len(want), party
        assert set(got) == set(want), party
        for subject, hit in got.items():
            assert [s.reference for s in hit.own_signals] == [
                row.reference for row in dataset.rows[party] if row.subject == subject
            ]
            assert {m.party for m in hit.members} == want[subject]
            assert {c for m in hit.members for c in m.categories} == {
                CATEGORIES[p] for p in want[subject]
            }
            assert hit.party_count == len(want[subject]) + 1

    # No application saw a change twice; each saw the latest revision of each of its hits.
    for party, watcher in crash_run.watchers.items():
        assert watcher.error is None, f"{party}: {watcher.error!r}"
        seen, _ = watcher.snapshot()
        pairs = [(group, revision) for group, revision, _ in seen]
        sequences = [sequence for _, _, sequence in seen]
        assert len(pairs) == len(set(pairs)), f"{party}: a hit change was delivered twice"
        assert sequences == sorted(set(sequences)), f"{party}: feed sequences repeat or go back"
        current = {h.group_id: h.revision for h in cluster.clients[party].hits()}
        assert watcher.latest() == current, party
    # The victim's application lost its stream and resumed after its last sequence.
    victim = crash_run.watchers[VICTIM]
    count_before, last_before = crash_run.victim_seen_before_kill
    assert victim.breaks >= 1
    seen, _ = victim.snapshot()
    assert all(sequence > last_before for _, _, sequence in seen[count_before:])

    # No acknowledged token lost, none stored twice: the broker holds exactly the token
    # entries (token, signal ref) that each node holds as acknowledged, one per identifier
    # the node accepted, and processed each batch the node saw acknowledged once.
    assert cluster.broker_tokens() == crash_run.expected_tokens
    for party in PARTIES:
        node_db = cluster.node_db(party)
        at_node = sqlite_rows(
            node_db, "SELECT token, signal_ref FROM signal_identifiers WHERE state = 'submitted'"
        )
        at_broker = sqlite_rows(
            cluster.broker_db,
            "SELECT t.token, t.signal_ref FROM token_entries t"
            " JOIN parties p ON p.id = t.party_id WHERE p.name = ?",
            party,
        )
        assert len(at_node) == len(at_broker) == cluster.accepted[party], party
        assert set(at_node) == set(at_broker), party
        assert sqlite_count(node_db, "SELECT count(*) FROM signal_identifiers") == len(at_node)
        acked = sqlite_count(
            node_db,
            "SELECT count(*) FROM outbox_batches WHERE kind = 'submit' AND acked_at IS NOT NULL",
        )
        processed = sqlite_count(
            cluster.broker_db,
            "SELECT count(*) FROM processed_batches b JOIN parties p ON p.id = b.party_id"
            " WHERE p.name = ? AND b.kind = 'submit'",
            party,
        )
        assert acked == processed, party
        status = cluster.clients[party].status()
        assert status.outbox_pending == 0
        assert status.open_hits == len(dataset.expected(party))
    open_groups = sqlite_count(cluster.broker_db, "SELECT count(*) FROM hit_groups WHERE is_open")
    assert open_groups == len(dataset.holders)
    assert mailboxes_acked(cluster)


# --- bad input over the daemons -------------------------------------------------------------


def test_bad_input_is_refused_and_the_node_keeps_serving(cluster: Cluster) -> None:
    party = "politie"
    client = cluster.clients[party]
    before = client.status().active_signals
    rng = random.Random(99)
    good = [valid_bsn(rng, leading_zero=False) for _ in range(3)]
    bad_bsn = good[0][:-1] + str((int(good[0][-1]) + 1) % 10)  # breaks the 11-test

    def row(reference: str, *values: tuple[str, str]) -> SignalInput:
        return SignalInput(reference, CATEGORIES[party], list(values))

    # An invalid BSN: INVALID_ARGUMENT naming the field and the rule.
    with pytest.raises(InvalidInput) as refused:
        client.add_signal("POL-BAD-1", CATEGORIES[party], [("bsn", bad_bsn)])
    assert (refused.value.field, refused.value.reason) == (
        "signal.identifiers[0].value",
        "bsn.check_digit",
    )
    assert bad_bsn not in str(refused.value)

    # An unknown identifier type, as the wire carries it (the library refuses it locally).
    with grpc.insecure_channel(client.target) as channel:
        stub = node_pb2_grpc.NodeApiStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.AddSignal(
                node_pb2.AddSignalRequest(
                    signal=node_pb2.Signal(
                        reference="POL-BAD-2",
                        category=CATEGORIES[party],
                        identifiers=[
                            node_pb2.Identifier(type=common_pb2.IDENTIFIER_TYPE_BSN, value=good[0]),
                            node_pb2.Identifier(
                                type=common_pb2.IdentifierType.ValueType(99), value="x"
                            ),
                        ],
                    )
                ),
                timeout=10,
                metadata=bearer(
                    read_token(cluster.provisioned.party_dir(party) / "data/api-token")
                ),
            )
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = error_from_rpc(failure.value)
        assert (error.field, error.reason) == (
            "signal.identifiers[1].type",
            "identifier.unknown_type",
        )
    with pytest.raises(UnknownType):
        client.add_signal("POL-BAD-3", CATEGORIES[party], [("bsn", good[0]), ("schoenmaat", "44")])

    # An import with malformed rows: each reported with row, field and reason; the valid
    # rows stored; a row with one good and one bad identifier stored not at all.
    rows = [
        row("POL-IMP-1", ("bsn", good[1])),
        row("POL-IMP-2", ("bsn", good[0]), ("bsn", bad_bsn)),
        SignalInput("POL-IMP-3", "", [("bsn", good[0])]),
        row("POL-IMP-4", ("bsn", "12345")),
        row("POL-IMP-5", ("bsn", good[2])),
    ]
    cluster.sent.extend(
        Row(party, r.reference, v, v, "", None) for r in rows for _, v in r.identifiers
    )
    cluster.sent.append(Row(party, "POL-BAD-1", bad_bsn, bad_bsn, "", None))
    report = client.import_signals(rows)
    assert (report.imported, report.unchanged, report.rejected) == (2, 0, 3)
    assert sorted((e.row, e.field, e.reason) for e in report.errors) == [
        (1, "identifiers[1].value", "bsn.check_digit"),
        (2, "category", "signal.category_missing"),
        (3, "identifiers[0].value", "bsn.length"),
    ]
    for reference in ("POL-BAD-1", "POL-BAD-2", "POL-BAD-3", "POL-IMP-2", "POL-IMP-3", "POL-IMP-4"):
        with pytest.raises(NotFound):
            client.signal(reference)
    assert (
        sqlite_count(
            cluster.node_db(party),
            f"SELECT count(*) FROM signal_identifiers WHERE canonical = '{good[0]}'",
        )
        == 0
    )

    # The node keeps serving: status answers, a valid signal is accepted, and the
    # accepted rows travel on as tokens.
    assert cluster.alive(party)
    added = client.add_signal("POL-OK-1", CATEGORIES[party], [("bsn", good[0])])
    assert added.identifiers[0].canonical == good[0]
    cluster.sent.append(Row(party, "POL-OK-1", good[0], good[0], "", None))
    cluster.accepted[party] += 3
    assert client.status().active_signals == before + 3
    expected = sum(cluster.accepted.values())
    wait_until(
        lambda: (
            cluster.broker_tokens() == expected
            and (s := cluster.status(party)) is not None
            and s.outbox_pending == 0
        ),
        START_SECONDS,
        lambda: f"broker tokens {cluster.broker_tokens()}/{expected}",
        check=cluster.check_alive,
    )


# --- no raw identifier at the broker ----------------------------------------------------------


def find_needles(data: bytes, needles: set[bytes]) -> set[bytes]:
    """Which of ``needles`` occur in ``data``: check, at each byte that starts a needle,
    the lengths of the needles that start with it."""
    lengths: dict[int, set[int]] = {}
    for needle in needles:
        lengths.setdefault(needle[0], set()).add(len(needle))
    starts = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in sorted(lengths)) + b"]")
    found: set[bytes] = set()
    for match in starts.finditer(data):
        i = match.start()
        for length in lengths[data[i]]:
            piece = data[i : i + length]
            if piece in needles:
                found.add(piece)
    return found


def test_a_second_node_on_one_data_directory_refuses_and_the_first_keeps_serving(
    cluster: Cluster,
) -> None:
    """Issue 15: one daemon per data directory. A second ``node serve`` on the same
    configuration used to take over the first's API socket (and delete it on exit); now it
    stops at the lock, naming the data directory and the pid that holds it, before it
    touches anything, and the first goes on serving on the socket it made."""
    party = "politie"
    config = cluster.provisioned.node_configs[party]
    socket = cluster.provisioned.party_dir(party) / "data" / "api.sock"
    first = cluster.processes[party].pid
    assert socket.exists()
    second = subprocess.run(
        cli_command("node", "serve", "--config", str(config)),
        capture_output=True,
        timeout=START_SECONDS,
        check=False,
    )
    message = second.stderr.decode(errors="replace")
    assert second.returncode != 0, message
    assert f"another node (pid {first}) already runs on the data directory" in message
    assert "data_dir" in message  # the setting to change
    assert socket.exists()  # not taken over, not deleted
    assert cluster.clients[party].status().active_signals >= 0  # still serving, same socket
    assert cluster.alive(party)


def test_no_raw_identifier_or_category_reaches_the_broker(
    cluster: Cluster, crash_run: CrashRun
) -> None:
    needles: set[bytes] = set(c.encode() for c in CATEGORIES.values())
    for row in cluster.sent:
        needles |= {row.value.encode(), row.canonical.encode(), row.reference.encode()}
        if row.detail:
            needles.add(row.detail.encode())
    assert len(needles) > 3 * UNIQUE_PER_NODE

    files = [
        cluster.broker_db.with_name(cluster.broker_db.name + suffix)
        for suffix in ("", "-wal", "-shm")
    ]
    scanned = {path.name: path.read_bytes() for path in files if path.exists()}
    scanned["broker.log"] = cluster.log("broker")
    assert len(scanned["broker.db"]) > 100_000  # it holds the run's tokens
    assert b"broker listening" in scanned["broker.log"]
    for name, data in scanned.items():
        leaked = find_needles(data, needles)
        assert not leaked, f"{name} holds raw values: {sorted(leaked)[:5]}"

    # The scan does find what is there: a node's own database holds its canonical values.
    own = {row.canonical.encode() for row in crash_run.dataset.rows["politie"]}
    node_db = cluster.node_db("politie")
    node_files = b"".join(
        p.read_bytes() for p in (node_db, node_db.with_name("node.db-wal")) if p.exists()
    )
    assert find_needles(node_files, own) == own
