"""What a partner could pile onto others without any quota: envelopes, and notices by churn.

Review of issue 12 (fresh attack review of main, after the first fixes). Finding 2
put limits on every field that grows a hit notice and per-party quotas on token
submissions. The other ways a partner writes into another party's mailbox had none:

* ``SendEnvelope`` checked only the sender, the recipient and the ciphertext's
  length: a ``Sealed`` with a nonce of any length (0, 25 or 3,000,000 bytes; the
  protocol's ``LIMITS_NONCE_BYTES`` is exactly 24) was stored and delivered, and a
  single mailbox item of about 4 MiB resulted; and a partner stored as many 1 MiB
  envelopes in an offline party's mailbox as it could send (about 40 MiB a second):
  the broker's disk was the only limit. Now the nonce is checked, the whole
  ``Sealed`` is bounded, and envelopes count against the covenant's quotas: per
  sender and UTC day (``envelopes_per_day``, ``envelope_bytes_per_day``) and per
  recipient, from all senders together (``envelope_bytes_waiting``).
* Withdrawing one ref of 64 (with 256-byte boxes) under a shared token and
  submitting it again told every co-member twice, ~17.7 KB a notice: ~35 KB to each
  per quota entry, since withdrawals counted against nothing. Now withdrawn refs
  count like submitted entries, and the bytes of the notices a party's batches put
  in the others' mailboxes count against ``hit_notice_bytes_per_day``.
* A stored item whose bytes do not parse (a row damaged on disk or by hand) failed
  ``StreamMailbox`` INTERNAL on every retry: that mailbox stuck. Now it is set aside
  like an item too large for any message.

This module's covenant has small quotas (``attack_policy``) so that each bound is
reached in seconds; the defaults are in ``docs/covenant.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from samenloop.broker import mailbox
from samenloop.policies.database import sqlite_stamp
from samenloop.policies.policy import Policy, example_policy
from samenloop.policies.rpc import error_from_rpc
from samenloop.v1 import broker_pb2, common_pb2

from daemons import sqlite_count, sqlite_rows
from harness import CovenantRun

PARTNER = "woningcorporatie"
VICTIM = "gemeente"
NONCE_BYTES = common_pb2.LIMITS_NONCE_BYTES
MAX_ENVELOPE = common_pb2.LIMITS_MAX_ENVELOPE_BYTES
MAX_REFS = common_pb2.LIMITS_MAX_REFS_PER_TOKEN
MIB = 2**20
#: What one partner may send a day, and what may wait in one mailbox from all together.
BYTES_PER_DAY = 6 * MIB
BYTES_WAITING = 10 * MIB
#: The hit-notice bytes one party's batches may cause the others a day (the least allowed).
NOTICE_BYTES = 1 * MIB
#: The reviewer's bound: some refusal must come before this much reached one mailbox.
FLOOD_BYTES = 256 * MIB


@pytest.fixture(scope="module")
def attack_policy() -> Policy:
    policy = example_policy()
    quotas = dataclasses.replace(
        policy.quotas,
        envelope_bytes_per_day=BYTES_PER_DAY,
        envelope_bytes_waiting=BYTES_WAITING,
        hit_notice_bytes_per_day=NOTICE_BYTES,
    )
    return dataclasses.replace(policy, quotas=quotas)


def _sealed(
    run: CovenantRun, *, nonce: bytes, ciphertext: bytes, sender: str = PARTNER
) -> common_pb2.Sealed:
    return common_pb2.Sealed(
        sender=sender,
        recipient=VICTIM,
        covenant_version=run.covenant.version,
        nonce=nonce,
        ciphertext=ciphertext,
    )


def _mailbox_bytes(run: CovenantRun, party: str, kind: str = "envelope") -> int:
    """What the broker holds in ``party``'s mailbox of one kind: bytes not yet acknowledged."""
    return sqlite_count(
        run.broker_database,
        "SELECT coalesce(sum(length(m.payload)), 0) FROM mailbox_items m"
        " JOIN parties p ON p.id = m.party_id WHERE p.name = ? AND m.kind = ?",
        party,
        kind,
    )


def _largest_item(run: CovenantRun) -> int:
    return sqlite_count(
        run.broker_database, "SELECT coalesce(max(length(payload)), 0) FROM mailbox_items"
    )


def _flood(run: CovenantRun, sender: str, limit: int) -> tuple[int, grpc.RpcError | None]:
    """Send maximal envelopes from ``sender`` to the victim until refused or ``limit``."""
    stub = run.broker_stub(sender)
    sent = 0
    while sent < limit:
        try:
            stub.SendEnvelope(
                broker_pb2.SendEnvelopeRequest(
                    client_message_id=os.urandom(16),
                    envelope=_sealed(
                        run,
                        sender=sender,
                        nonce=os.urandom(NONCE_BYTES),
                        ciphertext=os.urandom(MAX_ENVELOPE),
                    ),
                ),
                timeout=30,
            )
        except grpc.RpcError as error:
            return sent, error
        sent += MAX_ENVELOPE
    return sent, None


@contextlib.contextmanager
def offline(run: CovenantRun, *parties: str) -> Iterator[None]:
    """These nodes away for a while, so that their mailboxes keep everything; back, and
    connected again, afterwards."""
    for party in parties:
        run.stop(party)
        del run.processes[party]  # away on purpose, not a daemon that died
    try:
        yield
    finally:
        for party in parties:
            run.start(party)
        run.wait_ready(list(parties))


@pytest.mark.parametrize("size", [0, NONCE_BYTES + 1, 3_000_000])
def test_an_envelope_with_a_nonce_of_the_wrong_size_is_refused(
    covenant_run: CovenantRun, size: int
) -> None:
    run = covenant_run
    stub = run.broker_stub(PARTNER)
    before = _largest_item(run)
    with pytest.raises(grpc.RpcError) as refused:
        stub.SendEnvelope(
            broker_pb2.SendEnvelopeRequest(
                client_message_id=os.urandom(16),
                envelope=_sealed(run, nonce=b"n" * size, ciphertext=b"c" * 1000),
            ),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_from_rpc(refused.value).field == "envelope.nonce"
    assert _largest_item(run) == before
    run.assert_serving()


def test_an_envelope_larger_than_the_largest_sealed_is_refused(covenant_run: CovenantRun) -> None:
    """Unknown fields could carry megabytes past the known fields' checks: the whole
    ``Sealed`` is bounded, so no stored envelope exceeds what protocol.md states."""
    run = covenant_run
    padded = _sealed(run, nonce=os.urandom(NONCE_BYTES), ciphertext=os.urandom(MAX_ENVELOPE))
    padded.MergeFromString(b"\xaa\x06" + b"\x80\x80\x80\x01" + b"x" * 2 * MIB)  # field 101
    with pytest.raises(grpc.RpcError) as refused:
        run.broker_stub(PARTNER).SendEnvelope(
            broker_pb2.SendEnvelopeRequest(client_message_id=os.urandom(16), envelope=padded),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_from_rpc(refused.value).field == "envelope"
    assert _largest_item(run) <= mailbox.MAX_COVENANT_ITEM_BYTES
    run.assert_serving()


def test_a_partner_cannot_fill_another_partys_mailbox_without_limit(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    with offline(run, VICTIM):
        sent, refusal = _flood(run, PARTNER, FLOOD_BYTES)
        held = _mailbox_bytes(run, VICTIM)
        # The refused envelope stored nothing; one from another party still gets in.
        assert _flood(run, "politie", 1)[1] is None
    assert refusal is not None, (
        f"the broker took {sent // MIB} MiB of envelopes from {PARTNER} for {VICTIM}'s "
        f"mailbox ({held // MIB} MiB held there) and refused none"
    )
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = error_from_rpc(refusal)
    assert (error.reason, error.field) == ("quota.envelope_bytes_per_day", "envelope.ciphertext")
    assert held <= BYTES_PER_DAY
    assert held > BYTES_PER_DAY - 2 * mailbox.MAX_ENVELOPE_ITEM_BYTES  # the quota, not less
    assert _largest_item(run) <= mailbox.MAX_COVENANT_ITEM_BYTES
    run.until(f"{VICTIM} read its mailbox", 60, lambda: _mailbox_bytes(run, VICTIM) == 0)
    run.assert_serving()


def test_all_partners_together_cannot_fill_one_mailbox(covenant_run: CovenantRun) -> None:
    """Each partner within its own daily quota, together they would pass what may wait in
    one mailbox: refused there, and room again once the recipient read its mailbox."""
    run = covenant_run
    senders = ("belastingdienst", "riec", "politie")
    refusal = None
    with offline(run, VICTIM):
        for sender in senders:
            _, refusal = _flood(run, sender, BYTES_PER_DAY - 2 * MAX_ENVELOPE)
            if refusal is not None:
                break
        held = _mailbox_bytes(run, VICTIM)
    assert refusal is not None, "three partners filled the gemeente's mailbox past its room"
    error = error_from_rpc(refusal)
    assert (error.reason, error.field) == ("quota.envelope_bytes_waiting", "envelope.recipient")
    assert BYTES_WAITING - mailbox.MAX_ENVELOPE_ITEM_BYTES < held <= BYTES_WAITING
    run.until(f"{VICTIM} read its mailbox", 60, lambda: _mailbox_bytes(run, VICTIM) == 0)
    run.assert_serving()


def test_the_sender_whose_envelope_waited_sends_it_once_the_mailbox_has_room(
    covenant_run: CovenantRun,
) -> None:
    """After the flood above the gemeente is back and has read its mailbox: the room it
    had is free again for every sender that still has quota today."""
    run = covenant_run
    assert _mailbox_bytes(run, VICTIM) == 0
    sent, refusal = _flood(run, "politie", MAX_ENVELOPE)
    assert (sent, refusal) == (MAX_ENVELOPE, None)
    run.until("the gemeente read the envelope", 60, lambda: _mailbox_bytes(run, VICTIM) == 0)
    run.assert_serving()


# --- a stored item that does not parse --------------------------------------------------


def _plant(run: CovenantRun, party: str, kind: str, payload: bytes) -> int:
    """Put an item in ``party``'s mailbox straight into the broker's database, as a fault
    on disk or an edit by hand would leave it; returns its cursor."""
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
            " VALUES (?, ?, ?, ?, ?)",
            (party_id, cursor, kind, payload, sqlite_stamp(datetime.now(UTC))),
        )
        connection.execute(
            "UPDATE mailbox_heads SET head_cursor = ? WHERE party_id = ?", (cursor, party_id)
        )
        connection.execute("COMMIT")
    finally:
        connection.close()
    return cursor


def test_a_stored_item_that_does_not_parse_stops_no_mailbox(covenant_run: CovenantRun) -> None:
    run = covenant_run
    damaged = b"\xff\xff\xff\xff not a relayed envelope"
    cursor = _plant(run, VICTIM, "envelope", damaged)
    # A later envelope still reaches the gemeente, past the damaged one ...
    sent, refusal = _flood(run, "belastingdienst", 1)
    assert (sent, refusal) == (MAX_ENVELOPE, None)
    run.until(
        "the gemeente past the damaged item",
        60,
        lambda: (s := run.status(VICTIM)) is not None and s.mailbox_acked_cursor > cursor,
    )
    # ... the broker moved the item aside, kept it and said why in its audit log ...
    kept = sqlite_rows(
        run.broker_database,
        "SELECT s.kind, s.payload FROM set_aside_items s"
        " JOIN parties p ON p.id = s.party_id WHERE p.name = ? AND s.cursor = ?",
        VICTIM,
        cursor,
    )
    assert kept == [("envelope", damaged)]
    audited = [
        json.loads(details)
        for (details,) in sqlite_rows(
            run.broker_database,
            "SELECT details FROM audit_entries WHERE kind = 'mailbox_item_set_aside'",
        )
    ]
    assert {
        "party": VICTIM,
        "cursor": cursor,
        "kind": "envelope",
        "bytes": len(damaged),
        "reason": "malformed",
    } in audited
    # ... and the gemeente's node recorded the marker it got instead.
    noted = [
        json.loads(details)
        for (details,) in sqlite_rows(
            run.node_database(VICTIM),
            "SELECT details FROM audit_entries WHERE kind = 'mailbox_item_set_aside'",
        )
    ]
    assert {"cursor": cursor, "kind": "envelope", "bytes": len(damaged)} in noted
    run.assert_serving()


# --- notices by churn -----------------------------------------------------------------------

BSN = "111222333"


def _shared_token(run: CovenantRun) -> bytes:
    """The token the partner and the gemeente share: the partner's own node made it for
    its signal on the same subject, and the partner can read its own database."""
    run.add_signal("gemeente", "G-CHURN", "woonfraude", [("bsn", BSN)])
    run.add_signal(PARTNER, "W-CHURN", "woonfraude", [("bsn", BSN)])
    run.hit_with("gemeente", "G-CHURN", PARTNER)
    ((token,),) = sqlite_rows(
        run.node_database(PARTNER),
        "SELECT si.token FROM signal_identifiers si JOIN signals s ON s.id = si.signal_id"
        " WHERE s.reference = 'W-CHURN'",
    )
    return bytes(token)


def _entry(token: bytes, ref: bytes) -> broker_pb2.TokenEntry:
    sent = broker_pb2.TokenEntry(token=token, signal_ref=ref)
    sent.expires_at.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    sent.sealed_attributes.CopyFrom(
        common_pb2.SecretBox(key_version=1, nonce=os.urandom(24), ciphertext=os.urandom(206))
    )
    return sent


def _notice_bytes(run: CovenantRun, party: str) -> int:
    return sqlite_count(
        run.broker_database,
        "SELECT u.notice_bytes FROM party_usage u JOIN parties p ON p.id = u.party_id"
        " WHERE p.name = ?",
        party,
    )


def test_churning_refs_under_a_shared_token_is_bounded_per_day(covenant_run: CovenantRun) -> None:
    """The reviewer's churn: 63 more refs with 256-byte boxes under the token the partner
    shares with the gemeente (the RIEC, coordinator, is told too), then withdraw one and
    submit it again, over and over. Every notice to the others counts against the
    partner's day; the churn is refused once it would pass ``hit_notice_bytes_per_day``,
    and the gemeente's and the RIEC's mailboxes got no more than that."""
    run = covenant_run
    token = _shared_token(run)
    stub = run.broker_stub(PARTNER)
    epoch = run.covenant.key_epoch.epoch
    held = sqlite_count(
        run.broker_database,
        "SELECT count(*) FROM token_entries t JOIN parties p ON p.id = t.party_id"
        " WHERE t.token = ? AND p.name = ?",
        token,
        PARTNER,
    )
    refs = [os.urandom(16) for _ in range(MAX_REFS - held)]
    stub.SubmitTokens(
        broker_pb2.SubmitTokensRequest(
            client_batch_id=os.urandom(16),
            key_epoch=epoch,
            entries=[_entry(token, ref) for ref in refs],
        ),
        timeout=30,
    )
    others = ("gemeente", "riec")
    with offline(run, *others):  # their mailboxes keep every notice of the churn
        counted = _notice_bytes(run, PARTNER)
        before = {party: _mailbox_bytes(run, party, "hit_notice") for party in others}
        refusal = None
        cycles = 0
        while refusal is None and cycles < 1000:
            try:
                stub.WithdrawTokens(
                    broker_pb2.WithdrawTokensRequest(
                        client_batch_id=os.urandom(16), signal_refs=[refs[0]]
                    ),
                    timeout=30,
                )
                stub.SubmitTokens(
                    broker_pb2.SubmitTokensRequest(
                        client_batch_id=os.urandom(16),
                        key_epoch=epoch,
                        entries=[_entry(token, refs[0])],
                    ),
                    timeout=30,
                )
            except grpc.RpcError as error:
                refusal = error
            cycles += 1
        grown = {p: _mailbox_bytes(run, p, "hit_notice") - before[p] for p in others}
    assert refusal is not None, f"{cycles} withdraw-and-submit cycles, none refused: {grown}"
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_from_rpc(refusal).reason == "quota.hit_notice_bytes_per_day"
    # The notices were real, large ones (the reviewer's ~17.7 KB) ...
    assert min(grown.values()) > 10 * 17_000
    # ... and all the churn put in both mailboxes together stays within the day's quota,
    # less what the partner had caused before it began.
    assert sum(grown.values()) <= NOTICE_BYTES - counted
    assert _notice_bytes(run, PARTNER) <= NOTICE_BYTES
    run.assert_serving()
