"""The broker's core during a rotation of the OPRF key (docs/operations.md "Rotating the
OPRF key"): staged-epoch groups kept but silent, a token held under one epoch only,
staged entries not counted as held, and the switch that maps groups by refs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from samenloop.broker import matching
from samenloop.broker.matching import Change, Entry, Group, NoticeKind, TokenState
from samenloop.policies.errors import InvalidInput
from tests.test_broker_matching import NOW, ref, token

LATER = NOW + timedelta(days=30)
NEW, GROWN, SHRUNK, CLOSED = NoticeKind.NEW, NoticeKind.GROWN, NoticeKind.SHRUNK, NoticeKind.CLOSED


class Ids:
    def __init__(self, start: int) -> None:
        self.n = start

    def __call__(self) -> bytes:
        self.n += 1
        return self.n.to_bytes(16, "big")


def submit(party, epoch, items, states=(), *, silent=frozenset(), ids=None):
    entries = [Entry(party, t, r, epoch, LATER) for t, r in items]
    return matching.submit(
        matching.parse_batch(party, epoch, entries),
        states,
        min_parties=2,
        now=NOW,
        new_group_id=ids or Ids(0),
        silent_epochs=silent,
    )


def state(tok: bytes, entries, group=None) -> TokenState:
    return TokenState(tok, tuple(entries), group)


def e(party: str, tok: bytes, epoch: int, n: int = 1) -> Entry:
    return Entry(party, tok, ref(party, n), epoch, LATER)


def kinds(change: Change) -> dict[str, NoticeKind]:
    return {d.recipient: d.kind for d in change.notices}


def test_a_staged_epoch_group_forms_and_changes_without_notices():
    held = state(token(9), [e("a", token(9), 2)])
    formed = submit("b", 2, [(token(9), ref("b"))], [held], silent=frozenset({2}))
    assert len(formed.change.groups) == 1  # the group is kept ...
    assert formed.change.notices == ()  # ... and told nobody
    # The same in the current epoch tells both.
    current = submit("b", 1, [(token(8), ref("b"))], [state(token(8), [e("a", token(8), 1)])])
    assert kinds(current.change) == {"a": NEW, "b": NEW}
    # A withdrawal from a staged group is silent too.
    group = formed.change.groups[0]
    entries = (e("a", token(9), 2), e("b", token(9), 2))
    gone = matching.withdraw(
        matching.parse_withdrawal("b", [ref("b")]),
        [state(token(9), entries, group)],
        min_parties=2,
        now=NOW,
        silent_epochs=frozenset({2}),
    )
    assert gone.withdrawn == 1
    assert not gone.change.groups[0].open
    assert gone.change.notices == ()


def test_a_token_is_held_under_one_key_epoch():
    held = state(token(9), [e("a", token(9), 1)])
    with pytest.raises(InvalidInput) as refused:
        submit("b", 2, [(token(7), ref("b", 2)), (token(9), ref("b"))], [held])
    assert refused.value.field == "entries[1].key_epoch"
    assert refused.value.reason == "token.other_epoch"


def test_staged_entries_do_not_move_the_count_held():
    change = Change(
        inserted=(e("a", token(1), 2), e("a", token(2), 1)),
        deleted=(e("b", token(3), 2),),
    )
    assert matching.held_deltas(change, uncounted=frozenset({2})) == {"a": 1}
    assert matching.held_deltas(change) == {"a": 2, "b": -1}


def group(n: int, tok: bytes, revision: int = 3) -> Group:
    return Group(n.to_bytes(16, "big"), tok, revision, NOW - timedelta(days=9), NOW)


OLD, STAGED = token(1), token(2)


def test_the_switch_keeps_a_group_whose_members_are_the_same_and_tells_nobody():
    old = state(OLD, [e("a", OLD, 1), e("b", OLD, 1)], group(1, OLD))
    staged = state(STAGED, [e("a", STAGED, 2), e("b", STAGED, 2)], group(50, STAGED, 1))
    mapped = matching.map_switch([old], [staged], min_parties=2, now=NOW)
    assert mapped.change.notices == ()
    (kept,) = mapped.change.groups
    assert kept == group(1, STAGED)  # same id, revision, first and last seen; new token
    assert set(mapped.retired) == {group(1, OLD).group_id, group(50, STAGED).group_id}


def test_the_switch_tells_real_differences_only():
    # Old: a and b. Staged: a, b and c (c's identifier came in while staged, both epochs;
    # the old group grew then and told everyone); and another old group where b withdrew
    # after re-stating... seen here as: staged has a only -> closed.
    old1 = state(OLD, [e("a", OLD, 1), e("b", OLD, 1)], group(1, OLD))
    staged1 = state(
        STAGED, [e("a", STAGED, 2), e("b", STAGED, 2), e("c", STAGED, 2)], group(51, STAGED, 1)
    )
    old2 = state(token(3), [e("a", token(3), 1, 2), e("b", token(3), 1, 2)], group(2, token(3)))
    staged2 = state(token(4), [e("a", token(4), 2, 2)])
    old3 = state(token(5), [e("d", token(5), 1), e("b", token(5), 1, 3)], group(3, token(5)))
    staged_only = state(
        token(6), [e("d", token(6), 2, 4), e("c", token(6), 2, 4)], group(52, token(6), 1)
    )
    mapped = matching.map_switch(
        [old1, old2, old3], [staged1, staged2, staged_only], min_parties=2, now=NOW
    )
    by_group: dict[bytes, dict[str, NoticeKind]] = {}
    for draft in mapped.change.notices:
        by_group.setdefault(draft.group_id, {})[draft.recipient] = draft.kind
    assert by_group[group(1, OLD).group_id] == {"a": GROWN, "b": GROWN, "c": NEW}
    assert by_group[group(2, OLD).group_id] == {"a": CLOSED, "b": CLOSED}
    assert by_group[group(3, OLD).group_id] == {"d": CLOSED, "b": CLOSED}  # not re-stated
    assert by_group[group(52, OLD).group_id] == {"c": NEW, "d": NEW}
    rows = {g.group_id: g for g in mapped.change.groups}
    assert rows[group(1, OLD).group_id].token == STAGED
    assert rows[group(1, OLD).group_id].revision == 4
    assert rows[group(1, OLD).group_id].first_seen == group(1, OLD).first_seen
    assert not rows[group(2, OLD).group_id].open
    assert rows[group(52, OLD).group_id].revision == 1
    assert rows[group(52, OLD).group_id].open


def test_the_switch_maps_by_the_pairs_not_by_order():
    olds = [
        state(
            token(10 + i),
            [e("a", token(10 + i), 1, i), e("b", token(10 + i), 1, i)],
            group(i, token(10 + i)),
        )
        for i in range(1, 6)
    ]
    # The staged tokens sort in the reverse order of the old ones.
    staged = [
        state(
            token(40 - i),
            [e("a", token(40 - i), 2, i), e("b", token(40 - i), 2, i)],
            group(100 + i, token(40 - i), 1),
        )
        for i in range(1, 6)
    ]
    mapped = matching.map_switch(olds, staged, min_parties=2, now=NOW)
    assert mapped.change.notices == ()
    assert {g.token: g.group_id for g in mapped.change.groups} == {
        token(40 - i): group(i, OLD).group_id for i in range(1, 6)
    }
