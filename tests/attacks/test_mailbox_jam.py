"""A partner that tries to jam other members' mailboxes: refused, and no item stops one.

Before issue 12 the woningcorporatie, with its own certificate and a client of
its own, submitted entries with 3.85 MB sealed attribute boxes under a token it
shares with the gemeente; every hit notice copies the members' boxes, so the
gemeente's and the RIEC's mailboxes held notices larger than any gRPC message and
stuck at that cursor for good, and a later covenant version never reached them.
Now the broker bounds every field that grows a notice and refuses such a batch
naming the field; and an item too large for any message (planted in the broker's
database, as if stored before the limits) is set aside with an audit entry while
delivery goes on past it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from samenloop.policies import rpc
from samenloop.policies.database import sqlite_stamp
from samenloop.v1 import broker_pb2, common_pb2

from daemons import sqlite_count, sqlite_rows
from harness import CovenantRun

BSN = "111222333"
BSN_LATER = "123456782"
MAX_REFS = common_pb2.LIMITS_MAX_REFS_PER_TOKEN


def shared_token(run: CovenantRun) -> bytes:
    """The token the woningcorporatie and the gemeente share: the partner's own node
    made it for its signal on the same subject, and the partner can read its database."""
    run.add_signal("gemeente", "G-JAM", "woonfraude", [("bsn", BSN)])
    run.add_signal("woningcorporatie", "W-JAM", "woonfraude", [("bsn", BSN)])
    run.hit_with("gemeente", "G-JAM", "woningcorporatie")
    ((token,),) = sqlite_rows(
        run.node_database("woningcorporatie"),
        "SELECT si.token FROM signal_identifiers si JOIN signals s ON s.id = si.signal_id"
        " WHERE s.reference = 'W-JAM'",
    )
    return bytes(token)


def entries_on(run: CovenantRun, token: bytes) -> int:
    return sqlite_count(
        run.broker_database, "SELECT count(*) FROM token_entries WHERE token = ?", token
    )


def jam_entry(token: bytes, box: bytes | None = None) -> broker_pb2.TokenEntry:
    sent = broker_pb2.TokenEntry(token=token, signal_ref=os.urandom(16))
    sent.expires_at.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    if box is not None:
        sent.sealed_attributes.CopyFrom(
            common_pb2.SecretBox(key_version=1, nonce=os.urandom(24), ciphertext=box)
        )
    return sent


def test_huge_sealed_boxes_under_a_shared_token_are_refused(covenant_run: CovenantRun) -> None:
    token = shared_token(covenant_run)
    before = entries_on(covenant_run, token)
    stub = covenant_run.broker_stub("woningcorporatie")
    for _ in range(3):  # the attack sent eleven; each is refused alike
        request = broker_pb2.SubmitTokensRequest(
            client_batch_id=os.urandom(16),
            key_epoch=covenant_run.covenant.key_epoch.epoch,
            entries=[jam_entry(token, os.urandom(3_850_000))],
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitTokens(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc.error_from_rpc(refused.value).field == "entries[0].sealed_attributes"
    assert entries_on(covenant_run, token) == before
    covenant_run.assert_serving()


def test_many_refs_under_one_token_are_refused(covenant_run: CovenantRun) -> None:
    token = shared_token(covenant_run)
    before = entries_on(covenant_run, token)
    held = sqlite_count(
        covenant_run.broker_database,
        "SELECT count(*) FROM token_entries t JOIN parties p ON p.id = t.party_id"
        " WHERE t.token = ? AND p.name = 'woningcorporatie'",
        token,
    )
    request = broker_pb2.SubmitTokensRequest(
        client_batch_id=os.urandom(16),
        key_epoch=covenant_run.covenant.key_epoch.epoch,
        entries=[jam_entry(token, os.urandom(112)) for _ in range(MAX_REFS)],
    )
    with pytest.raises(grpc.RpcError) as refused:
        covenant_run.broker_stub("woningcorporatie").SubmitTokens(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    first_too_many = MAX_REFS - held  # the partner's node holds `held` refs there already
    error = rpc.error_from_rpc(refused.value)
    assert error.field == f"entries[{first_too_many}].signal_ref"
    assert entries_on(covenant_run, token) == before
    covenant_run.assert_serving()


def plant(run: CovenantRun, party: str, payload: bytes) -> int:
    """Put an item in ``party``'s mailbox straight into the broker's database, as the
    broker stored items before the size limits; returns its cursor."""
    connection = sqlite3.connect(run.broker_database, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")  # the broker's writers wait meanwhile
        ((party_id, head),) = connection.execute(
            "SELECT h.party_id, h.head_cursor FROM mailbox_heads h"
            " JOIN parties p ON p.id = h.party_id WHERE p.name = ?",
            (party,),
        ).fetchall()
        cursor = head + 1
        connection.execute(
            "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
            " VALUES (?, ?, 'hit_notice', ?, ?)",
            (party_id, cursor, payload, sqlite_stamp(datetime.now(UTC))),
        )
        connection.execute(
            "UPDATE mailbox_heads SET head_cursor = ? WHERE party_id = ?", (cursor, party_id)
        )
        connection.execute("COMMIT")
    finally:
        connection.close()
    return cursor


def test_an_item_too_large_to_deliver_stops_no_mailbox(covenant_run: CovenantRun) -> None:
    huge = os.urandom(common_pb2.LIMITS_MAX_MESSAGE_BYTES + 1_000_000)
    planted = {party: plant(covenant_run, party, huge) for party in ("gemeente", "riec")}
    # Later notices still reach both ...
    covenant_run.add_signal("gemeente", "G-AFTER", "woonfraude", [("bsn", BSN_LATER)])
    covenant_run.add_signal("belastingdienst", "B-AFTER", "woonfraude", [("bsn", BSN_LATER)])
    covenant_run.hit_with("gemeente", "G-AFTER", "belastingdienst")
    covenant_run.wait_hit(
        "riec",
        lambda hit: {"gemeente", "belastingdienst"} <= {m.party for m in hit.members},
        "the hit on the later subject",
    )
    # ... and so does a new covenant version.
    current = covenant_run.covenant
    newer = dataclasses.replace(current, version=current.version + 1)
    covenant_run.publish(newer, name="covenant-after-jam")
    for party in ("gemeente", "riec"):
        covenant_run.until(
            f"{party} holds version {newer.version}",
            60,
            lambda p=party: (
                (s := covenant_run.status(p)) is not None and s.covenant_version == newer.version
            ),
        )
    # The broker moved each planted item aside, kept it and said so in its audit log;
    # each node recorded the marker it got instead.
    for party, cursor in planted.items():
        kept = sqlite_rows(
            covenant_run.broker_database,
            "SELECT s.kind, length(s.payload) FROM set_aside_items s"
            " JOIN parties p ON p.id = s.party_id WHERE p.name = ? AND s.cursor = ?",
            party,
            cursor,
        )
        assert kept == [("hit_notice", len(huge))]
        audited = [
            json.loads(details)
            for (details,) in sqlite_rows(
                covenant_run.broker_database,
                "SELECT details FROM audit_entries WHERE kind = 'mailbox_item_set_aside'",
            )
        ]
        assert {
            "party": party,
            "cursor": cursor,
            "kind": "hit_notice",
            "bytes": len(huge),
            "reason": "too_large",
        } in audited
        noted = [
            json.loads(details)
            for (details,) in sqlite_rows(
                covenant_run.node_database(party),
                "SELECT details FROM audit_entries WHERE kind = 'mailbox_item_set_aside'",
            )
        ]
        assert {"cursor": cursor, "kind": "hit_notice", "bytes": len(huge)} in noted
        status = covenant_run.status(party)
        assert status is not None
        assert status.mailbox_acked_cursor > cursor
    covenant_run.assert_serving()
