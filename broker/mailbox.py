"""Mailbox rules: one durable, ordered mailbox per party, read and acknowledged by cursor.

Cursors start at 1, strictly increase and are never reused (even after the
items they named were acknowledged and deleted). A party fetches the items
after a cursor, at most :data:`MAX_ITEMS_PER_FETCH` at a time, and acknowledges
every item up to and including a cursor. An acknowledgement at or below the
current one is a no-op; one beyond the head is refused. A closed mailbox (its
party was removed from the covenant) refuses everything except being closed
again.

The machine has two phases and four events; every allowed transition is in
:data:`TRANSITIONS`, anything else is :class:`NotAllowed`. The state is a
frozen value; the store persists it and the items. This module does no I/O.

A fetch is paged by bytes as well (:func:`page`): it returns as many whole
items as fit in one message of ``LIMITS_MAX_MESSAGE_BYTES``, counted as an upper
bound of their wire size, so neither ``FetchMailbox`` nor ``StreamMailbox`` ever
sends a message over the limit. No item may stop a mailbox: one that fits in no
message at all (stored before the size limits, or by a fault), or whose stored
bytes do not parse as its kind (:func:`parses`: a row damaged on disk or by
hand), is to be *set aside* — moved out of the mailbox, with an audit entry —
and a small ``SetAsideItem`` marker delivered at its cursor instead, so delivery
goes on past it and the recipient knows what it missed.

What a party may put in another's mailbox is bounded too. An envelope
(:func:`check_sealed`) has a nonce of exactly ``LIMITS_NONCE_BYTES``, a
ciphertext of at most ``LIMITS_MAX_ENVELOPE_BYTES`` and, whatever its fields
(unknown ones included), at most :data:`MAX_SEALED_BYTES` in all, so that a
stored envelope is at most :data:`MAX_ENVELOPE_ITEM_BYTES`. Envelopes count
against the covenant's quotas (:class:`EnvelopeRules`): per sender and UTC day,
how many and how many bytes (:func:`charge_sent`); per recipient, the bytes of
envelopes from all senders together waiting unacknowledged in its mailbox
(:func:`charge_waiting`, given back by :func:`released` as it acknowledges).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from samenloop.policies import trust
from samenloop.policies.covenant import Covenant
from samenloop.policies.errors import InvalidInput, MessageTooLarge, NotAllowed, QuotaExceeded
from samenloop.v1 import broker_pb2, common_pb2

MAX_ITEMS_PER_FETCH: int = common_pb2.LIMITS_MAX_MAILBOX_ITEMS_PER_FETCH
MAX_CURSOR = 2**63 - 1  # cursors are uint64 on the wire, signed 64-bit in the databases
MAX_MESSAGE_BYTES: int = common_pb2.LIMITS_MAX_MESSAGE_BYTES
#: An upper bound of what an item adds to a mailbox message besides its payload: the
#: repeated field's tag and length (6), the cursor (11), ``enqueued_at`` (19), the
#: payload's tag and length (6) — 42 bytes, rounded up.
ITEM_OVERHEAD_BYTES = 64
#: An upper bound of a ``FetchMailboxResponse`` without its items (two cursors: 22 bytes).
RESPONSE_OVERHEAD_BYTES = 64
#: An upper bound of a serialized ``SetAsideItem`` (kind 20, size 11, time 19 bytes).
MARKER_BYTES = 64
NONCE_BYTES: int = common_pb2.LIMITS_NONCE_BYTES
MAX_ENVELOPE_BYTES: int = common_pb2.LIMITS_MAX_ENVELOPE_BYTES
MAX_PARTY_ID_BYTES: int = common_pb2.LIMITS_MAX_PARTY_ID_BYTES
ID_BYTES: int = common_pb2.LIMITS_ID_BYTES


def _varint_bytes(value: int) -> int:
    """How many bytes protobuf's varint encoding of ``value`` takes."""
    return max(1, -(-value.bit_length() // 7))


def _delimited_bytes(length: int) -> int:
    """What a length-delimited field (bytes, string, message) of ``length`` bytes and a
    field number below 16 takes on the wire: its tag, its length and the bytes."""
    return 1 + _varint_bytes(length) + length


#: The largest ``Sealed`` with every field at its limit: sender and recipient party ids,
#: a covenant version (a varint of up to 10 bytes, with its tag), the nonce and the
#: largest ciphertext. ``SendEnvelope`` refuses a larger one, whatever makes it larger.
MAX_SEALED_BYTES: int = (
    2 * _delimited_bytes(MAX_PARTY_ID_BYTES)
    + 1
    + 10
    + _delimited_bytes(NONCE_BYTES)
    + _delimited_bytes(MAX_ENVELOPE_BYTES)
)
#: An upper bound of a ``google.protobuf.Timestamp`` as a field: tag and length (2),
#: seconds (tag and a varint of up to 10 bytes), nanos (tag and up to 5 bytes).
_TIMESTAMP_FIELD_BYTES = 2 + 11 + 6
#: The largest envelope item the broker stores (a ``RelayedEnvelope``: the message id,
#: the time it was accepted, the largest ``Sealed``): 1 MiB and 214 bytes.
MAX_ENVELOPE_ITEM_BYTES: int = (
    _delimited_bytes(ID_BYTES) + _TIMESTAMP_FIELD_BYTES + _delimited_bytes(MAX_SEALED_BYTES)
)
SIGNATURE_BYTES: int = common_pb2.LIMITS_SIGNATURE_BYTES
#: The largest covenant update the broker stores. ``PublishCovenant`` takes signed bytes
#: of at most ``trust.MAX_COVENANT_BYTES`` (1 MiB) and at most ``trust.MAX_SIGNATURES``
#: signatures, and stores what it verified, re-serialized: each signature by a signer
#: the covenant lists (an id of at most ``LIMITS_MAX_PARTY_ID_BYTES``) and of 64 bytes.
#: 1 MiB and 8,644 bytes.
MAX_COVENANT_ITEM_BYTES: int = _delimited_bytes(trust.MAX_COVENANT_BYTES) + (
    trust.MAX_SIGNATURES
    * _delimited_bytes(_delimited_bytes(MAX_PARTY_ID_BYTES) + _delimited_bytes(SIGNATURE_BYTES))
)


class ItemKind(enum.Enum):
    """What a mailbox item carries; the names of ``MailboxItem``'s payload fields."""

    HIT_NOTICE = "hit_notice"
    ENVELOPE = "envelope"
    COVENANT_UPDATE = "covenant_update"
    COVENANT_TIMESTAMP = "covenant_timestamp"
    #: The marker that takes the place of an item set aside (``SetAsideItem``).
    SET_ASIDE = "set_aside"


#: Each kind's payload message: what its stored bytes must parse as (``MailboxItem``'s
#: field of that name). Every kind has one: ``parses`` looks each fetched item up here.
PAYLOAD_TYPES: dict[ItemKind, type[ProtoMessage]] = {
    ItemKind.HIT_NOTICE: common_pb2.Signed,
    ItemKind.ENVELOPE: broker_pb2.RelayedEnvelope,
    ItemKind.COVENANT_UPDATE: common_pb2.SignedCovenant,
    ItemKind.COVENANT_TIMESTAMP: common_pb2.Signed,
    ItemKind.SET_ASIDE: broker_pb2.SetAsideItem,
}


class SetAside(enum.Enum):
    """Why an item was set aside: it fits in no message, or its stored bytes do not parse."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"


class Phase(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Event(enum.Enum):
    ENQUEUE = "enqueue"
    FETCH = "fetch"
    ACK = "ack"
    CLOSE = "close"


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.OPEN, Event.ENQUEUE): Phase.OPEN,
    (Phase.OPEN, Event.FETCH): Phase.OPEN,
    (Phase.OPEN, Event.ACK): Phase.OPEN,
    (Phase.OPEN, Event.CLOSE): Phase.CLOSED,
    (Phase.CLOSED, Event.CLOSE): Phase.CLOSED,
}


@dataclass(frozen=True, slots=True)
class MailboxState:
    """A party's mailbox head: the last cursor handed out, the last acknowledged, the phase."""

    party: str
    head_cursor: int = 0
    acked_cursor: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.acked_cursor <= self.head_cursor <= MAX_CURSOR:
            raise ValueError("mailbox cursors must satisfy 0 <= acked <= head")

    @property
    def phase(self) -> Phase:
        return Phase.CLOSED if self.closed else Phase.OPEN

    @property
    def pending(self) -> int:
        """How many cursors were handed out after the acknowledged one (an upper bound of
        the items waiting, since cursors may have gaps)."""
        return self.head_cursor - self.acked_cursor


@dataclass(frozen=True, slots=True)
class FetchWindow:
    """Which items a fetch returns: cursors above ``after``, at most ``limit`` of them."""

    after: int
    limit: int


def _step(state: MailboxState, event: Event) -> Phase:
    try:
        return TRANSITIONS[(state.phase, event)]
    except KeyError:
        raise NotAllowed(
            f"the mailbox of {state.party} is closed", reason="mailbox.closed"
        ) from None


def enqueue(state: MailboxState, count: int = 1) -> tuple[MailboxState, range]:
    """Hand out the next ``count`` cursors."""
    _step(state, Event.ENQUEUE)
    if count < 1:
        raise ValueError("enqueue at least one item")
    if state.head_cursor + count > MAX_CURSOR:  # pragma: no cover - 2^63 items
        raise OverflowError("mailbox cursor space exhausted")
    cursors = range(state.head_cursor + 1, state.head_cursor + count + 1)
    return replace(state, head_cursor=cursors[-1]), cursors


def fetch(state: MailboxState, after_cursor: int, max_items: int = 0) -> FetchWindow:
    """The window of a fetch; ``max_items`` 0 or above the limit means the limit."""
    _step(state, Event.FETCH)
    if not 0 <= after_cursor <= MAX_CURSOR:
        raise InvalidInput("cursor out of range", field="after_cursor")
    if max_items < 0:
        raise InvalidInput("max_items must not be negative", field="max_items")
    limit = MAX_ITEMS_PER_FETCH if max_items == 0 else min(max_items, MAX_ITEMS_PER_FETCH)
    return FetchWindow(after=after_cursor, limit=limit)


@dataclass(frozen=True, slots=True)
class Page:
    """What a fetch sends of the items in its window: the first ``count`` of them, after
    the items at the cursors ``set_aside`` are replaced by their markers."""

    count: int
    set_aside: tuple[int, ...] = ()


def wire_bytes(payload_bytes: int) -> int:
    """An upper bound of the bytes an item with a payload of this size adds to a message."""
    return payload_bytes + ITEM_OVERHEAD_BYTES


def page(items: Sequence[tuple[int, int]], *, budget: int = MAX_MESSAGE_BYTES) -> Page:
    """Which of a window's items one message of ``budget`` bytes carries.

    ``items`` are ``(cursor, payload bytes)`` in cursor order. An item that would not
    fit even alone is to be set aside (its marker counts in its place); the page then
    takes whole items until the next would not fit. It holds at least one item when
    the window holds any, so a reader always moves on.
    """
    if budget < RESPONSE_OVERHEAD_BYTES + wire_bytes(MARKER_BYTES):
        raise ValueError("a page must have room for at least a marker")
    used = RESPONSE_OVERHEAD_BYTES
    count = 0
    aside: list[int] = []
    for cursor, size in items:
        oversized = RESPONSE_OVERHEAD_BYTES + wire_bytes(size) > budget
        cost = wire_bytes(MARKER_BYTES if oversized else size)
        if used + cost > budget:
            break
        if oversized:
            aside.append(cursor)
        used += cost
        count += 1
    return Page(count, tuple(aside))


def parses(kind: ItemKind, payload: bytes) -> bool:
    """Whether an item's stored bytes parse as its kind's message (the payload field of
    ``MailboxItem`` that carries it): one that does not cannot be delivered, and is set
    aside like an item too large for any message."""
    message = PAYLOAD_TYPES[kind]()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        return False
    return True


def marker(kind: ItemKind, payload_bytes: int, now: datetime) -> bytes:
    """The serialized ``SetAsideItem`` that takes the place of an item set aside.

    A marker whose own stored bytes were damaged is replaced by a new one of kind
    ``set_aside`` (what it was is lost with its bytes; the recipient records the kind
    as unknown).
    """
    item = broker_pb2.SetAsideItem(kind=kind.value, size_bytes=payload_bytes)
    item.set_aside_at.FromDatetime(now)
    encoded = item.SerializeToString()
    assert len(encoded) <= MARKER_BYTES
    return encoded


def ack(state: MailboxState, cursor: int) -> MailboxState:
    """Acknowledge every item up to and including ``cursor``."""
    _step(state, Event.ACK)
    if cursor < 0:
        raise InvalidInput("cursor must not be negative", field="cursor")
    if cursor > state.head_cursor:
        raise InvalidInput(
            f"cursor {cursor} is beyond the mailbox head {state.head_cursor}",
            field="cursor",
            reason="mailbox.beyond_head",
        )
    if cursor <= state.acked_cursor:
        return state
    return replace(state, acked_cursor=cursor)


def close(state: MailboxState) -> MailboxState:
    """Close the mailbox for good: its party was removed from the covenant."""
    _step(state, Event.CLOSE)
    return replace(state, closed=True)


# --- what a party may put in mailboxes -------------------------------------------------


def check_sealed(sealed: common_pb2.Sealed) -> None:
    """Refuse an envelope that breaks the wire format's bounds, naming the field: the
    nonce of exactly ``LIMITS_NONCE_BYTES`` (``InvalidInput``), the sender and recipient
    party ids, the ciphertext, and the whole ``Sealed`` (``MessageTooLarge``: unknown
    fields may use only the room the known ones leave below :data:`MAX_SEALED_BYTES`)."""
    if len(sealed.nonce) != NONCE_BYTES:
        raise InvalidInput(f"the nonce must be {NONCE_BYTES} bytes", field="envelope.nonce")
    for name in ("sender", "recipient"):
        if not 0 < len(getattr(sealed, name).encode("utf-8")) <= MAX_PARTY_ID_BYTES:
            raise InvalidInput(
                f"party id must be 1..{MAX_PARTY_ID_BYTES} bytes", field=f"envelope.{name}"
            )
    if len(sealed.ciphertext) > MAX_ENVELOPE_BYTES:
        raise MessageTooLarge(
            f"envelopes carry at most {MAX_ENVELOPE_BYTES} bytes", field="envelope.ciphertext"
        )
    if sealed.ByteSize() > MAX_SEALED_BYTES:
        raise MessageTooLarge(
            f"an envelope is at most {MAX_SEALED_BYTES} bytes in all", field="envelope"
        )


@dataclass(frozen=True, slots=True)
class EnvelopeRules:
    """The covenant's quotas on envelopes: per sender and UTC day, how many and how many
    bytes (as stored); per recipient, the bytes that may wait unacknowledged in its
    mailbox from all senders together."""

    per_day: int
    bytes_per_day: int
    bytes_waiting: int

    @classmethod
    def of(cls, covenant: Covenant) -> EnvelopeRules:
        quotas = covenant.policy.quotas
        return cls(
            per_day=quotas.envelopes_per_day,
            bytes_per_day=quotas.envelope_bytes_per_day,
            bytes_waiting=quotas.envelope_bytes_waiting,
        )


@dataclass(frozen=True, slots=True)
class EnvelopeUsage:
    """A party's use of its envelope quotas, as the broker keeps it: the UTC day (since
    1970) of its last counted envelope, the envelopes it sent that day and their bytes,
    and the bytes of envelopes waiting unacknowledged in its own mailbox."""

    day: int = 0
    sent: int = 0
    sent_bytes: int = 0
    waiting_bytes: int = 0


def utc_day(now: datetime) -> int:
    """The UTC day of ``now``, counted from 1970-01-01: what the daily quotas reset on."""
    return (now.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days


def charge_sent(
    usage: EnvelopeUsage, size: int, *, rules: EnvelopeRules, now: datetime
) -> EnvelopeUsage:
    """Count an envelope of ``size`` stored bytes against its sender's daily quotas;
    ``QuotaExceeded`` (``quota.envelopes_per_day`` on ``envelope``,
    ``quota.envelope_bytes_per_day`` on ``envelope.ciphertext``) if it would pass one.
    A clock that steps back keeps counting on the later day."""
    day = utc_day(now)
    sent, sent_bytes = (usage.sent, usage.sent_bytes) if usage.day >= day else (0, 0)
    if sent + 1 > rules.per_day:
        raise QuotaExceeded(
            f"the covenant allows {rules.per_day} envelopes per party per UTC day;"
            f" {sent} were sent today",
            field="envelope",
            reason="quota.envelopes_per_day",
        )
    if sent_bytes + size > rules.bytes_per_day:
        raise QuotaExceeded(
            f"the covenant allows {rules.bytes_per_day} envelope bytes per party per UTC day;"
            f" {sent_bytes} were sent today and this envelope is {size}",
            field="envelope.ciphertext",
            reason="quota.envelope_bytes_per_day",
        )
    return replace(usage, day=max(day, usage.day), sent=sent + 1, sent_bytes=sent_bytes + size)


def charge_waiting(usage: EnvelopeUsage, size: int, *, rules: EnvelopeRules) -> EnvelopeUsage:
    """Count an envelope of ``size`` stored bytes against its recipient's room: the bytes
    of envelopes from all senders waiting unacknowledged in its mailbox;
    ``QuotaExceeded`` (``quota.envelope_bytes_waiting`` on ``envelope.recipient``) if it
    would pass it. The sender may try again once the recipient has read its mailbox."""
    if usage.waiting_bytes + size > rules.bytes_waiting:
        raise QuotaExceeded(
            f"the covenant lets {rules.bytes_waiting} envelope bytes wait in one party's"
            f" mailbox; {usage.waiting_bytes} are waiting and this envelope is {size}",
            field="envelope.recipient",
            reason="quota.envelope_bytes_waiting",
        )
    return replace(usage, waiting_bytes=usage.waiting_bytes + size)


def released(usage: EnvelopeUsage, size: int) -> EnvelopeUsage:
    """The recipient's room once envelopes of ``size`` bytes left its mailbox
    (acknowledged, set aside or dropped)."""
    return replace(usage, waiting_bytes=max(0, usage.waiting_bytes - size))
