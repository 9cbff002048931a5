"""The policy engine: the covenant's rules as pure decisions.

* :func:`visibility` — what one party may learn of a hit (broker, per notice);
* :func:`release` — whether an owner may release details to a requester, and
  which fields (owner's node, per disclosure request);
* :func:`retention` — when a signal expires (node, per signal);
* :func:`oprf_allowance` — how many evaluations one key holder gives one party
  a day: its share of the party's cap (key holders and the requesting node);
* :func:`check_quota`, :func:`check_category`, :func:`check_identifier_type` —
  small guards the daemons call at their boundaries;
* :func:`link_viewers` — who a partner reports a link between two hit groups to
  (node, per link of the subject network);
* :func:`received_categories` — which of the categories another member sealed
  into a hit may be shown (node, per hit shown).

Each decision is built from small rules that tests drive one by one (see
tests/test_rules.py). Nothing here does I/O or reads a clock: facts and
``now`` come in as arguments.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from samenloop.policies.covenant import Covenant
from samenloop.policies.errors import InvalidInput, NotAllowed, QuotaExceeded
from samenloop.policies.policy import (
    ANY_CATEGORY,
    Level,
    Quotas,
    ReleaseRule,
    Role,
    VisibilityRule,
)

__all__ = [
    "Allow",
    "Decision",
    "Deny",
    "HitView",
    "MemberFacts",
    "MemberShown",
    "NeedsApproval",
    "ReceivedCategories",
    "Refusal",
    "check_category",
    "check_identifier_type",
    "check_quota",
    "counts_for_matching",
    "hides",
    "link_viewers",
    "may_coordinate",
    "may_see_network",
    "may_see_picture",
    "observers",
    "oprf_allowance",
    "received_categories",
    "release",
    "release_rule_for",
    "retention",
    "visibility",
]


# --- visibility ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberFacts:
    """A member of a hit group as the broker knows it."""

    party: str
    signal_refs: tuple[bytes, ...]
    sealed_attributes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class MemberShown:
    """Another member as the recipient may see it: hidden parts are ``None`` or empty."""

    party: str | None
    role: str | None
    signal_refs: tuple[bytes, ...]
    sealed_attributes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HitView:
    """What one recipient learns of a hit: its level, the members shown, the count (if any)."""

    level: Level
    members: tuple[MemberShown, ...]
    party_count: int | None


def observers(covenant: Covenant) -> frozenset[str]:
    """Parties told of hits they hold no signal in: those whose role's rule coordinates."""
    return frozenset(
        party.id
        for party in covenant.parties
        if (rule := covenant.policy.visibility_for(party.role)) is not None and rule.coordinator
    )


def hides(
    covenant: Covenant,
    recipient: str,
    party: str,
    *,
    former_roles: Mapping[str, Role] | None = None,
) -> bool:
    """Whether ``recipient``'s rule keeps ``party`` out of everything it learns of hits.

    ``former_roles``: roles of parties a new covenant version removed, so that their
    leaving stays as hidden as their part was.
    """
    if not covenant.is_party(recipient) or recipient == party:
        return False
    if covenant.is_party(party):
        role = covenant.role_of(party)
    elif former_roles and party in former_roles:
        role = former_roles[party]
    else:
        return False
    rule = covenant.policy.visibility_for(covenant.role_of(recipient))
    return rule is not None and role in rule.hidden_roles


def _shown(member: MemberFacts, role: Role, level: Level) -> MemberShown:
    return MemberShown(
        party=member.party if level.at_least(Level.PARTIES) else None,
        role=role.value if level.at_least(Level.ROLES) else None,
        signal_refs=member.signal_refs if level.at_least(Level.PARTIES) else (),
        sealed_attributes=member.sealed_attributes if level.at_least(Level.CATEGORIES) else (),
    )


def visibility(
    covenant: Covenant,
    recipient: str,
    members: Sequence[MemberFacts],
    *,
    former_roles: Mapping[str, Role] | None = None,
) -> HitView | None:
    """What ``recipient`` may learn of a group with these ``members``; ``None``: no notice.

    Rules, in order:

    1. a party the covenant does not list, or whose role has no visibility
       rule or level ``nothing``, learns nothing;
    2. a party that holds no signal in the group learns of it only if its
       role coordinates;
    3. members whose role the recipient's rule hides are left out entirely
       (not shown, not counted), so their signals count towards the hit
       without tipping anyone off;
    4. if that leaves fewer parties than a hit needs (``min_parties``,
       counting the recipient if it is a member; with two: nobody but the
       recipient itself), it learns nothing — otherwise the notice alone would
       reveal that a hidden party holds the subject;
    5. what is shown of each remaining member follows the level.

    ``former_roles``: roles of parties a new covenant version removed, for
    judging what a recipient saw of a group they were in before (to tell it
    the group closed).
    """
    if not covenant.is_party(recipient):
        return None
    rule: VisibilityRule | None = covenant.policy.visibility_for(covenant.role_of(recipient))
    if rule is None or rule.level is Level.NOTHING:
        return None
    is_member = any(m.party == recipient for m in members)
    if not is_member and not rule.coordinator:
        return None
    hidden = frozenset(rule.hidden_roles)
    roles = dict(former_roles or {})
    roles.update(
        {m.party: covenant.role_of(m.party) for m in members if covenant.is_party(m.party)}
    )
    others = [
        m
        for m in members
        if m.party != recipient and m.party in roles and roles[m.party] not in hidden
    ]
    count = len(others) + (1 if is_member else 0)
    if not others or count < covenant.min_parties:
        return None  # a recipient sees a hit only where the parties it may see make one
    return HitView(
        level=rule.level,
        members=tuple(_shown(m, roles[m.party], rule.level) for m in others)
        if rule.level.at_least(Level.ROLES)
        else (),
        party_count=count if rule.level.at_least(Level.COUNT) else None,
    )


# --- release ---------------------------------------------------------------------------


class Refusal(enum.StrEnum):
    """Why a disclosure is refused; mirrors ``DisclosureRefusalReason`` on the wire."""

    INVALID_NOTICE = "invalid_notice"
    NOT_IN_HIT = "not_in_hit"
    HIT_CLOSED = "hit_closed"
    UNKNOWN_PURPOSE = "unknown_purpose"
    NOT_ALLOWED = "not_allowed"
    QUOTA_EXCEEDED = "quota_exceeded"
    DENIED_BY_OFFICER = "denied_by_officer"
    REPLAY = "replay"
    COVENANT_MISMATCH = "covenant_mismatch"
    COVENANT_STALE = "covenant_stale"
    SCORE_TOO_LOW = "score_too_low"


@dataclass(frozen=True, slots=True)
class Allow:
    """Release exactly ``fields`` now; ``withheld`` were asked for but are not allowed."""

    fields: tuple[str, ...]
    withheld: tuple[str, ...]
    rule: ReleaseRule


@dataclass(frozen=True, slots=True)
class NeedsApproval:
    """Release ``fields`` once a second officer of the owner approves (four eyes)."""

    fields: tuple[str, ...]
    withheld: tuple[str, ...]
    rule: ReleaseRule


@dataclass(frozen=True, slots=True)
class Deny:
    """Release nothing, for ``reason``; ``message`` says so to people."""

    reason: Refusal
    message: str


Decision = Allow | NeedsApproval | Deny


def release_rule_for(
    covenant: Covenant, role: Role, category: str, purpose: str
) -> ReleaseRule | None:
    """The rule for this role, category and purpose: the exact category wins over ``*``."""
    exact = wildcard = None
    for rule in covenant.policy.release:
        if rule.role is not role or rule.purpose != purpose:
            continue
        if rule.category == category:
            exact = rule
        elif rule.category == ANY_CATEGORY:
            wildcard = rule
    return exact or wildcard


def release(
    covenant: Covenant,
    *,
    requester: str,
    purpose: str,
    fields: Sequence[str],
    category: str,
    in_hit: bool,
    hit_open: bool,
    released_in_period: int,
) -> Decision:
    """Decide a disclosure request at the owner's node.

    ``in_hit``: the requester showed a valid broker-signed notice, addressed to
    it, that lists the asked-for signal. ``hit_open``: that hit still stands.
    ``released_in_period``: how many releases the owner made to this requester
    under the matching rule within the rule's period (the caller counts; see
    :func:`release_rule_for`). The first failing rule decides.
    """
    if covenant.policy.purpose(purpose) is None:
        return Deny(Refusal.UNKNOWN_PURPOSE, f"{purpose!r} is not a purpose of this covenant")
    if not in_hit:
        return Deny(Refusal.NOT_IN_HIT, "the requester showed no hit that includes this signal")
    if not hit_open:
        return Deny(Refusal.HIT_CLOSED, "the hit is closed")
    if not covenant.is_party(requester):
        return Deny(Refusal.NOT_ALLOWED, f"{requester!r} is not a party of this covenant")
    role = covenant.role_of(requester)
    rule = release_rule_for(covenant, role, category, purpose)
    if rule is None:
        return Deny(
            Refusal.NOT_ALLOWED,
            f"the covenant releases nothing to a {role.value} for {purpose!r} "
            "on a signal of this category",
        )
    asked = tuple(dict.fromkeys(fields))
    allowed = tuple(f for f in asked if f in rule.fields)
    withheld = tuple(f for f in asked if f not in rule.fields)
    if not allowed:
        return Deny(
            Refusal.NOT_ALLOWED,
            f"none of the fields asked for may be released; allowed: {', '.join(rule.fields)}",
        )
    if rule.max_per_period and released_in_period >= rule.max_per_period:
        return Deny(
            Refusal.QUOTA_EXCEEDED,
            f"at most {rule.max_per_period} releases per {rule.period_days} days under this rule",
        )
    if rule.four_eyes:
        return NeedsApproval(allowed, withheld, rule)
    return Allow(allowed, withheld, rule)


# --- retention, quotas and boundary guards -------------------------------------------


def check_category(covenant: Covenant, category: str, *, field: str = "category") -> str:
    """Refuse a category the covenant does not list (``InvalidInput`` naming ``field``)."""
    if category not in covenant.policy.categories:
        raise InvalidInput(
            f"not a category of this covenant; use one of: {', '.join(covenant.policy.categories)}",
            field=field,
            reason="signal.unknown_category",
        )
    return category


@dataclass(frozen=True, slots=True)
class ReceivedCategories:
    """The categories opened from another member's sealed attributes, checked: those the
    covenant lists (distinct, in first-seen order), and how many distinct others came."""

    known: tuple[str, ...]
    unknown: int


def received_categories(covenant: Covenant, opened: Iterable[str]) -> ReceivedCategories:
    """Split categories another party sealed: only those the covenant lists may be shown.

    The attribute key is shared by every party, so any member can seal any text as its
    category; one the covenant does not list (the empty one included) is counted, never
    shown, whichever key opened it.
    """
    listed = covenant.policy.categories
    known: list[str] = []
    unknown: set[str] = set()
    for category in opened:
        if category not in listed:
            unknown.add(category)
        elif category not in known:
            known.append(category)
    return ReceivedCategories(tuple(known), len(unknown))


def check_identifier_type(covenant: Covenant, kind: str, *, field: str = "type") -> str:
    """Refuse an identifier type the covenant does not use (``NotAllowed`` naming ``field``)."""
    if kind not in covenant.policy.identifier_types:
        raise NotAllowed(
            f"the covenant does not use identifier type {kind!r}",
            field=field,
            reason="identifier.type_not_in_covenant",
        )
    return kind


def counts_for_matching(covenant: Covenant, kind: str) -> bool:
    """Whether identifiers of this type are tokenised and matched (others stay local)."""
    return kind in covenant.policy.matching.identifier_types


def retention(
    covenant: Covenant, category: str, *, created_at: datetime, requested: datetime | None = None
) -> datetime:
    """A signal's expiry: the covenant's retention for its category, or earlier if asked."""
    check_category(covenant, category)
    limit = created_at + timedelta(days=covenant.policy.retention.days_for(category))
    return limit if requested is None or requested > limit else requested


def check_quota(used: int, limit: int, *, what: str, field: str) -> None:
    """Raise ``QuotaExceeded`` naming ``field`` once ``used`` has reached ``limit``."""
    if used >= limit:
        raise QuotaExceeded(f"the covenant allows {limit} {what} per day", field=field)


def oprf_allowance(
    quotas: Quotas, seats: Sequence[str], threshold: int, *, requester: str, holder: str
) -> int:
    """Blinded elements ``holder`` evaluates for ``requester`` per UTC day.

    ``seats`` are the parties holding the key epoch's seats (n of them), each
    token needs ``threshold`` (t) of them. The holder's own requests count at
    its own seat against the whole cap C, so honest software caps itself
    there; every other holder allows its share of C (``Quotas.oprf_per_holder``):
    floor(C*(t-1)/(n-1)) to a requester that holds a seat and could compute its
    own partial evaluation without asking, floor(C*t/n) to any other party.
    Either way the party gets at most C tokens from all holders together.
    """
    if holder not in seats:
        raise InvalidInput(f"{holder!r} holds no seat of the key", field="holder")
    cap = quotas.oprf_evaluations_per_day
    if requester == holder:
        return cap
    return quotas.oprf_per_holder(
        threshold=threshold, holders=len(seats), seated=requester in seats
    )


def may_see_picture(covenant: Covenant, party: str) -> bool:
    """Whether ``party`` may ask for and see the regional picture (its role is a viewer)."""
    return covenant.is_party(party) and covenant.role_of(party) in covenant.policy.picture.viewers


def may_coordinate(covenant: Covenant, party: str) -> bool:
    """Whether ``party`` may open and coordinate cases (its role is a case coordinator)."""
    return (
        covenant.is_party(party) and covenant.role_of(party) in covenant.policy.cases.coordinators
    )


def may_see_network(covenant: Covenant, party: str) -> bool:
    """Whether ``party`` may be told the links of the subject network: its role is one of
    the ``[network]`` viewers (without that section nobody is) and its visibility rule
    shows parties. A link names its reporter as a member of both groups, which a rule
    that shows only roles or counts withholds: such a viewer is told nothing."""
    network = covenant.policy.network
    if network is None or not covenant.is_party(party):
        return False
    role = covenant.role_of(party)
    rule = covenant.policy.visibility_for(role)
    return role in network.viewers and rule is not None and rule.level.at_least(Level.PARTIES)


def link_viewers(
    covenant: Covenant, reporter: str, groups: Sequence[Sequence[MemberFacts]]
) -> frozenset[str]:
    """The parties ``reporter`` may tell that one of its signals ties these hit groups.

    ``groups`` are the members of each group as the reporter knows them: itself and
    the other members its notices name by party id. A viewer qualifies if it is a
    ``[network]`` viewer other than the reporter, its rule does not hide the reporter,
    and :func:`visibility` gives it a notice of every group with these members. Members
    hidden from the reporter are missing from ``groups``, but adding members never
    takes a notice away (rule 3 leaves hidden ones out; the others only raise the
    count), so a viewer chosen here sees the groups in fact: the choice errs towards
    telling fewer.
    """
    chosen: set[str] = set()
    for party in covenant.parties:
        viewer = party.id
        if viewer == reporter or not may_see_network(covenant, viewer):
            continue
        if hides(covenant, viewer, reporter):
            continue
        if all(visibility(covenant, viewer, members) is not None for members in groups):
            chosen.add(viewer)
    return frozenset(chosen)
