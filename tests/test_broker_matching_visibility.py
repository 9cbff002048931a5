"""Matching under the covenant's visibility rules, driven directly: no database, no network.

``CovenantVisibility`` turns ``rules.visibility`` into what matching asks per
recipient; these tests run matching's operations with it over a small
in-memory index and check who is told what: members hidden from a recipient
(police from a municipality) change groups without a notice that would betray
them, a member left with only hidden partners is told the hit is over, the
coordinators (observers) follow groups they hold no entry in, a removed party
stays as hidden as its former role was, and the picture reporter is a member
hidden from nobody. The same through the gRPC service is in
tests/test_broker_service.py; tests/test_broker_matching.py covers matching
with its default rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from samenloop.broker import matching
from samenloop.broker.matching import (
    Change,
    CovenantVisibility,
    Entry,
    EntryKey,
    Group,
    Member,
    MemberView,
    NoticeDraft,
    NoticeKind,
    TokenState,
    View,
    Visibility,
)
from samenloop.node.provision import PartySpec, provision
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.policy import Level, VisibilityRule

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)
NEW, GROWN, SHRUNK, CLOSED = NoticeKind.NEW, NoticeKind.GROWN, NoticeKind.SHRUNK, NoticeKind.CLOSED
TOKEN = b"\x01" * 32
ALL = Visibility(party_count=True, roles=True, parties=True, categories=True)

# The example policy: police hidden from the municipality, the tax office and the housing
# corporation; the RIEC coordinates at level categories, the LIEC at level count.
SPECS = (
    PartySpec("belastingdienst", "Belastingdienst", Role.BELASTINGDIENST),
    PartySpec("gemeente", "Gemeente", Role.GEMEENTE),
    PartySpec("liec", "LIEC", Role.LIEC),
    PartySpec("politie", "Politie", Role.POLITIE),
    PartySpec("riec", "RIEC", Role.RIEC),
    PartySpec("woco", "Woningcorporatie", Role.WONINGCORPORATIE),
)


@pytest.fixture(scope="module")
def covenant(tmp_path_factory: pytest.TempPathFactory) -> Covenant:
    root = tmp_path_factory.mktemp("matching-visibility")
    holders = ["belastingdienst", "gemeente"]
    return provision(root, "riec-zicht", SPECS, holders, 2, now=NOW).covenant


def ref(party: str) -> bytes:
    return (party.encode() + b"-" * 16)[:16]


def box(party: str) -> bytes:
    return f"box-{party}".encode()


def member(party: str) -> Member:
    return Member(party, (ref(party),), (box(party),))


@dataclass
class Index:
    """One token's entries and open group, kept as the store keeps them."""

    visibility: CovenantVisibility
    entries: dict[EntryKey, Entry] = field(default_factory=dict)
    group: Group | None = None
    ids: int = 0

    def state(self) -> TokenState:
        return TokenState(TOKEN, tuple(self.entries.values()), self.group)

    def apply(self, change: Change) -> dict[str, NoticeDraft]:
        for e in change.deleted:
            del self.entries[e.key]
        for e in (*change.updated, *change.inserted):
            self.entries[e.key] = e
        for g in change.groups:
            self.group = g if g.open else None
        notices = {n.recipient: n for n in change.notices}
        assert len(notices) == len(change.notices)  # one notice per recipient and change
        return notices

    def new_group_id(self) -> bytes:
        self.ids += 1
        return self.ids.to_bytes(16, "big")

    def submit(self, party: str) -> dict[str, NoticeDraft]:
        entry = Entry(party, TOKEN, ref(party), 1, LATER, box(party))
        result = matching.submit(
            matching.parse_batch(party, 1, [entry]),
            [self.state()],
            min_parties=2,
            now=NOW,
            new_group_id=self.new_group_id,
            visibility=self.visibility,
        )
        return self.apply(result.change)

    def withdraw(self, party: str) -> dict[str, NoticeDraft]:
        result = matching.withdraw(
            matching.parse_withdrawal(party, [ref(party)]),
            [self.state()],
            min_parties=2,
            now=NOW,
            visibility=self.visibility,
        )
        return self.apply(result.change)

    def remove(self, party: str) -> dict[str, NoticeDraft]:
        change = matching.remove_party(
            party, [self.state()], min_parties=2, now=NOW, visibility=self.visibility
        )
        return self.apply(change)


def kinds(notices: dict[str, NoticeDraft]) -> dict[str, NoticeKind]:
    return {party: n.kind for party, n in notices.items()}


def shown(notice: NoticeDraft) -> list[str | None]:
    return [m.party for m in notice.view.members]


# --- what each recipient sees -------------------------------------------------------------


def test_each_recipient_sees_what_its_rule_allows(covenant: Covenant) -> None:
    rule = CovenantVisibility(covenant)
    members = tuple(member(p) for p in ("belastingdienst", "gemeente", "politie", "woco"))
    assert rule.observers == frozenset({"riec", "liec"})
    assert rule("gemeente", members) == View(
        ALL,
        (
            MemberView("belastingdienst", "belastingdienst", (ref("belastingdienst"),), (
                box("belastingdienst"),
            )),
            MemberView("woco", "woningcorporatie", (ref("woco"),), (box("woco"),)),
        ),
        party_count=3,
    )  # fmt: skip
    woco = rule("woco", members)
    assert woco is not None
    assert woco.visibility == Visibility(
        party_count=True, roles=True, parties=True, categories=False
    )
    assert [(m.party, m.sealed_attributes) for m in woco.members] == [
        ("belastingdienst", ()),
        ("gemeente", ()),
    ]
    liec = rule("liec", members)
    assert liec == View(
        Visibility(party_count=True, roles=False, parties=False, categories=False), (), 4
    )
    riec = rule("riec", members)
    assert riec is not None
    assert [m.party for m in riec.members] == ["belastingdienst", "gemeente", "politie", "woco"]
    assert rule("gemeente", (member("gemeente"), member("politie"))) is None
    assert rule("onbekend", members) is None
    assert rule("gemeente", members) is rule("gemeente", members)  # asked once per operation
    assert rule.hides("gemeente", "politie")
    assert not rule.hides("politie", "gemeente")
    assert not rule.hides("riec", "politie")


def test_levels_below_roles_show_no_members(covenant: Covenant) -> None:
    policy = covenant.policy
    for level, expected in [
        (Level.EXISTS, Visibility(party_count=False, roles=False, parties=False, categories=False)),
        (Level.ROLES, Visibility(party_count=True, roles=True, parties=False, categories=False)),
    ]:
        rules_ = tuple(
            VisibilityRule(Role.GEMEENTE, level) if r.role is Role.GEMEENTE else r
            for r in policy.visibility
        )
        changed = dataclasses.replace(
            covenant, policy=dataclasses.replace(policy, visibility=rules_)
        )
        view = CovenantVisibility(changed)("gemeente", (member("gemeente"), member("woco")))
        assert view is not None
        assert view.visibility == expected
        if level is Level.EXISTS:
            assert (view.members, view.party_count) == ((), None)
        else:
            assert view.members == (MemberView(None, "woningcorporatie", (), ()),)
            assert view.party_count == 2


# --- hidden members ---------------------------------------------------------------------------


def test_a_hidden_member_joining_or_leaving_sends_those_it_is_hidden_from_nothing(
    covenant: Covenant,
) -> None:
    index = Index(CovenantVisibility(covenant))
    assert index.submit("gemeente") == {}
    formed = index.submit("belastingdienst")
    assert kinds(formed) == {"gemeente": NEW, "belastingdienst": NEW, "riec": NEW, "liec": NEW}
    assert not any(n.partial for n in formed.values())
    joined = index.submit("politie")
    assert kinds(joined) == {"politie": NEW, "riec": GROWN, "liec": GROWN}
    assert shown(joined["politie"]) == ["belastingdienst", "gemeente"]
    assert joined["riec"].view.party_count == 3
    # A change the gemeente may see: its notice leaves the police out and is marked partial.
    grown = index.submit("woco")
    assert kinds(grown) == {
        "gemeente": GROWN,
        "belastingdienst": GROWN,
        "woco": NEW,
        "politie": GROWN,
        "riec": GROWN,
        "liec": GROWN,
    }
    assert shown(grown["gemeente"]) == ["belastingdienst", "woco"]
    assert grown["gemeente"].view.party_count == 3
    assert {p for p, n in grown.items() if n.partial} == {"gemeente", "belastingdienst", "woco"}
    left = index.withdraw("politie")
    assert kinds(left) == {"politie": CLOSED, "riec": SHRUNK, "liec": SHRUNK}
    assert left["politie"].own_refs == (ref("politie"),)
    assert left["politie"].view.members == ()
    assert left["politie"].view.visibility == ALL


def test_a_member_left_with_only_hidden_partners_is_told_the_hit_is_over(
    covenant: Covenant,
) -> None:
    index = Index(CovenantVisibility(covenant))
    for party in ("gemeente", "politie", "belastingdienst"):
        index.submit(party)
    over = index.withdraw("belastingdienst")
    assert kinds(over) == {
        "belastingdienst": CLOSED,
        "gemeente": CLOSED,
        "politie": SHRUNK,
        "riec": SHRUNK,
        "liec": SHRUNK,
    }
    gemeente = over["gemeente"]
    assert gemeente.own_refs == (ref("gemeente"),)
    assert (gemeente.view.members, gemeente.view.party_count) == ((), None)
    assert gemeente.view.visibility == ALL
    assert index.group is not None  # still a hit, of the police's
    assert index.group.open
    # Told once: the next change it may not see sends it nothing.
    assert "gemeente" not in index.withdraw("politie")


def test_a_member_the_rule_never_showed_is_not_told_closed(covenant: Covenant) -> None:
    index = Index(CovenantVisibility(covenant))
    index.submit("gemeente")
    index.submit("politie")  # the gemeente may not see a hit of two with the police
    closed = index.withdraw("politie")
    assert kinds(closed) == {"politie": CLOSED, "riec": CLOSED, "liec": CLOSED}
    assert index.group is None


# --- observers ---------------------------------------------------------------------------------


def test_observers_follow_a_group_from_forming_to_closing(covenant: Covenant) -> None:
    index = Index(CovenantVisibility(covenant))
    index.submit("gemeente")
    formed = index.submit("woco")
    assert formed["riec"].own_refs == ()
    assert shown(formed["riec"]) == ["gemeente", "woco"]
    assert formed["liec"].view.members == ()
    assert formed["liec"].view.party_count == 2
    grown = index.submit("belastingdienst")
    assert (grown["riec"].kind, grown["liec"].kind) == (GROWN, GROWN)
    shrunk = index.withdraw("woco")
    assert (shrunk["riec"].kind, shrunk["liec"].kind) == (SHRUNK, SHRUNK)
    closed = index.withdraw("gemeente")
    assert kinds(closed) == {
        "gemeente": CLOSED,
        "belastingdienst": CLOSED,
        "riec": CLOSED,
        "liec": CLOSED,
    }
    assert closed["riec"].own_refs == ()
    assert not any(n.picture_reporter for n in (closed["riec"], closed["liec"]))


def test_an_observer_that_may_not_see_the_group_is_not_told(covenant: Covenant) -> None:
    policy = covenant.policy
    riec = VisibilityRule(Role.RIEC, Level.CATEGORIES, (Role.POLITIE,), coordinator=True)
    rules_ = tuple(riec if r.role is Role.RIEC else r for r in policy.visibility)
    hiding = dataclasses.replace(covenant, policy=dataclasses.replace(policy, visibility=rules_))
    index = Index(CovenantVisibility(hiding))
    index.submit("gemeente")
    formed = index.submit("politie")
    assert kinds(formed) == {"politie": NEW, "liec": NEW}  # the RIEC sees one party: no hit
    grown = index.submit("belastingdienst")
    assert grown["riec"].kind is NEW  # now it sees two: for it the hit begins
    assert shown(grown["riec"]) == ["belastingdienst", "gemeente"]
    shrunk = index.withdraw("belastingdienst")
    assert shrunk["riec"].kind is CLOSED  # and for it the hit is over again
    assert shrunk["riec"].view.members == ()
    assert shrunk["riec"].own_refs == ()


# --- removed parties ---------------------------------------------------------------------------


def test_a_removed_party_stays_as_hidden_as_its_former_role(covenant: Covenant) -> None:
    """Removing the police from the covenant must not tell the gemeente that a group it
    sees lost a member: the police were never shown to it."""
    without = dataclasses.replace(
        covenant,
        version=covenant.version + 1,
        parties=tuple(p for p in covenant.parties if p.id != "politie"),
    )
    notified = {}
    for former in (covenant, None):
        index = Index(CovenantVisibility(covenant))
        for party in ("gemeente", "belastingdienst", "politie"):
            index.submit(party)
        index.visibility = CovenantVisibility(without, former=former)
        notified[former is not None] = kinds(index.remove("politie"))
    assert notified[True] == {"riec": SHRUNK, "liec": SHRUNK}
    # Without the former roles the police's leaving would show as a shrunk group.
    assert notified[False] == {
        "gemeente": SHRUNK,
        "belastingdienst": SHRUNK,
        "riec": SHRUNK,
        "liec": SHRUNK,
    }
    rule = CovenantVisibility(without, former=covenant)
    assert rule.hides("gemeente", "politie")
    assert not rule.hides("gemeente", "belastingdienst")
    assert not CovenantVisibility(without).hides("gemeente", "politie")


# --- the picture reporter ----------------------------------------------------------------------


def test_the_reporter_is_the_first_member_hidden_from_nobody(covenant: Covenant) -> None:
    index = Index(CovenantVisibility(covenant))
    index.submit("politie")
    formed = index.submit("woco")
    # Woco may not see a hit whose only partner is the police: the police, the only member
    # that sees it, report it, though hidden from woco.
    assert "woco" not in formed
    assert {p for p, n in formed.items() if n.picture_reporter} == {"politie"}
    grown = index.submit("gemeente")
    # Now the gemeente and woco see it and are hidden from nobody: the first of them reports.
    assert {p for p, n in grown.items() if n.picture_reporter} == {"gemeente"}
    # Only the police leave: the gemeente is not notified, and keeps its flag.
    left = index.withdraw("politie")
    assert "gemeente" not in left
    assert not any(n.picture_reporter for n in left.values())


def test_the_reporter_follows_the_membership(covenant: Covenant) -> None:
    index = Index(CovenantVisibility(covenant))
    index.submit("politie")
    index.submit("riec")
    three = index.submit("woco")
    # The police are hidden from woco; the RIEC and woco from nobody: the RIEC reports.
    assert {p for p, n in three.items() if n.picture_reporter} == {"riec"}
    two = index.withdraw("woco")
    assert kinds(two) == {"woco": CLOSED, "politie": SHRUNK, "riec": SHRUNK, "liec": SHRUNK}
    # Hidden from nobody left in the group, the police come first.
    assert [p for p, n in two.items() if n.picture_reporter] == ["politie"]
    closed = index.withdraw("riec")
    # A closing group is reported by the first member told it closed.
    assert [p for p, n in closed.items() if n.picture_reporter] == ["politie"]
    assert kinds(closed) == {"riec": CLOSED, "politie": CLOSED, "liec": CLOSED}


def test_a_removed_party_that_was_shown_closes_the_hit_for_those_who_saw_it(
    covenant: Covenant,
) -> None:
    """The gemeente saw its hit with the housing corporation; the corporation is removed:
    the gemeente is told the hit closed, judged by what it saw (the corporation's former
    role)."""
    without = dataclasses.replace(
        covenant,
        version=covenant.version + 1,
        parties=tuple(p for p in covenant.parties if p.id != "woco"),
    )
    told = {}
    for former in (covenant, None):
        index = Index(CovenantVisibility(covenant))
        index.submit("gemeente")
        index.submit("woco")
        index.visibility = CovenantVisibility(without, former=former)
        told[former is not None] = kinds(index.remove("woco"))
    assert told[True] == {"gemeente": CLOSED, "riec": CLOSED, "liec": CLOSED}
    # Without the former roles the gemeente would keep an open hit that no longer exists.
    assert "gemeente" not in told[False]
