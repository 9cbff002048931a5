"""A removal the broker's operator withholds: the nodes stop within the freshness period.

From the attack review of issue 12 (``test_review_covenant_freeze.py`` on
wt-review). Nodes hear of a new covenant version only through the broker. Its
operator, colluding with the woningcorporatie, copies its database just before
the administrators publish a version that removes the woningcorporatie, lets
the publication succeed (the CLI exits 0, the broker serves the new version),
then puts the old database back and restarts. Before issue 12's fix every node
stayed on the old version for as long as the operator liked: it sealed new
categories under the attribute key the removed party holds, and the gemeente
released details to it.

The broker can always withhold a version; it cannot make a *covenant
timestamp* (signed by the covenant's timestamp key, which the operator does
not hold). So the bound: the nodes act on the withheld-from version for at most
the freshness period after the last timestamp the operator passed on, then stop
sealing and releasing and say why; the administrators' timestamp job, refused by
the broker ("publish version 2 first"), shows them what happened. Here the
covenant's freshness period is one minute (the shortest a covenant may set), so
this module waits about that long, once.

Each test asserts the refusal (nothing opened, nothing released, nothing sealed
while stale), that the nodes go on once the version is delivered, and that the
daemons keep serving.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from samenloop.node.client import Disclosure, NodeStatus
from samenloop.policies import covenant as covenant_model
from samenloop.policies.covenant import AttributeKey, Covenant, with_new_attribute_key
from samenloop.policies.errors import DecryptionFailed, NotFound
from samenloop.policies.freshness import CovenantTimestamp
from samenloop.policies.policy import MIN_FRESHNESS_SECONDS
from samenloop.policies.trust import SignedCovenant
from samenloop.v1 import broker_pb2, common_pb2

from daemons import READY_MARKERS, sqlite_rows
from harness import WAIT_SECONDS, CovenantRun

REMOVED = "woningcorporatie"
OWNER = "gemeente"
#: The subject both hold before the removal, and the one the gemeente adds after it.
SHARED, LATER = ("kvk", "51000002"), ("kvk", "51000001")


@pytest.fixture(scope="module")
def attack_freshness_seconds() -> int:
    return MIN_FRESHNESS_SECONDS


@dataclass(frozen=True)
class Frozen:
    """What the administrators published, what the removed party kept, and what the
    nodes did while the operator withheld the new version."""

    before: Covenant
    after: Covenant
    after_file: Path
    removed_key: AttributeKey
    #: The last covenant timestamp the operator passed on (for version 1).
    last: CovenantTimestamp
    #: The gemeente's status once it was stale, and the details its signal holds.
    stale_status: NodeStatus
    address: str
    #: The woningcorporatie's request for those details, made after the removal.
    request_id: bytes


def _copy_data(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def _timestamp_job(run: CovenantRun, signed_covenant: Path) -> tuple[int, str]:
    """The administrators' timestamp job (``covenant timestamp``, from cron): sign a
    timestamp for ``signed_covenant`` and publish it through the gemeente's node's TLS
    identity. Returns its exit code and what it printed."""
    done = run.cli(
        "covenant",
        "timestamp",
        "--covenant",
        str(signed_covenant),
        "--key",
        str(run.provisioned.timestamp_key),
        "--node",
        str(run.provisioned.node_configs[OWNER]),
    )
    return done.returncode, done.stdout + done.stderr


def _brokers_timestamp(run: CovenantRun) -> CovenantTimestamp:
    hello = run.broker_stub(OWNER).Hello(broker_pb2.HelloRequest(party=OWNER), timeout=10)
    assert hello.HasField("covenant_timestamp")
    return CovenantTimestamp.parse(hello.covenant_timestamp)


def _stop_all(run: CovenantRun, parties: list[str]) -> None:
    """Stop these nodes at once (the window between the last timestamp and the removed
    party's request is the freshness period: spend little of it waiting one by one)."""
    with ThreadPoolExecutor(len(parties)) as pool:
        list(pool.map(run.stop, parties))
    for party in parties:
        del run.processes[party]  # away on purpose: not a daemon that died


def _start_all(run: CovenantRun, parties: list[str]) -> None:
    marker = READY_MARKERS["node"]
    before = {party: run.log(party).count(marker) for party in parties}
    for party in parties:
        run.start(party, wait=False)
    for party in parties:
        run.wait_serving(party, before[party])
    run.wait_ready(parties)


def _all_fresh(run: CovenantRun, parties: tuple[str, ...]) -> None:
    run.until(
        "every node fresh",
        WAIT_SECONDS,
        lambda: all((s := run.status(p)) is not None and s.covenant_fresh for p in parties),
    )


@pytest.fixture(scope="module")
def frozen(covenant_run: CovenantRun) -> Frozen:
    run = covenant_run
    before = run.covenant
    removed_key = before.attribute_key_for(run.party_keys(REMOVED))
    # Provisioning's timestamp was issued five minutes before the daemons started: with a
    # one-minute freshness period every node starts stale, until the timestamp job runs.
    code, printed = _timestamp_job(run, run.provisioned.signed_covenant)
    assert code == 0, printed
    _all_fresh(run, run.parties)
    # Before the removal: the gemeente and the woningcorporatie hold the same subject.
    address = f"Dorpsstraat {os.urandom(3).hex()}"
    run.add_signal(OWNER, "G-WOCO", "woonfraude", [SHARED], details={"adres": address, "naam": "x"})
    run.add_signal(REMOVED, "W-WOCO", "woonfraude", [SHARED])
    hit = run.hit_with(REMOVED, "W-WOCO", OWNER)
    ref = next(m for m in hit.members if m.party == OWNER).signal_refs[0]

    # The timestamp job runs once more; then the operator copies its database while the
    # nodes are away (so that none fetches the new version before it is taken back).
    code, printed = _timestamp_job(run, run.provisioned.signed_covenant)
    assert code == 0, printed
    last = _brokers_timestamp(run)
    data = run.broker_database.parent
    snapshot = run.provisioned.root / "broker-snapshot"
    _stop_all(run, list(run.parties))
    run.stop("broker")
    _copy_data(data, snapshot)
    run.start("broker")
    # The administrators remove the woningcorporatie, as 'covenant remove-party' does, and
    # publish it with its timestamp: the broker accepts and serves the new version.
    after = with_new_attribute_key(
        before, tuple(p for p in before.parties if p.id != REMOVED), version=before.version + 1
    )
    after_file = run.publish(after, name="covenant-without-woco")
    served = run.broker_stub(OWNER).GetCovenant(broker_pb2.GetCovenantRequest(), timeout=10)
    assert SignedCovenant.from_proto(served.covenant).unverified().version == after.version
    # The operator puts its database back as it was, with the last timestamp of version 1.
    run.stop("broker")
    _copy_data(snapshot, data)
    run.start("broker")
    # The gemeente's node stays down for a while (maintenance, say); the others come back.
    _start_all(run, [p for p in run.parties if p != OWNER])
    assert _brokers_timestamp(run) == last
    # After the removal, the woningcorporatie asks the gemeente for the details.
    asked = run.client(REMOVED).request_disclosure(
        hit.group_id, OWNER, ref, "adresfraude", ["adres"], officer="woco-1"
    )
    # The last timestamp expires; the nodes that run say so at once.
    run.until(
        "the politie's node stale",
        MIN_FRESHNESS_SECONDS + 30,
        lambda: (s := run.status("politie")) is not None and s.covenant_fresh is False,
    )
    politie = run.status("politie")
    assert politie is not None
    assert politie.covenant_fresh_until == last.expires_at  # the bound: not a moment longer
    assert datetime.now(UTC) >= last.expires_at
    # The gemeente's node comes back: it holds version 1 and nothing newer vouches for it.
    run.start(OWNER)
    run.wait_ready([OWNER])
    run.until(
        "the gemeente's answer to the woningcorporatie",
        WAIT_SECONDS,
        lambda: _decided(run, OWNER, asked.request_id) is not None,
    )
    run.until(
        "the gemeente's refusal at the woningcorporatie",
        WAIT_SECONDS,
        lambda: _decided(run, REMOVED, asked.request_id) is not None,
    )
    stale = run.status(OWNER)
    assert stale is not None
    # Stale, it takes the gemeente's new signal but seals nothing: it waits.
    run.add_signal(OWNER, "G-AFTER-REMOVAL", "katvanger", [LATER])
    time.sleep(3)  # a few rounds of the work loop
    assert _refs_at_broker(run, "G-AFTER-REMOVAL") == []
    return Frozen(before, after, after_file, removed_key, last, stale, address, asked.request_id)


def _decided(run: CovenantRun, party: str, request_id: bytes) -> Disclosure | None:
    try:
        record = run.client(party).disclosure(request_id)
    except NotFound:
        return None
    return record if record.state.value in ("granted", "refused") else None


def _refs_at_broker(run: CovenantRun, reference: str) -> list[bytes]:
    """The sealed categories the broker holds of the gemeente's signal ``reference`` (what
    the operator hands the removed party)."""
    refs = [
        bytes(row[0])
        for row in sqlite_rows(
            run.node_database(OWNER),
            "SELECT si.signal_ref FROM signal_identifiers si"
            " JOIN signals s ON s.id = si.signal_id WHERE s.reference = ?",
            reference,
        )
    ]
    return [
        bytes(row[0])
        for ref in refs
        for row in sqlite_rows(
            run.broker_database,
            "SELECT sealed_attributes FROM token_entries WHERE signal_ref = ?"
            " AND sealed_attributes IS NOT NULL",
            ref,
        )
    ]


def test_the_removed_party_gets_no_details_once_the_owner_is_stale(
    covenant_run: CovenantRun, frozen: Frozen
) -> None:
    run = covenant_run
    status = frozen.stale_status
    assert status.covenant_fresh is False
    assert status.covenant_version == frozen.before.version
    assert status.covenant_fresh_until == frozen.last.expires_at
    assert "expired" in status.covenant_stale_reason, status.covenant_stale_reason
    at_owner = _decided(run, OWNER, frozen.request_id)
    assert at_owner is not None
    assert (at_owner.state.value, at_owner.refusal_reason) == ("refused", "covenant_stale")
    assert dict(at_owner.released_fields) == {}
    # The woningcorporatie's node got the refusal, and no details.
    at_requester = _decided(run, REMOVED, frozen.request_id)
    assert at_requester is not None
    assert at_requester.refusal_reason == "covenant_stale"
    assert frozen.address not in dict(at_requester.released_fields).values()
    # The gemeente's audit log says that it was stale, and for which version.
    changes = [
        json.loads(row[0])
        for row in sqlite_rows(
            run.node_database(OWNER),
            "SELECT details FROM audit_entries WHERE kind = 'covenant_freshness' ORDER BY seq",
        )
    ]
    assert {"fresh": False, "until": frozen.last.expires_at.isoformat(), "version": 1} in changes
    run.assert_serving()


def test_the_removed_party_cannot_open_what_is_sealed_once_the_version_is_delivered(
    covenant_run: CovenantRun, frozen: Frozen
) -> None:
    run = covenant_run
    # While the operator withholds version 2, the administrators' timestamp job fails,
    # naming what is wrong: that is how they find out.
    code, printed = _timestamp_job(run, frozen.after_file)
    assert code != 0
    assert "publish version 2 first" in printed, printed
    # They publish version 2 again (with a timestamp): the nodes take it and go on.
    run.publish(frozen.after, name="covenant-without-woco-again")
    run.until(
        "the gemeente on version 2 and fresh",
        WAIT_SECONDS,
        lambda: (
            (s := run.status(OWNER)) is not None
            and s.covenant_version == frozen.after.version
            and s.covenant_fresh is True
        ),
    )
    # The signal it took while stale is sealed now, under version 2's attribute key.
    found: list[bytes] = []

    def sealed() -> bool:
        found[:] = _refs_at_broker(run, "G-AFTER-REMOVAL")
        return bool(found)

    run.until("G-AFTER-REMOVAL at the broker", WAIT_SECONDS, sealed)
    box = common_pb2.SecretBox.FromString(found[0])
    assert box.key_version == frozen.after.attribute_key_version
    try:
        plaintext = covenant_model.open_attributes(frozen.removed_key, box.nonce, box.ciphertext)
    except DecryptionFailed:
        pass
    else:
        category = common_pb2.MemberAttributes.FromString(plaintext).category
        pytest.fail(f"the removed party opened the category {category!r} (key v{box.key_version})")
    run.assert_serving()
