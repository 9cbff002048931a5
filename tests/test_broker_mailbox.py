"""Mailbox rules, driven directly: cursors, fetch windows, acknowledgements, closing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from samenloop.broker import mailbox
from samenloop.broker.mailbox import Event, MailboxState, Phase
from samenloop.policies.errors import InvalidInput, MessageTooLarge, NotAllowed, QuotaExceeded
from samenloop.v1 import broker_pb2, common_pb2

OPEN = MailboxState("gemeente-a")
CLOSED = mailbox.close(OPEN)


def fire(state: MailboxState, event: Event) -> MailboxState:
    if event is Event.ENQUEUE:
        return mailbox.enqueue(state)[0]
    if event is Event.FETCH:
        mailbox.fetch(state, 0)
        return state
    if event is Event.ACK:
        return mailbox.ack(state, state.head_cursor)
    return mailbox.close(state)


@pytest.mark.parametrize("state", [OPEN, CLOSED], ids=["open", "closed"])
@pytest.mark.parametrize("event", list(Event), ids=[e.value for e in Event])
def test_every_transition_follows_the_table(state, event):
    allowed = mailbox.TRANSITIONS.get((state.phase, event))
    if allowed is None:
        with pytest.raises(NotAllowed) as raised:
            fire(state, event)
        assert raised.value.reason == "mailbox.closed"
    else:
        assert fire(state, event).phase is allowed


def test_the_table_lets_a_closed_mailbox_only_close_again():
    assert {e for (p, e) in mailbox.TRANSITIONS if p is Phase.CLOSED} == {Event.CLOSE}


def test_cursors_start_at_one_and_strictly_increase():
    state, first = mailbox.enqueue(OPEN)
    state, more = mailbox.enqueue(state, 3)
    assert list(first) == [1]
    assert list(more) == [2, 3, 4]
    assert state.head_cursor == 4


def test_cursors_are_never_reused_after_acknowledgement():
    state, _ = mailbox.enqueue(OPEN, 5)
    state = mailbox.ack(state, 5)
    assert state.pending == 0
    _, cursors = mailbox.enqueue(state)
    assert list(cursors) == [6]


ACKS = [
    # (head, acked, cursor) -> acked after, or the error
    ((5, 2, 4), 4),
    ((5, 2, 5), 5),
    ((5, 2, 2), 2),  # the current one: a no-op
    ((5, 2, 1), 2),  # an older one: a no-op
    ((5, 2, 0), 2),
    ((0, 0, 0), 0),
    ((5, 2, 6), InvalidInput),  # beyond the head
    ((0, 0, 1), InvalidInput),
    ((5, 2, -1), InvalidInput),
]


@pytest.mark.parametrize(("cursors", "expected"), ACKS, ids=[str(a[0]) for a in ACKS])
def test_ack(cursors, expected):
    head, acked, cursor = cursors
    state = MailboxState("p", head_cursor=head, acked_cursor=acked)
    if expected is InvalidInput:
        with pytest.raises(InvalidInput) as raised:
            mailbox.ack(state, cursor)
        assert raised.value.field == "cursor"
    else:
        assert mailbox.ack(state, cursor).acked_cursor == expected


LIMIT = common_pb2.LIMITS_MAX_MAILBOX_ITEMS_PER_FETCH


@pytest.mark.parametrize(
    ("max_items", "limit"), [(0, LIMIT), (1, 1), (LIMIT, LIMIT), (LIMIT + 1, LIMIT), (10**9, LIMIT)]
)
def test_fetch_window_is_clamped_to_the_protocol_limit(max_items, limit):
    assert mailbox.fetch(OPEN, 7, max_items) == mailbox.FetchWindow(after=7, limit=limit)


@pytest.mark.parametrize(
    ("after", "max_items", "field_name"),
    [(-1, 0, "after_cursor"), (2**63, 0, "after_cursor"), (0, -1, "max_items")],
)
def test_fetch_refuses_bad_arguments_by_field(after, max_items, field_name):
    with pytest.raises(InvalidInput) as raised:
        mailbox.fetch(OPEN, after, max_items)
    assert raised.value.field == field_name


def test_state_invariant():
    with pytest.raises(ValueError, match="acked <= head"):
        MailboxState("p", head_cursor=1, acked_cursor=2)


def test_a_session_of_a_node_that_reconnects():
    """A node fetches, crashes before acknowledging, reconnects and sees the same items."""
    items: dict[int, bytes] = {}
    state = OPEN
    for payload in (b"n1", b"n2", b"n3"):
        state, (cursor,) = mailbox.enqueue(state)
        items[cursor] = payload

    def fetch(after: int, max_items: int = 0) -> list[int]:
        window = mailbox.fetch(state, after, max_items)
        return [c for c in sorted(items) if c > window.after][: window.limit]

    assert fetch(0, 2) == [1, 2]
    # Crash: nothing acknowledged; after reconnecting the node starts again from its ack.
    assert fetch(state.acked_cursor) == [1, 2, 3]
    state = mailbox.ack(state, 2)
    items = {c: p for c, p in items.items() if c > state.acked_cursor}
    assert fetch(state.acked_cursor) == [3]
    state = mailbox.ack(state, 1)  # a late, older ack changes nothing
    assert state.acked_cursor == 2
    state, (cursor,) = mailbox.enqueue(state)
    items[cursor] = b"n4"
    assert fetch(2) == [3, 4]


def test_item_kinds_are_the_payload_fields_of_a_mailbox_item():
    payload = broker_pb2.MailboxItem.DESCRIPTOR.oneofs_by_name["payload"]
    assert {f.name for f in payload.fields} == {kind.value for kind in mailbox.ItemKind}


# --- what a party may put in mailboxes ------------------------------------------------

NONCE = common_pb2.LIMITS_NONCE_BYTES
DAY = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
RULES = mailbox.EnvelopeRules(per_day=3, bytes_per_day=1000, bytes_waiting=1500)


def sealed(**changes: object) -> common_pb2.Sealed:
    fields: dict[str, object] = {
        "sender": "woningcorporatie",
        "recipient": "gemeente",
        "covenant_version": 7,
        "nonce": b"n" * NONCE,
        "ciphertext": b"c" * 100,
    }
    fields.update(changes)
    return common_pb2.Sealed(**fields)  # type: ignore[arg-type]


def test_a_well_formed_envelope_passes():
    mailbox.check_sealed(sealed())
    mailbox.check_sealed(sealed(ciphertext=b"", covenant_version=2**64 - 1))


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"nonce": b""}, InvalidInput, "envelope.nonce"),
        ({"nonce": b"n" * (NONCE - 1)}, InvalidInput, "envelope.nonce"),
        ({"nonce": b"n" * (NONCE + 1)}, InvalidInput, "envelope.nonce"),
        ({"nonce": b"n" * 3_000_000}, InvalidInput, "envelope.nonce"),
        ({"sender": ""}, InvalidInput, "envelope.sender"),
        ({"recipient": "r" * 65}, InvalidInput, "envelope.recipient"),
        (
            {"ciphertext": b"c" * (common_pb2.LIMITS_MAX_ENVELOPE_BYTES + 1)},
            MessageTooLarge,
            "envelope.ciphertext",
        ),
    ],
)
def test_an_envelope_beyond_a_bound_is_refused_naming_the_field(changes, error, field):
    with pytest.raises(error) as refused:
        mailbox.check_sealed(sealed(**changes))
    assert refused.value.field == field


def test_unknown_fields_may_use_only_the_room_the_known_ones_leave():
    """A newer sender's extra field is taken while the whole fits the largest Sealed; one
    that would make the stored envelope larger is refused, whatever field carries it."""
    room = mailbox.MAX_SEALED_BYTES - sealed().ByteSize()
    extra = 99 << 3 | 2  # field 99, length-delimited
    fits = sealed()
    fits.MergeFromString(
        bytes([extra & 0x7F | 0x80, extra >> 7]) + _varint(room - 5) + b"x" * (room - 5)
    )
    assert fits.ByteSize() <= mailbox.MAX_SEALED_BYTES
    mailbox.check_sealed(fits)
    party = "p" * common_pb2.LIMITS_MAX_PARTY_ID_BYTES
    largest = sealed(
        sender=party,
        recipient=party,
        covenant_version=2**64 - 1,
        ciphertext=b"c" * common_pb2.LIMITS_MAX_ENVELOPE_BYTES,
    )
    assert largest.ByteSize() == mailbox.MAX_SEALED_BYTES  # the bound is exact
    mailbox.check_sealed(largest)
    too_much = common_pb2.Sealed()
    too_much.CopyFrom(largest)
    too_much.MergeFromString(bytes([extra & 0x7F | 0x80, extra >> 7]) + _varint(1) + b"x")
    with pytest.raises(MessageTooLarge) as refused:
        mailbox.check_sealed(too_much)
    assert refused.value.field == "envelope"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_a_sender_is_counted_per_utc_day_in_envelopes_and_bytes():
    usage = mailbox.EnvelopeUsage()
    for _ in range(3):
        usage = mailbox.charge_sent(usage, 300, rules=RULES, now=DAY)
    assert (usage.sent, usage.sent_bytes) == (3, 900)
    with pytest.raises(QuotaExceeded) as refused:
        mailbox.charge_sent(usage, 1, rules=RULES, now=DAY)
    assert (refused.value.reason, refused.value.field) == ("quota.envelopes_per_day", "envelope")
    fewer = mailbox.EnvelopeUsage(mailbox.utc_day(DAY), 1, 900)
    with pytest.raises(QuotaExceeded) as refused:
        mailbox.charge_sent(fewer, 101, rules=RULES, now=DAY)
    assert (refused.value.reason, refused.value.field) == (
        "quota.envelope_bytes_per_day",
        "envelope.ciphertext",
    )
    assert mailbox.charge_sent(fewer, 100, rules=RULES, now=DAY).sent_bytes == 1000
    # The next UTC day starts afresh; a clock that steps back keeps counting on the later day.
    tomorrow = mailbox.charge_sent(usage, 1000, rules=RULES, now=DAY + timedelta(days=1))
    assert (tomorrow.day, tomorrow.sent, tomorrow.sent_bytes) == (usage.day + 1, 1, 1000)
    with pytest.raises(QuotaExceeded):
        mailbox.charge_sent(tomorrow, 1, rules=RULES, now=DAY)


def test_a_recipient_s_room_holds_every_sender_s_envelopes_until_it_reads_them():
    room = mailbox.charge_waiting(mailbox.EnvelopeUsage(), 1000, rules=RULES)
    room = mailbox.charge_waiting(room, 500, rules=RULES)
    with pytest.raises(QuotaExceeded) as refused:
        mailbox.charge_waiting(room, 1, rules=RULES)
    assert (refused.value.reason, refused.value.field) == (
        "quota.envelope_bytes_waiting",
        "envelope.recipient",
    )
    room = mailbox.released(room, 1000)
    assert mailbox.charge_waiting(room, 1000, rules=RULES).waiting_bytes == 1500
    assert mailbox.released(room, 10**9).waiting_bytes == 0  # never below nothing


def test_the_rules_are_the_covenant_s():
    from samenloop.policies.policy import Quotas, example_policy

    policy = replace(
        example_policy(),
        quotas=Quotas(
            1,
            0,
            envelopes_per_day=5,
            envelope_bytes_per_day=3 * 2**20,
            envelope_bytes_waiting=4 * 2**20,
        ),
    )
    rules = mailbox.EnvelopeRules.of(SimpleNamespace(policy=policy))  # type: ignore[arg-type]
    assert rules == mailbox.EnvelopeRules(5, 3 * 2**20, 4 * 2**20)


@pytest.mark.parametrize("kind", list(mailbox.ItemKind), ids=[k.value for k in mailbox.ItemKind])
def test_stored_bytes_that_do_not_parse_as_their_kind_are_told_apart(kind):
    good = {
        mailbox.ItemKind.HIT_NOTICE: common_pb2.Signed(body=b"b", signer="broker"),
        mailbox.ItemKind.ENVELOPE: broker_pb2.RelayedEnvelope(client_message_id=b"i" * 16),
        mailbox.ItemKind.COVENANT_UPDATE: common_pb2.SignedCovenant(body=b"[x]"),
        mailbox.ItemKind.COVENANT_TIMESTAMP: common_pb2.Signed(body=b"t", signer="tijd"),
        mailbox.ItemKind.SET_ASIDE: broker_pb2.SetAsideItem(kind="envelope", size_bytes=9),
    }[kind].SerializeToString()
    assert mailbox.parses(kind, good)
    assert mailbox.parses(kind, b"")  # an empty message is a message
    assert not mailbox.parses(kind, b"\xff\xff\xff\xff")  # a tag of field 0 with junk
    assert not mailbox.parses(kind, good[:-1] if len(good) > 2 else b"\x0a\x05ab")  # cut short


@pytest.mark.parametrize("kind", list(mailbox.ItemKind), ids=[k.value for k in mailbox.ItemKind])
def test_every_kind_is_parsed_as_the_mailbox_item_field_of_its_name(kind):
    """A kind added to the store but not to ``PAYLOAD_TYPES`` failed every fetch of every
    mailbox it reached (a KeyError, internal error): each kind names its field's type."""
    field = broker_pb2.MailboxItem.DESCRIPTOR.fields_by_name[kind.value]
    assert mailbox.PAYLOAD_TYPES[kind].DESCRIPTOR is field.message_type
