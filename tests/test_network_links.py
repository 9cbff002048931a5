"""The subject network's sans-IO core and its store, without daemons.

Which links a node's signals make, whom it may tell (``rules.link_viewers``), what it
sends when something changes (and nothing twice), and how a viewer's store takes a
link: only for groups it holds open with the reporter among their members, once per
revision, and not after the group closed.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine

from samenloop.node.daemon.database import SealedEnvelope
from samenloop.node.daemon.repositories import MIGRATIONS, Repositories
from samenloop.node.network import links
from samenloop.node.network.links import HeldLink, LinkChange, LinkEnd, SentLink
from samenloop.node.network.store import LinkVerdict
from samenloop.node.signals.models import HitKind
from samenloop.policies import database, rules
from samenloop.policies.covenant import Role
from samenloop.policies.errors import InvalidInput
from samenloop.policies.policy import (
    Level,
    NetworkRules,
    VisibilityRule,
    example_policy,
)
from samenloop.policies.rules import MemberFacts
from samenloop.v1 import broker_pb2, common_pb2

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
A, B, C = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16


def test_a_signal_in_n_groups_ties_each_pair_once_and_counts_add_up() -> None:
    rows = [
        (A, 1, "bsn"),
        (B, 1, "address"),
        (C, 1, "kvk"),
        (A, 2, "bsn"),
        (B, 2, "address"),
        (C, 3, "kvk"),  # a signal in one group ties nothing
        (A, 4, "person.names_year_month"),
    ]
    held = links.held_links(rows)
    assert {pair: link.count for pair, link in held.items()} == {(A, B): 2, (A, C): 1, (B, C): 1}
    # A group's type is the smallest of its own: "bsn" before "person".
    assert held[(A, B)].a == LinkEnd(A, "bsn")
    assert held[(B, C)].b.identifier_type == "kvk"


def _held(count: int) -> dict[tuple[bytes, bytes], HeldLink]:
    return {(A, B): HeldLink(LinkEnd(A, "bsn"), LinkEnd(B, "address"), count)}


@pytest.mark.parametrize(
    ("held", "viewers", "sent", "expected"),
    [
        # new link: revision 1 to each viewer
        (_held(1), {"riec", "liec"}, [], [("liec", 1, 1), ("riec", 1, 1)]),
        # unchanged: nothing
        (_held(1), {"riec"}, [SentLink("riec", A, B, 1, 1)], []),
        # count changed: next revision
        (_held(2), {"riec"}, [SentLink("riec", A, B, 1, 4)], [("riec", 2, 5)]),
        # link gone: ended (count 0) once
        ({}, set(), [SentLink("riec", A, B, 2, 5)], [("riec", 0, 6)]),
        ({}, set(), [SentLink("riec", A, B, 0, 6)], []),
        # the viewer may no longer be told: ended for it
        (_held(1), set(), [SentLink("riec", A, B, 1, 1)], [("riec", 0, 2)]),
        # back again after it ended
        (_held(1), {"riec"}, [SentLink("riec", A, B, 0, 2)], [("riec", 1, 3)]),
    ],
)
def test_plan_sends_each_change_once(
    held: dict[tuple[bytes, bytes], HeldLink],
    viewers: set[str],
    sent: list[SentLink],
    expected: list[tuple[str, int, int]],
) -> None:
    # At the epoch: revisions simply count up.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    changes = links.plan(held, {(A, B): frozenset(viewers)}, sent, now=epoch)
    assert [(c.recipient, c.count, c.revision) for c in changes] == expected


def test_revisions_are_times_so_a_restored_reporter_still_supersedes() -> None:
    # The reporter's record went back to revision 3 (a backup); it had sent up to a time.
    sent = [SentLink("riec", A, B, 1, 3)]
    now = datetime(2026, 12, 8, tzinfo=UTC)
    (change,) = links.plan(_held(2), {(A, B): frozenset({"riec"})}, sent, now=now)
    assert change.revision == int(now.timestamp()) * 1_000_000
    # A clock that does not move still gives a higher revision.
    (again,) = links.plan(
        _held(1),
        {(A, B): frozenset({"riec"})},
        [SentLink("riec", A, B, 2, change.revision)],
        now=now,
    )
    assert again.revision == change.revision + 1


class _Covenant:
    """Just what the rules read of a covenant: its parties, their roles and the policy."""

    def __init__(self, policy: object, parties: dict[str, Role]) -> None:
        self.policy = policy
        self._roles = parties
        self.min_parties = 2
        self.parties = [dataclasses.make_dataclass("P", ["id"])(p) for p in parties]

    def is_party(self, party: str) -> bool:
        return party in self._roles

    def role_of(self, party: str) -> Role:
        return self._roles[party]


def _facts(*parties: str) -> list[MemberFacts]:
    return [MemberFacts(p, (), ()) for p in parties]


def test_link_viewers_follow_the_visibility_rules() -> None:
    policy = example_policy()
    liec = VisibilityRule(Role.LIEC, Level.PARTIES, (Role.POLITIE,), coordinator=True)
    policy = dataclasses.replace(
        policy,
        visibility=tuple(liec if r.role is Role.LIEC else r for r in policy.visibility),
        network=NetworkRules(viewers=(Role.RIEC, Role.LIEC, Role.GEMEENTE)),
    )
    roles = {
        "riec": Role.RIEC,
        "liec": Role.LIEC,
        "gemeente": Role.GEMEENTE,
        "woco": Role.WONINGCORPORATIE,
        "politie": Role.POLITIE,
    }
    covenant = _Covenant(policy, roles)
    ok = rules.link_viewers
    both = [_facts("woco", "gemeente"), _facts("woco", "gemeente")]
    # The coordinators see both groups; the gemeente is a member of both.
    assert ok(covenant, "woco", both) == {"riec", "liec", "gemeente"}  # type: ignore[arg-type]
    # Never the reporter itself.
    assert "gemeente" not in ok(covenant, "gemeente", both)  # type: ignore[arg-type]
    # A viewer that hides the reporter is never told (the LIEC and the gemeente hide
    # the politie).
    police = [_facts("politie", "woco"), _facts("politie", "woco")]
    assert ok(covenant, "politie", police) == {"riec"}  # type: ignore[arg-type]
    # A non-coordinating viewer not in one of the groups sees no notice of it.
    other = [_facts("woco", "gemeente"), _facts("woco", "riec")]
    assert ok(covenant, "woco", other) == {"riec", "liec"}  # type: ignore[arg-type]
    # Without [network], nobody.
    plain = _Covenant(example_policy(), roles)
    assert ok(plain, "woco", both) == frozenset()  # type: ignore[arg-type]
    # A viewer whose rule shows roles or counts only is told nothing: a link names its
    # reporter as a member of both groups, which that rule withholds.
    for level in (Level.COUNT, Level.ROLES):
        low = VisibilityRule(Role.LIEC, level, (Role.POLITIE,), coordinator=True)
        lowered = _Covenant(
            dataclasses.replace(
                policy,
                visibility=tuple(low if r.role is Role.LIEC else r for r in policy.visibility),
            ),
            roles,
        )
        assert ok(lowered, "woco", both) == {"riec", "gemeente"}, level  # type: ignore[arg-type]
        assert not rules.may_see_network(lowered, "liec")  # type: ignore[arg-type]


# --- the store ------------------------------------------------------------------------------


@pytest.fixture
def repositories() -> Repositories:
    engine = create_engine("sqlite://")
    database.upgrade(engine, MIGRATIONS)
    return Repositories.open(engine, owner="riec")


def _notice(group: bytes, *members: str) -> bytes:
    notice = broker_pb2.HitNotice(hit_group_id=group, revision=1, recipient="riec")
    for member in members:
        notice.members.add(party=member)
    return common_pb2.Signed(body=notice.SerializeToString(), signer="broker").SerializeToString()


def _hit(
    repos: Repositories, cursor: int, group: bytes, *members: str, closed: bool = False
) -> None:
    repos.signals.accept_notice(
        cursor,
        group,
        cursor,
        HitKind.CLOSED if closed else HitKind.NEW,
        _notice(group, *members),
        [],
        NOW,
        NOW,
        now=NOW,
    )


def _received(a: bytes, b: bytes, count: int, revision: int) -> links.ReceivedLink:
    return links.ReceivedLink(LinkEnd(a, "bsn"), LinkEnd(b, "kvk"), count, revision)


def test_a_viewer_keeps_a_link_once_and_only_of_its_reporters_open_groups(
    repositories: Repositories,
) -> None:
    store = repositories.network
    _hit(repositories, 1, A, "woco", "gemeente")
    _hit(repositories, 2, B, "woco", "belastingdienst")
    _hit(repositories, 3, C, "belastingdienst", "gemeente")
    take = store.accept_links
    assert (
        take(4, "woco", [_received(A, B, 1, 1)], reporter_role="woningcorporatie", now=NOW)[
            LinkVerdict.ACCEPTED
        ]
        == 1
    )
    # A replay: a repeat, the count it claims is not taken.
    verdicts = take(5, "woco", [_received(A, B, 7, 1)], reporter_role=None, now=NOW)
    assert verdicts[LinkVerdict.REPEATED] == 1
    # The woco is no member of C: refused.
    verdicts = take(6, "woco", [_received(A, C, 1, 1)], reporter_role=None, now=NOW)
    assert verdicts[LinkVerdict.NOT_A_MEMBER] == 1
    # A group the viewer does not hold: refused.
    unknown = bytes([9]) * 16
    verdicts = take(7, "woco", [_received(A, unknown, 1, 1)], reporter_role=None, now=NOW)
    assert verdicts[LinkVerdict.UNKNOWN_GROUP] == 1
    vertices, edges = store.network()
    assert [(e.a, e.b, e.reporter, e.count) for e in edges] == [(A, B, "woco", 1)]
    assert {v.group_id: v.identifier_type for v in vertices} == {A: "bsn", B: "kvk", C: ""}
    assert repositories.shared.mailbox_cursor() == 7
    # The count goes to 0: the link ended, no edge.
    take(8, "woco", [_received(A, B, 0, 2)], reporter_role=None, now=NOW)
    assert store.network()[1] == []
    # Back, then B closes: pruned, and a late copy of the link is refused.
    take(9, "woco", [_received(A, B, 2, 3)], reporter_role=None, now=NOW)
    assert len(store.network()[1]) == 1
    _hit(repositories, 10, B, "woco", closed=True)
    assert store.prune(now=NOW + timedelta(minutes=1)) == 1
    verdicts = take(11, "woco", [_received(A, B, 2, 4)], reporter_role=None, now=NOW)
    assert verdicts[LinkVerdict.UNKNOWN_GROUP] == 1
    assert store.network()[1] == []


def test_links_of_a_reporter_the_viewer_may_no_longer_hear_are_pruned(
    repositories: Repositories,
) -> None:
    """A party the covenant removed is cut off by the broker: it can end none of its
    links. One whose role the viewer's rule came to hide has its ends refused. Either
    way its links go at the next prune, whatever their groups do; the others stay."""
    store = repositories.network
    _hit(repositories, 1, A, "woco", "gemeente")
    _hit(repositories, 2, B, "woco", "gemeente")
    for cursor, reporter in ((3, "woco"), (4, "gemeente")):
        store.accept_links(cursor, reporter, [_received(A, B, 1, 1)], reporter_role=None, now=NOW)
    assert {e.reporter for e in store.network()[1]} == {"woco", "gemeente"}
    assert store.prune(now=NOW, reporters={"woco", "gemeente"}) == 0
    assert store.prune(now=NOW, reporters={"gemeente", "belastingdienst"}) == 1
    assert [e.reporter for e in store.network()[1]] == ["gemeente"]
    # No longer a viewer at all: nothing of anyone's is kept.
    assert store.prune(now=NOW, reporters=()) == 1
    assert store.network()[1] == []


def test_what_was_sent_is_recorded_with_its_envelopes_once(repositories: Repositories) -> None:
    store = repositories.network
    change = LinkChange("liec", LinkEnd(A, "bsn"), LinkEnd(B, "kvk"), 1, 1)
    envelope = SealedEnvelope(bytes([5]) * 16, "liec", b"sealed")
    store.record_sent([change], [envelope], now=NOW)
    assert store.sent_links() == [SentLink("liec", A, B, 1, 1)]
    assert len(store.pending()) == 1
    # The same change again (a second run that planned from the same state): refused
    # whole, nothing queued twice.
    with pytest.raises(Exception):  # noqa: B017, PT011 - the unique key or the revision check
        store.record_sent([change], [SealedEnvelope(bytes([6]) * 16, "liec", b"x")], now=NOW)
    stale = dataclasses.replace(change, count=0, revision=1)
    with pytest.raises(RuntimeError):
        store.record_sent([stale], [SealedEnvelope(bytes([7]) * 16, "liec", b"x")], now=NOW)
    assert len(store.pending()) == 1
    store.record_sent([dataclasses.replace(change, count=0, revision=2)], [], now=NOW)
    assert store.sent_links() == [SentLink("liec", A, B, 0, 2)]


def test_the_covenants_network_section_round_trips_and_is_checked() -> None:
    from test_covenant import EXAMPLE

    from samenloop.policies.covenant.canonical import covenant_to_toml
    from samenloop.policies.covenant.parsing import covenant_from_toml

    plain = covenant_from_toml(EXAMPLE.encode(), source="example")
    assert plain.policy.network is None
    assert b"[network]" not in covenant_to_toml(plain)  # older covenants keep their bytes
    text = EXAMPLE + '\n[network]\nviewers = ["riec", "liec"]\n'
    covenant = covenant_from_toml(text.encode(), source="example")
    assert covenant.policy.network == NetworkRules(viewers=(Role.RIEC, Role.LIEC))
    again = covenant_from_toml(covenant_to_toml(covenant), source="again")
    assert again.policy.network == covenant.policy.network
    for bad, field in (('["nobody"]', "network.viewers"), ('"riec"', "network.viewers")):
        with pytest.raises(InvalidInput) as refused:
            covenant_from_toml((EXAMPLE + f"\n[network]\nviewers = {bad}\n").encode(), source="x")
        assert (refused.value.field or "").startswith(field), refused.value.field
    with pytest.raises(InvalidInput) as unknown:
        covenant_from_toml(
            (EXAMPLE + "\n[network]\nviewers = []\nextra = 1\n").encode(), source="x"
        )
    assert unknown.value.field == "network.extra"


def test_a_person_score_travels_with_its_link_to_the_vertex(repositories: Repositories) -> None:
    held = links.held_links([(A, 1, "person.phonetic_date"), (B, 1, "address")], {A: 41.5})
    change = LinkChange("riec", held[(A, B)].a, held[(A, B)].b, 1, 1)
    body = links.to_message("woco", [change], now=NOW)
    parsed = links.parse(body, sender="woco")
    assert parsed.links[0].a == LinkEnd(A, "person", 41.5)
    _hit(repositories, 1, A, "woco", "gemeente")
    _hit(repositories, 2, B, "woco", "gemeente")
    repositories.network.accept_links(3, "woco", parsed.links, reporter_role=None, now=NOW)
    vertices = {v.group_id: v for v in repositories.network.network()[0]}
    assert (vertices[A].identifier_type, vertices[A].score) == ("person", 41.5)
    assert (vertices[B].identifier_type, vertices[B].score) == ("address", None)
