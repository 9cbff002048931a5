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
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from samenloop.policies.errors import InvalidInput, NotAllowed
from samenloop.v1 import common_pb2

MAX_ITEMS_PER_FETCH: int = common_pb2.LIMITS_MAX_MAILBOX_ITEMS_PER_FETCH
MAX_CURSOR = 2**63 - 1  # cursors are uint64 on the wire, signed 64-bit in the databases


class ItemKind(enum.Enum):
    """What a mailbox item carries; the names of ``MailboxItem``'s payload fields."""

    HIT_NOTICE = "hit_notice"
    ENVELOPE = "envelope"
    COVENANT_UPDATE = "covenant_update"


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
