"""Mailbox rules, driven directly: cursors, fetch windows, acknowledgements, closing."""

from __future__ import annotations

import pytest

from samenloop.broker import mailbox
from samenloop.broker.mailbox import Event, MailboxState, Phase
from samenloop.policies.errors import InvalidInput, NotAllowed
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
