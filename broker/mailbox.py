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
message at all (stored before the size limits, or by a fault) is to be *set
aside* — moved out of the mailbox, with an audit entry — and a small
``SetAsideItem`` marker delivered at its cursor instead, so delivery goes on
past it and the recipient knows what it missed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from samenloop.policies.errors import InvalidInput, NotAllowed
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


class ItemKind(enum.Enum):
    """What a mailbox item carries; the names of ``MailboxItem``'s payload fields."""

    HIT_NOTICE = "hit_notice"
    ENVELOPE = "envelope"
    COVENANT_UPDATE = "covenant_update"
    COVENANT_TIMESTAMP = "covenant_timestamp"
    #: The marker that takes the place of an item set aside (``SetAsideItem``).
    SET_ASIDE = "set_aside"


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


def marker(kind: ItemKind, payload_bytes: int, now: datetime) -> bytes:
    """The serialized ``SetAsideItem`` that takes the place of an item set aside."""
    if kind is ItemKind.SET_ASIDE:
        raise ValueError("a marker is never set aside")
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
