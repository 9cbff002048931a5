"""A removed party that keeps reading: refused for everything sealed after its removal.

The covenant's administrators publish a version without the woningcorporatie,
as ``covenant remove-party`` writes it: a new attribute key version dealt to
the parties that remain. The woningcorporatie keeps what it held — its party
keys, the covenant versions it was given and so the attribute key of version
1 — and, colluding with the broker's operator, reads the broker's database,
where every party's sealed categories lie. It cannot open a category sealed
after the nodes adopted the new key; the categories sealed before its removal
stay open to it (it could read them as a party: that is the bound the docs
state). The running nodes pick the new key up from the broker's mailbox and
show the categories of old and new hits alike, without a restart, and the
removed party is cut off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import DecodeError

from samenloop.policies import covenant as covenant_model
from samenloop.policies.covenant import AttributeKey, Covenant, with_new_attribute_key
from samenloop.policies.errors import DecryptionFailed
from samenloop.v1 import broker_pb2, common_pb2

from daemons import READY_MARKERS, sqlite_rows
from harness import CovenantRun

REMOVED = "woningcorporatie"
STAYING = ("gemeente", "belastingdienst", "riec")


def _bsns(count: int, start: int = 30_000_000) -> list[str]:
    """``count`` BSNs that pass the 11-test."""
    found, prefix = [], start
    while len(found) < count:
        digits = f"{prefix:08d}"
        check = sum(int(d) * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10:
            found.append(digits + str(check))
        prefix += 1
    return found


OLD_BSN, NEW_BSN = _bsns(2)


@dataclass(frozen=True)
class Removal:
    """What happened before the attacks: the old hit, the removal, what the removed party holds."""

    old_group: bytes
    before: Covenant
    after: Covenant
    #: The attribute key the removed party was dealt: all it holds.
    removed_key: AttributeKey
    #: The daemons' process ids when the removal was published.
    pids: dict[str, int]


def _members(covenant_run: CovenantRun, group: bytes) -> dict[str, tuple[str, ...]]:
    """The RIEC's view of a hit: member party -> the categories its node could open."""
    hit = next(h for h in covenant_run.client("riec").hits() if h.group_id == group)
    return {m.party or "?": m.categories for m in hit.members}


@pytest.fixture(scope="module")
def removal(covenant_run: CovenantRun) -> Removal:
    before = covenant_run.covenant
    removed_key = before.attribute_key_for(covenant_run.party_keys(REMOVED))
    # Before the removal: three partners hold signals on one subject; the RIEC sees all.
    for party, category in (
        ("gemeente", "vastgoedmisbruik"),
        ("belastingdienst", "witwasindicatie"),
        (REMOVED, "woonfraude"),
    ):
        covenant_run.add_signal(party, f"OLD-{party}", category, [("bsn", OLD_BSN)])
    old = covenant_run.wait_hit(
        "riec",
        lambda h: (
            {m.party for m in h.members} == {"gemeente", "belastingdienst", REMOVED}
            and all(m.categories for m in h.members)
        ),
        "the hit of three partners with their categories",
    )
    pids = {name: process.pid for name, process in covenant_run.processes.items()}
    # The administrators remove the woningcorporatie, as 'covenant remove-party' does.
    after = with_new_attribute_key(
        before,
        tuple(p for p in before.parties if p.id != REMOVED),
        version=before.version + 1,
    )
    assert after.attribute_key_version == before.attribute_key_version + 1
    covenant_run.publish(after, name="covenant-without-woco")
    for party in STAYING:
        covenant_run.until(
            f"{party} on version {after.version}",
            60,
            lambda p=party: (
                (s := covenant_run.status(p)) is not None and s.covenant_version == after.version
            ),
        )
    # After the removal: two partners hold signals on a new subject.
    covenant_run.add_signal("gemeente", "NEW-gemeente", "katvanger", [("bsn", NEW_BSN)])
    covenant_run.add_signal("belastingdienst", "NEW-bd", "drugsproductie", [("bsn", NEW_BSN)])
    covenant_run.wait_hit(
        "riec",
        lambda h: (
            h.group_id != old.group_id
            and {m.party for m in h.members} == {"gemeente", "belastingdienst"}
        ),
        "the new hit",
    )
    return Removal(old.group_id, before, after, removed_key, pids)


def _broker_boxes(covenant_run: CovenantRun) -> list[common_pb2.SecretBox]:
    """Every sealed category in the broker's database: token entries and mailbox notices."""
    database = covenant_run.broker_database
    boxes = [
        common_pb2.SecretBox.FromString(row[0])
        for row in sqlite_rows(
            database,
            "SELECT sealed_attributes FROM token_entries WHERE sealed_attributes IS NOT NULL",
        )
    ]
    for (payload,) in sqlite_rows(
        database, "SELECT payload FROM mailbox_items WHERE kind = 'hit_notice'"
    ):
        try:
            notice = broker_pb2.HitNotice.FromString(common_pb2.Signed.FromString(payload).body)
        except DecodeError:
            continue
        boxes += [box for member in notice.members for box in member.sealed_attributes]
    return boxes


def _category(key: AttributeKey, box: common_pb2.SecretBox) -> str:
    plaintext = covenant_model.open_attributes(key, box.nonce, box.ciphertext)
    return common_pb2.MemberAttributes.FromString(plaintext).category


def test_the_removed_party_cannot_open_categories_sealed_after_its_removal(
    covenant_run: CovenantRun, removal: Removal
) -> None:
    boxes = _broker_boxes(covenant_run)
    new = [box for box in boxes if box.key_version == removal.after.attribute_key_version]
    old = [box for box in boxes if box.key_version == removal.before.attribute_key_version]
    assert len(new) >= 2, len(new)  # the two entries sealed after the removal
    assert len(old) >= 2, len(old)  # the others' sealed before it (the broker dropped its own)
    # The boxes are real: a party that stayed opens every new one (its key from the covenant).
    staying_key = removal.after.attribute_key_for(covenant_run.party_keys("gemeente"))
    assert {_category(staying_key, box) for box in new} == {"katvanger", "drugsproductie"}
    # The removed party, with the key it holds, opens none of them ...
    for box in new:
        with pytest.raises(DecryptionFailed):
            _category(removal.removed_key, box)
    # ... nor its way to the new key: the version it is missing deals it no box, and the
    # boxes of the others are sealed to their keys.
    removed_keys = covenant_run.party_keys(REMOVED)
    assert not removal.after.is_party(REMOVED)
    for party in removal.after.parties:
        with pytest.raises(DecryptionFailed):
            covenant_model.open_attribute_key(
                removed_keys,
                party.sealed_attribute_key,
                covenant_id=removal.after.id,
                version=removal.after.attribute_key_version,
            )
    # The bound: what was sealed before the removal stays open to it, as it was while it
    # was a party (docs/covenant.md, "The attribute key").
    assert {_category(removal.removed_key, box) for box in old} == {
        "vastgoedmisbruik",
        "witwasindicatie",
    }
    covenant_run.assert_serving()


def test_running_nodes_show_old_and_new_categories_without_a_restart(
    covenant_run: CovenantRun, removal: Removal
) -> None:
    # No daemon was restarted to pick up the new key: the same processes, started once.
    for name, pid in removal.pids.items():
        assert covenant_run.processes[name].pid == pid, name
        assert covenant_run.alive(name), name
        marker = READY_MARKERS["broker" if name == "broker" else "node"]
        assert covenant_run.log(name).count(marker) == 1, name

    def old_hit_shrunk() -> bool:
        return set(_members(covenant_run, removal.old_group)) == {"gemeente", "belastingdienst"}

    covenant_run.until("the old hit without the removed party", 60, old_hit_shrunk)
    # The old hit's categories were sealed under the old key; the RIEC still reads them.
    assert _members(covenant_run, removal.old_group) == {
        "gemeente": ("vastgoedmisbruik",),
        "belastingdienst": ("witwasindicatie",),
    }
    new = next(
        h
        for h in covenant_run.client("riec").hits()
        if h.group_id != removal.old_group
        and {m.party for m in h.members} == {"gemeente", "belastingdienst"}
    )
    assert {m.party: m.categories for m in new.members} == {
        "gemeente": ("katvanger",),
        "belastingdienst": ("drugsproductie",),
    }
    notice = broker_pb2.HitNotice.FromString(common_pb2.Signed.FromString(new.notice).body)
    assert {b.key_version for m in notice.members for b in m.sealed_attributes} == {
        removal.after.attribute_key_version
    }
    covenant_run.assert_serving()


def test_a_node_holding_the_new_version_no_longer_shows_the_removed_party(
    covenant_run: CovenantRun, removal: Removal
) -> None:
    """The broker puts the removal's notices before the version in each mailbox, so every
    node that stays took the old hit's shrinking before it adopted the version: its audit
    log, written as it reads its mailbox, says which came first."""
    told: list[str] = []
    for party in STAYING:
        rows = sqlite_rows(
            covenant_run.node_database(party),
            "SELECT seq, kind, subject, details FROM audit_entries"
            " WHERE kind IN ('hit_notice', 'covenant_accepted') ORDER BY seq",
        )
        (adopted,) = [
            seq
            for seq, kind, _, details in rows
            if kind == "covenant_accepted"
            and json.loads(details)["version"] == removal.after.version
        ]
        shrunk = [
            seq
            for seq, kind, subject, details in rows
            if kind == "hit_notice"
            and subject == removal.old_group.hex()
            and json.loads(details)["kind"] in ("shrunk", "closed")
        ]
        assert all(seq < adopted for seq in shrunk), (party, shrunk, adopted)
        if shrunk:
            told.append(party)
        # And what it shows now: the removed party in none of its hits.
        for hit in covenant_run.client(party).hits():
            assert REMOVED not in {m.party for m in hit.members}, party
    # The RIEC sees every member of a hit: it was told, before the version.
    assert "riec" in told


def test_the_removed_party_is_cut_off(covenant_run: CovenantRun, removal: Removal) -> None:
    stub = covenant_run.broker_stub(REMOVED)
    for call in (
        lambda: stub.FetchMailbox(broker_pb2.FetchMailboxRequest(), timeout=10),
        lambda: stub.SubmitTokens(
            broker_pb2.SubmitTokensRequest(
                client_batch_id=bytes(16),
                key_epoch=removal.before.key_epoch.epoch,
                entries=[broker_pb2.TokenEntry(token=bytes(32), signal_ref=bytes(16))],
            ),
            timeout=10,
        ),
        lambda: stub.GetCovenant(broker_pb2.GetCovenantRequest(), timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Its node still serves its own staff, on the version it held, with the old key only.
    def refused() -> bool:
        status = covenant_run.status(REMOVED)
        return status is not None and "PERMISSION_DENIED" in status.last_error

    covenant_run.until(f"{REMOVED}'s node reporting the broker's refusal", 60, refused)
    status = covenant_run.status(REMOVED)
    assert status is not None
    assert status.covenant_version == removal.before.version
    covenant_run.assert_serving()
