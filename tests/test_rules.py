"""The policy engine, rule by rule: visibility, release, retention, guards and validation.

Table-driven: each row is one rule of ``samenloop.policies.rules`` (or one
constructor check of ``samenloop.policies.policy``) with the exact decision it
must give. Covenants are built in code from ``example_policy()`` and edited
with ``dataclasses.replace``; a hypothesis test checks the visibility
invariants over random covenants and hits.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samenloop.node.tokens import keysetup
from samenloop.policies import certs, rules
from samenloop.policies.covenant import (
    BrokerInfo,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
    Role,
    deal_attribute_key,
)
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import InvalidInput, NotAllowed, QuotaExceeded
from samenloop.policies.policy import (
    ANY_CATEGORY,
    CaseRules,
    Level,
    Matching,
    PictureRules,
    Policy,
    Quotas,
    ReleaseRule,
    Retention,
    Signer,
    Signing,
    VisibilityRule,
    example_policy,
)
from samenloop.policies.rules import (
    Allow,
    Deny,
    HitView,
    MemberFacts,
    MemberShown,
    NeedsApproval,
    ReceivedCategories,
    Refusal,
    check_category,
    check_identifier_type,
    check_quota,
    counts_for_matching,
    hides,
    observers,
    oprf_allowance,
    received_categories,
    release,
    release_rule_for,
    retention,
    visibility,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# The parties of the test covenant: one of each kind that the rules treat differently.
PARTIES = (
    ("gemeente-tilburg", Role.GEMEENTE),
    ("gemeente-breda", Role.GEMEENTE),
    ("politie", Role.POLITIE),
    ("belastingdienst", Role.BELASTINGDIENST),
    ("fiod", Role.FIOD),
    ("om", Role.OM),
    ("riec", Role.RIEC),
    ("liec", Role.LIEC),
    ("wonen", Role.WONINGCORPORATIE),
    ("provincie", Role.PROVINCIE),
    ("douane", Role.DOUANE),  # the example policy has no visibility or release rule for it
)
ROLE = dict(PARTIES)


# --- building covenants ------------------------------------------------------------


@functools.cache
def _keys(party: str) -> PartyKeys:
    return PartyKeys.generate(party)


@functools.cache
def _material() -> tuple[OprfKeyEpoch, bytes, BrokerInfo, Signing]:
    """What a covenant needs besides parties and rules; made once (key generation is slow)."""
    holders = [PARTIES[0][0], PARTIES[1][0]]
    epoch, _ = keysetup.deal(
        "test-rules", 1, 2, [(h, _keys(h).public().x25519) for h in holders], now=NOW
    )
    key_epoch = OprfKeyEpoch(
        epoch=1,
        threshold=2,
        group_public_key=epoch.group_public_key,
        holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in epoch.holders),
        created_at=NOW,
        retire_after=NOW + timedelta(days=365),
    )
    ca = certs.CertificateAuthority.create("test-rules", now=NOW).cert_pem
    broker = BrokerInfo("broker", "localhost:7443", _keys("broker").public().ed25519)
    signing = Signing(
        1,
        (Signer("beheer", "Beheer", _keys("beheer").public().ed25519),),
        _keys("timestamp").public().ed25519,
    )
    return key_epoch, ca, broker, signing


def _covenant(
    policy: Policy | None = None, parties: tuple[tuple[str, Role], ...] = PARTIES
) -> Covenant:
    key_epoch, ca, broker, signing = _material()
    return Covenant(
        id="test-rules",
        version=1,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=90),
        signing=signing,
        policy=policy or example_policy(),
        broker=broker,
        parties=deal_attribute_key(
            "test-rules",
            1,
            (Party(pid, f"Partij {pid}", role, _keys(pid).public()) for pid, role in parties),
        ),
        key_epoch=key_epoch,
        ca_certificate=ca,
        attribute_key_version=1,
    )


@functools.cache
def _example() -> Covenant:
    return _covenant()


def _with_visibility(*rules: VisibilityRule, min_parties: int = 2) -> Covenant:
    """The example covenant with these visibility rules replacing those for their roles."""
    policy = example_policy(min_parties=min_parties)
    roles = {rule.role for rule in rules}
    kept = tuple(rule for rule in policy.visibility if rule.role not in roles)
    return replace(_example(), policy=replace(policy, visibility=(*kept, *rules)))


def _with_release(*rules: ReleaseRule) -> Covenant:
    """The example covenant with these release rules added."""
    policy = example_policy()
    return replace(_example(), policy=replace(policy, release=(*policy.release, *rules)))


def _member(party: str) -> MemberFacts:
    return MemberFacts(
        party=party,
        signal_refs=(f"ref-{party}-1".encode(), f"ref-{party}-2".encode()),
        sealed_attributes=(f"box-{party}".encode(),),
    )


def _hit(*parties: str) -> list[MemberFacts]:
    return [_member(p) for p in parties]


# --- visibility: what each level shows ----------------------------------------------

# Recipient gemeente-tilburg in a hit with politie and belastingdienst, its rule set to
# each level with nothing hidden: every level adds exactly its part to the one before.
_ROLES_ONLY = (
    MemberShown(None, "politie", (), ()),
    MemberShown(None, "belastingdienst", (), ()),
)
_PARTIES_SHOWN = (
    MemberShown("politie", "politie", (b"ref-politie-1", b"ref-politie-2"), ()),
    MemberShown(
        "belastingdienst",
        "belastingdienst",
        (b"ref-belastingdienst-1", b"ref-belastingdienst-2"),
        (),
    ),
)
_EVERYTHING = (
    MemberShown("politie", "politie", (b"ref-politie-1", b"ref-politie-2"), (b"box-politie",)),
    MemberShown(
        "belastingdienst",
        "belastingdienst",
        (b"ref-belastingdienst-1", b"ref-belastingdienst-2"),
        (b"box-belastingdienst",),
    ),
)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        pytest.param(Level.NOTHING, None, id="nothing-no-notice"),
        pytest.param(Level.EXISTS, HitView(Level.EXISTS, (), None), id="exists-no-count"),
        pytest.param(Level.COUNT, HitView(Level.COUNT, (), 3), id="count-only"),
        pytest.param(Level.ROLES, HitView(Level.ROLES, _ROLES_ONLY, 3), id="roles-no-parties"),
        pytest.param(
            Level.PARTIES, HitView(Level.PARTIES, _PARTIES_SHOWN, 3), id="parties-and-refs"
        ),
        pytest.param(
            Level.CATEGORIES, HitView(Level.CATEGORIES, _EVERYTHING, 3), id="categories-all"
        ),
    ],
)
def test_each_level_shows_exactly_its_part(level: Level, expected: HitView | None) -> None:
    covenant = _with_visibility(VisibilityRule(Role.GEMEENTE, level))
    seen = visibility(
        covenant, "gemeente-tilburg", _hit("gemeente-tilburg", "politie", "belastingdienst")
    )
    assert seen == expected


# With the example policy: police, FIOD and OM are hidden from municipalities, housing
# corporations, the tax office and the province; the RIEC coordinates at level categories,
# the LIEC at level count.
@pytest.mark.parametrize(
    ("recipient", "hit", "shown", "count"),
    [
        pytest.param(
            "gemeente-tilburg",
            ("gemeente-tilburg", "politie", "belastingdienst"),
            ("belastingdienst",),
            2,
            id="gemeente-sees-only-belastingdienst",
        ),
        pytest.param(
            "belastingdienst",
            ("gemeente-tilburg", "politie", "belastingdienst"),
            ("gemeente-tilburg",),
            2,
            id="belastingdienst-sees-only-gemeente",
        ),
        pytest.param(
            "politie",
            ("gemeente-tilburg", "politie", "belastingdienst"),
            ("gemeente-tilburg", "belastingdienst"),
            3,
            id="politie-sees-both",
        ),
        pytest.param(
            "riec",
            ("gemeente-tilburg", "politie", "belastingdienst"),
            ("gemeente-tilburg", "politie", "belastingdienst"),
            3,
            id="riec-coordinator-sees-all-three",
        ),
        pytest.param(
            "politie",
            ("gemeente-tilburg", "politie"),
            ("gemeente-tilburg",),
            2,
            id="politie-sees-gemeente-in-pair",
        ),
        pytest.param(
            "gemeente-tilburg",
            ("gemeente-tilburg", "gemeente-breda", "fiod", "om"),
            ("gemeente-breda",),
            2,
            id="gemeente-hides-fiod-and-om-too",
        ),
        pytest.param(
            "gemeente-tilburg",
            ("gemeente-tilburg", "belastingdienst", "vertrokken-partij"),
            ("belastingdienst",),
            2,
            id="member-no-longer-in-covenant-not-shown-or-counted",
        ),
    ],
)
def test_hidden_roles_and_coordinators(
    recipient: str, hit: tuple[str, ...], shown: tuple[str, ...], count: int
) -> None:
    seen = visibility(_example(), recipient, _hit(*hit))
    assert seen is not None
    assert seen.level is Level.CATEGORIES
    assert tuple(m.party for m in seen.members) == shown
    assert tuple(m.role for m in seen.members) == tuple(ROLE[p].value for p in shown)
    assert seen.party_count == count


@pytest.mark.parametrize(
    ("recipient", "hit"),
    [
        pytest.param(
            "gemeente-tilburg", ("gemeente-tilburg", "politie"), id="gemeente-only-hidden-other"
        ),
        pytest.param(
            "wonen", ("gemeente-tilburg", "politie", "fiod"), id="woningcorporatie-hidden-others"
        ),
        pytest.param(
            "wonen", ("gemeente-tilburg", "belastingdienst"), id="non-member-non-coordinator"
        ),
        pytest.param(
            "provincie", ("gemeente-tilburg", "politie"), id="non-member-province-not-told"
        ),
        pytest.param("onbekend", ("gemeente-tilburg", "politie"), id="unknown-party"),
        pytest.param(
            "onbekend", ("onbekend", "gemeente-tilburg", "politie"), id="unknown-party-as-member"
        ),
        pytest.param("douane", ("douane", "gemeente-tilburg"), id="role-without-rule"),
        pytest.param("riec", ("riec",), id="coordinator-alone"),
        pytest.param("riec", (), id="coordinator-empty-hit"),
    ],
)
def test_no_notice(recipient: str, hit: tuple[str, ...]) -> None:
    assert visibility(_example(), recipient, _hit(*hit)) is None


def test_the_liec_coordinates_at_level_count() -> None:
    seen = visibility(_example(), "liec", _hit("gemeente-tilburg", "politie", "belastingdienst"))
    assert seen == HitView(Level.COUNT, (), 3)


def test_a_member_coordinator_counts_itself() -> None:
    seen = visibility(_example(), "riec", _hit("riec", "politie"))
    assert seen is not None
    assert [m.party for m in seen.members] == ["politie"]
    assert seen.party_count == 2


def test_a_coordinator_sees_no_hit_whose_visible_members_are_too_few() -> None:
    covenant = _with_visibility(
        VisibilityRule(Role.RIEC, Level.CATEGORIES, hidden_roles=(Role.POLITIE,), coordinator=True)
    )
    assert visibility(covenant, "riec", _hit("gemeente-tilburg", "politie")) is None
    seen = visibility(covenant, "riec", _hit("gemeente-tilburg", "politie", "belastingdienst"))
    assert seen is not None
    assert [m.party for m in seen.members] == ["gemeente-tilburg", "belastingdienst"]
    assert seen.party_count == 2


def test_a_coordinator_needs_min_parties_visible_members() -> None:
    covenant = _with_visibility(min_parties=3)
    assert visibility(covenant, "riec", _hit("gemeente-tilburg", "belastingdienst")) is None
    seen = visibility(covenant, "riec", _hit("gemeente-tilburg", "belastingdienst", "wonen"))
    assert seen is not None
    assert seen.party_count == 3


def test_a_member_gets_no_notice_when_its_visible_hit_is_below_min_parties() -> None:
    """With min_parties 3, a municipality told of a hit of two would learn that a hidden
    (police) party holds the subject: it must get no notice, as with min_parties 2."""
    covenant = _with_visibility(min_parties=3)
    hit = _hit("gemeente-tilburg", "belastingdienst", "politie")
    assert visibility(covenant, "gemeente-tilburg", hit) is None
    assert visibility(covenant, "belastingdienst", hit) is None
    seen = visibility(covenant, "politie", hit)
    assert seen is not None
    assert seen.party_count == 3
    bigger = visibility(covenant, "gemeente-tilburg", [*hit, _member("gemeente-breda")])
    assert bigger is not None
    assert bigger.party_count == 3


@pytest.mark.parametrize(
    ("covenant", "expected"),
    [
        pytest.param(_example, {"riec", "liec"}, id="example-riec-and-liec"),
        pytest.param(
            lambda: _with_visibility(VisibilityRule(Role.RIEC, Level.CATEGORIES)),
            {"liec"},
            id="riec-not-coordinating",
        ),
        pytest.param(
            lambda: _with_visibility(
                VisibilityRule(Role.RIEC, Level.CATEGORIES),
                VisibilityRule(Role.LIEC, Level.COUNT),
                VisibilityRule(Role.POLITIE, Level.EXISTS, coordinator=True),
            ),
            {"politie"},
            id="any-role-may-coordinate",
        ),
    ],
)
def test_observers(covenant, expected: set[str]) -> None:
    assert observers(covenant()) == frozenset(expected)


# --- hiding: who is kept out of what a recipient learns ------------------------------


# The example policy hides police, FIOD and OM from municipalities, housing corporations,
# the tax office and the province; "vertrokken" is a party a new covenant version removed.
@pytest.mark.parametrize(
    ("recipient", "party", "former", "hidden"),
    [
        pytest.param("gemeente-tilburg", "politie", None, True, id="hidden-role"),
        pytest.param("gemeente-tilburg", "om", None, True, id="another-hidden-role"),
        pytest.param("wonen", "fiod", None, True, id="hidden-from-woningcorporatie"),
        pytest.param("gemeente-tilburg", "belastingdienst", None, False, id="role-not-hidden"),
        pytest.param("politie", "gemeente-tilburg", None, False, id="police-hide-nobody"),
        pytest.param("riec", "politie", None, False, id="coordinator-sees-police"),
        pytest.param("douane", "politie", None, False, id="recipient-role-without-rule"),
        pytest.param("onbekend", "politie", None, False, id="recipient-not-a-party"),
        pytest.param("gemeente-tilburg", "gemeente-tilburg", None, False, id="never-from-itself"),
        pytest.param("gemeente-tilburg", "vertrokken", None, False, id="removed-role-unknown"),
        pytest.param("gemeente-tilburg", "vertrokken", {}, False, id="removed-no-former-roles"),
        pytest.param(
            "gemeente-tilburg",
            "vertrokken",
            {"vertrokken": Role.POLITIE},
            True,
            id="removed-police-stays-hidden",
        ),
        pytest.param(
            "gemeente-tilburg",
            "vertrokken",
            {"vertrokken": Role.BELASTINGDIENST},
            False,
            id="removed-tax-office-not-hidden",
        ),
        pytest.param(
            "gemeente-tilburg",
            "vertrokken",
            {"anders": Role.POLITIE},
            False,
            id="former-roles-of-others-only",
        ),
        pytest.param(
            "gemeente-tilburg",
            "politie",
            {"politie": Role.BELASTINGDIENST},
            True,
            id="current-role-wins-over-former",
        ),
        pytest.param(
            "gemeente-tilburg",
            "belastingdienst",
            {"belastingdienst": Role.POLITIE},
            False,
            id="current-role-wins-not-hidden",
        ),
        pytest.param(
            "vertrokken",
            "politie",
            {"vertrokken": Role.GEMEENTE},
            False,
            id="removed-recipient-learns-nothing",
        ),
    ],
)
def test_hides(recipient: str, party: str, former: dict[str, Role] | None, hidden: bool) -> None:
    assert hides(_example(), recipient, party, former_roles=former) is hidden


def test_visibility_judges_removed_members_by_their_former_role() -> None:
    """A party a new version removed is shown (or hidden) as its role was, so that a
    recipient told the group changed learns no more of its leaving than of its part."""
    hit = _hit("gemeente-tilburg", "belastingdienst", "vertrokken")
    as_tax = visibility(
        _example(), "gemeente-tilburg", hit, former_roles={"vertrokken": Role.BELASTINGDIENST}
    )
    assert as_tax is not None
    assert [(m.party, m.role) for m in as_tax.members] == [
        ("belastingdienst", "belastingdienst"),
        ("vertrokken", "belastingdienst"),
    ]
    assert as_tax.party_count == 3
    as_police = visibility(
        _example(), "gemeente-tilburg", hit, former_roles={"vertrokken": Role.POLITIE}
    )
    assert as_police is not None
    assert [m.party for m in as_police.members] == ["belastingdienst"]
    assert as_police.party_count == 2
    # The covenant's current role of a member wins over a stale former one.
    stale = visibility(
        _example(), "gemeente-tilburg", hit[:2], former_roles={"belastingdienst": Role.POLITIE}
    )
    assert stale is not None
    assert [(m.party, m.role) for m in stale.members] == [("belastingdienst", "belastingdienst")]


# --- visibility: a property over random covenants and hits -------------------------

# The first two hold the OPRF key shares of _material(), so every covenant must list them.
_POOL = ("gemeente-tilburg", "gemeente-breda", "partij-c", "partij-d", "partij-e", "partij-f")


@st.composite
def _visibility_cases(draw: st.DrawFn) -> tuple[Covenant, str, list[MemberFacts]]:
    roles = draw(st.lists(st.sampled_from(list(Role)), min_size=len(_POOL), max_size=len(_POOL)))
    rules = []
    for role in Role:
        level = draw(st.sampled_from([*Level, None]))
        if level is None:
            continue  # no rule for this role
        hidden = draw(st.lists(st.sampled_from(list(Role)), unique=True, max_size=4))
        coordinator = level is not Level.NOTHING and draw(st.booleans())
        rules.append(VisibilityRule(role, level, tuple(hidden), coordinator))
    min_parties = draw(st.integers(2, 4))
    policy = replace(example_policy(min_parties=min_parties), visibility=tuple(rules), release=())
    covenant = _covenant(policy, parties=tuple(zip(_POOL, roles, strict=True)))
    candidates = [*_POOL, "vreemde"]  # a member or recipient the covenant does not list
    members = draw(
        st.lists(
            st.sampled_from(candidates),
            unique=True,
            min_size=min_parties,  # the broker forms no smaller hit
            max_size=len(candidates),
        )
    )
    recipient = draw(st.sampled_from(candidates))
    return covenant, recipient, _hit(*members)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_visibility_cases())
def test_visibility_never_shows_more_than_the_rule_allows(
    case: tuple[Covenant, str, list[MemberFacts]],
) -> None:
    covenant, recipient, members = case
    seen = visibility(covenant, recipient, members)
    if seen is None:
        return
    assert covenant.is_party(recipient)
    rule = covenant.policy.visibility_for(covenant.role_of(recipient))
    assert rule is not None
    assert rule.level is not Level.NOTHING
    is_member = any(m.party == recipient for m in members)
    assert is_member or rule.coordinator
    visible = [
        m
        for m in members
        if m.party != recipient
        and covenant.is_party(m.party)
        and covenant.role_of(m.party) not in rule.hidden_roles
    ]

    # Never more than the level allows.
    assert seen.level is rule.level
    if not rule.level.at_least(Level.COUNT):
        assert seen.party_count is None
    if not rule.level.at_least(Level.ROLES):
        assert seen.members == ()
    for shown in seen.members:
        assert shown.role is not None
        assert Role(shown.role) not in rule.hidden_roles
        if rule.level.at_least(Level.PARTIES):
            assert shown.party is not None
            assert shown.party != recipient
            assert covenant.role_of(shown.party) not in rule.hidden_roles
            assert shown.role == covenant.role_of(shown.party).value
        else:
            assert shown.party is None
            assert shown.signal_refs == ()
        if not rule.level.at_least(Level.CATEGORIES):
            assert shown.sealed_attributes == ()
    if rule.level.at_least(Level.PARTIES):
        assert [s.party for s in seen.members] == [m.party for m in visible]
        assert [s.signal_refs for s in seen.members] == [m.signal_refs for m in visible]

    # The count: the members it may know of, itself included.
    if rule.level.at_least(Level.COUNT):
        assert seen.party_count == len(visible) + (1 if is_member else 0)
    if rule.level.at_least(Level.ROLES):
        assert seen.party_count == len(seen.members) + (1 if is_member else 0)

    # A notice never shows a hit too small to be one: that would reveal a hidden member.
    assert len(visible) + (1 if is_member else 0) >= covenant.min_parties


# --- release -------------------------------------------------------------------------

_REQUEST = {
    "requester": "gemeente-tilburg",
    "purpose": "adresfraude",
    "fields": ("naam", "adres"),
    "category": "woonfraude",
    "in_hit": True,
    "hit_open": True,
    "released_in_period": 0,
}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param(
            {"purpose": "nieuwsgierigheid"}, Refusal.UNKNOWN_PURPOSE, id="unknown-purpose"
        ),
        pytest.param({"in_hit": False}, Refusal.NOT_IN_HIT, id="not-in-hit"),
        pytest.param({"hit_open": False}, Refusal.HIT_CLOSED, id="hit-closed"),
        pytest.param({"requester": "onbekend"}, Refusal.NOT_ALLOWED, id="requester-not-a-party"),
        pytest.param({"requester": "douane"}, Refusal.NOT_ALLOWED, id="no-rule-for-role"),
        pytest.param(
            {"requester": "politie"}, Refusal.NOT_ALLOWED, id="rule-for-other-role-does-not-apply"
        ),
        pytest.param({"category": "leegstand"}, Refusal.NOT_ALLOWED, id="no-rule-for-category"),
        pytest.param(
            {"purpose": "casusvoorbereiding"}, Refusal.NOT_ALLOWED, id="no-rule-for-purpose"
        ),
        pytest.param({"fields": ("dossier",)}, Refusal.NOT_ALLOWED, id="no-allowed-field"),
        pytest.param({"fields": ()}, Refusal.NOT_ALLOWED, id="no-field-asked"),
        pytest.param(
            {"purpose": "bibob", "released_in_period": 50},
            Refusal.QUOTA_EXCEEDED,
            id="quota-per-period-reached",
        ),
        pytest.param(
            {"purpose": "bibob", "released_in_period": 51},
            Refusal.QUOTA_EXCEEDED,
            id="quota-per-period-passed",
        ),
        pytest.param(
            {"purpose": "nieuwsgierigheid", "in_hit": False, "requester": "onbekend"},
            Refusal.UNKNOWN_PURPOSE,
            id="first-failing-rule-decides",
        ),
        pytest.param(
            {"in_hit": False, "hit_open": False}, Refusal.NOT_IN_HIT, id="not-in-hit-before-closed"
        ),
    ],
)
def test_release_refusals(changes: dict[str, object], reason: Refusal) -> None:
    decision = release(_example(), **{**_REQUEST, **changes})  # type: ignore[arg-type]
    assert isinstance(decision, Deny)
    assert decision.reason is reason
    assert decision.message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"purpose": "nieuwsgierigheid"},
            "'nieuwsgierigheid' is not a purpose of this covenant",
            id="unknown-purpose",
        ),
        pytest.param(
            {"in_hit": False},
            "the requester showed no hit that includes this signal",
            id="not-in-hit",
        ),
        pytest.param({"hit_open": False}, "the hit is closed", id="hit-closed"),
        pytest.param(
            {"requester": "onbekend"},
            "'onbekend' is not a party of this covenant",
            id="requester-not-a-party",
        ),
        pytest.param(
            {"category": "leegstand"},
            "the covenant releases nothing to a gemeente for 'adresfraude' "
            "on a signal of this category",
            id="no-rule",
        ),
        pytest.param(
            {"fields": ("dossier",)},
            "none of the fields asked for may be released; allowed: naam, adres",
            id="no-allowed-field",
        ),
        pytest.param(
            {"purpose": "bibob", "released_in_period": 50},
            "at most 50 releases per 30 days under this rule",
            id="quota",
        ),
    ],
)
def test_release_refusals_tell_the_officer_why(changes: dict[str, object], message: str) -> None:
    """The message goes back to the requesting officer: it names what to change."""
    decision = release(_example(), **{**_REQUEST, **changes})  # type: ignore[arg-type]
    assert isinstance(decision, Deny)
    assert decision.message == message


def test_release_allows_the_rule_fields_and_withholds_the_rest_in_order() -> None:
    covenant = _example()
    decision = release(
        covenant, **{**_REQUEST, "fields": ("dossier", "adres", "naam", "adres", "dossier", "naam")}
    )
    rule = release_rule_for(covenant, Role.GEMEENTE, "woonfraude", "adresfraude")
    assert decision == Allow(fields=("adres", "naam"), withheld=("dossier",), rule=rule)


def test_release_with_four_eyes_needs_approval() -> None:
    covenant = _example()
    decision = release(
        covenant,
        **{
            **_REQUEST,
            "purpose": "bibob",
            "fields": ("omschrijving", "adres", "naam"),
            "released_in_period": 49,
        },
    )
    assert isinstance(decision, NeedsApproval)
    assert decision.fields == ("omschrijving", "naam")
    assert decision.withheld == ("adres",)
    assert decision.rule.four_eyes
    assert decision.rule.category == ANY_CATEGORY


def test_the_exact_category_wins_over_any_category() -> None:
    exact = ReleaseRule(Role.GEMEENTE, "woonfraude", "bibob", ("adres",))
    covenant = _with_release(exact)
    wildcard = release_rule_for(covenant, Role.GEMEENTE, "leegstand", "bibob")
    assert wildcard is not None
    assert wildcard.category == ANY_CATEGORY
    assert release_rule_for(covenant, Role.GEMEENTE, "woonfraude", "bibob") == exact
    asked = {**_REQUEST, "purpose": "bibob", "fields": ("naam", "adres")}
    assert release(covenant, **asked) == Allow(("adres",), ("naam",), exact)
    on_other = release(covenant, **{**asked, "category": "leegstand"})
    assert on_other == NeedsApproval(("naam",), ("adres",), wildcard)


def test_release_rule_for_matches_role_and_purpose() -> None:
    covenant = _example()
    assert release_rule_for(covenant, Role.POLITIE, "woonfraude", "adresfraude") is None
    assert release_rule_for(covenant, Role.GEMEENTE, "woonfraude", "casusvoorbereiding") is None
    rule = release_rule_for(covenant, Role.WONINGCORPORATIE, "woonfraude", "adresfraude")
    assert rule is not None
    assert rule.fields == ("adres", "omschrijving")


def test_max_per_period_zero_means_unlimited() -> None:
    decision = release(
        _example(),
        **{
            **_REQUEST,
            "requester": "riec",
            "purpose": "casusvoorbereiding",
            "category": "drugsproductie",
            "fields": ("dossier",),
            "released_in_period": 10**9,
        },
    )
    assert isinstance(decision, Allow)
    assert decision.rule.max_per_period == 0
    assert decision.fields == ("dossier",)


# --- retention ------------------------------------------------------------------------

CREATED = datetime(2026, 2, 1, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("category", "requested", "expected"),
    [
        pytest.param("woonfraude", None, CREATED + timedelta(days=365), id="default-days"),
        pytest.param("vastgoedmisbruik", None, CREATED + timedelta(days=730), id="category-days"),
        pytest.param(
            "woonfraude",
            CREATED + timedelta(days=10),
            CREATED + timedelta(days=10),
            id="earlier-request-kept",
        ),
        pytest.param(
            "woonfraude",
            CREATED + timedelta(days=1000),
            CREATED + timedelta(days=365),
            id="later-request-clamped",
        ),
        pytest.param(
            "vastgoedmisbruik",
            CREATED + timedelta(days=700),
            CREATED + timedelta(days=700),
            id="category-limit-applies-to-request",
        ),
        pytest.param(
            "woonfraude",
            CREATED + timedelta(days=365),
            CREATED + timedelta(days=365),
            id="request-at-the-limit",
        ),
    ],
)
def test_retention(category: str, requested: datetime | None, expected: datetime) -> None:
    assert retention(_example(), category, created_at=CREATED, requested=requested) == expected


def test_retention_refuses_an_unknown_category() -> None:
    with pytest.raises(InvalidInput) as caught:
        retention(_example(), "onbekend", created_at=CREATED)
    assert caught.value.field == "category"
    assert caught.value.reason == "signal.unknown_category"


# --- boundary guards -----------------------------------------------------------------


@functools.cache
def _few_types() -> Covenant:
    policy = replace(
        example_policy(),
        identifier_types=("bsn", "kvk", "iban"),
        matching=Matching(min_parties=2, identifier_types=("bsn", "kvk")),
    )
    return replace(_example(), policy=policy)


def test_check_category() -> None:
    assert check_category(_example(), "katvanger") == "katvanger"
    with pytest.raises(InvalidInput) as caught:
        check_category(_example(), "Katvanger", field="signals[3].category")
    assert caught.value.field == "signals[3].category"
    assert caught.value.reason == "signal.unknown_category"
    # The message lists the categories to choose from.
    assert caught.value.message == (
        "not a category of this covenant; use one of: " + ", ".join(_example().policy.categories)
    )


@pytest.mark.parametrize("kind", ["bsn", "kvk", "iban"])
def test_check_identifier_type_accepts_the_covenant_types(kind: str) -> None:
    assert check_identifier_type(_few_types(), kind) == kind


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        pytest.param("email", "type", id="known-type-not-in-covenant"),
        pytest.param("paspoort", "identifiers[2].type", id="unknown-type-custom-field"),
    ],
)
def test_check_identifier_type_refuses(kind: str, field: str) -> None:
    with pytest.raises(NotAllowed) as caught:
        check_identifier_type(_few_types(), kind, **({} if field == "type" else {"field": field}))
    assert caught.value.field == field
    assert caught.value.reason == "identifier.type_not_in_covenant"
    assert caught.value.message == f"the covenant does not use identifier type {kind!r}"


@pytest.mark.parametrize(
    ("opened", "known", "unknown"),
    [
        pytest.param([], (), 0, id="none"),
        pytest.param(["woonfraude"], ("woonfraude",), 0, id="one-listed"),
        pytest.param(
            ["katvanger", "woonfraude", "katvanger"],
            ("katvanger", "woonfraude"),
            0,
            id="distinct-in-first-seen-order",
        ),
        pytest.param(["Woonfraude"], (), 1, id="case-matters"),
        pytest.param(["", "[/bold]", "", "[/bold]"], (), 2, id="unlisted-counted-once-each"),
        pytest.param(["[/bold]", "leegstand", "fietsendiefstal"], ("leegstand",), 2, id="mixed"),
    ],
)
def test_received_categories_shows_only_the_listed_ones(
    opened: list[str], known: tuple[str, ...], unknown: int
) -> None:
    """Any member can seal any text as its category (the attribute key is shared): only
    those the covenant lists may be shown, the rest are counted."""
    assert received_categories(_example(), opened) == ReceivedCategories(known, unknown)


@pytest.mark.parametrize(
    ("kind", "counts"),
    [
        pytest.param("bsn", True, id="matched-type"),
        pytest.param("kvk", True, id="other-matched-type"),
        pytest.param("iban", False, id="covenant-type-kept-local"),
        pytest.param("email", False, id="type-not-in-covenant"),
    ],
)
def test_counts_for_matching(kind: str, counts: bool) -> None:
    assert counts_for_matching(_few_types(), kind) is counts


@pytest.mark.parametrize(
    ("used", "limit", "exceeded"),
    [
        pytest.param(0, 1, False, id="none-used"),
        pytest.param(199, 200, False, id="one-below"),
        pytest.param(200, 200, True, id="at-limit"),
        pytest.param(201, 200, True, id="over-limit"),
        pytest.param(0, 0, True, id="zero-limit"),
    ],
)
def test_check_quota(used: int, limit: int, exceeded: bool) -> None:
    if not exceeded:
        assert check_quota(used, limit, what="disclosure requests", field="request") is None
        return
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(used, limit, what="disclosure requests", field="request")
    assert caught.value.field == "request"
    assert str(limit) in caught.value.message


# --- the OPRF quota, shared among the key holders ---------------------------------------

SEATS = ("gemeente", "politie", "belastingdienst")  # 2 of 3, as the attack harness deals


@pytest.mark.parametrize(
    ("cap", "requester", "holder", "allowed"),
    [
        pytest.param(12, "riec", "politie", 8, id="no-seat: floor(12*2/3)"),
        pytest.param(12, "gemeente", "politie", 6, id="seated: floor(12*1/2)"),
        pytest.param(12, "gemeente", "gemeente", 12, id="own-seat: the whole cap"),
        pytest.param(10, "riec", "gemeente", 6, id="no-seat: floor(10*2/3)"),
        pytest.param(10, "politie", "gemeente", 5, id="seated: floor(10*1/2)"),
        pytest.param(2, "politie", "gemeente", 1, id="smallest-cap"),
    ],
)
def test_oprf_allowance_is_each_holders_share_of_the_cap(
    cap: int, requester: str, holder: str, allowed: int
) -> None:
    quotas = Quotas(oprf_evaluations_per_day=cap, disclosure_requests_per_day=0)
    assert oprf_allowance(quotas, SEATS, 2, requester=requester, holder=holder) == allowed


def test_oprf_allowance_of_a_party_without_a_seat_is_refused() -> None:
    quotas = Quotas(oprf_evaluations_per_day=12, disclosure_requests_per_day=0)
    with pytest.raises(InvalidInput) as raised:
        oprf_allowance(quotas, SEATS, 2, requester="politie", holder="riec")
    assert raised.value.field == "holder"
    assert raised.value.message == "'riec' holds no seat of the key"


@pytest.mark.parametrize(("threshold", "holders"), [(1, 3), (4, 3)])
def test_oprf_shares_need_a_valid_threshold(threshold: int, holders: int) -> None:
    quotas = Quotas(oprf_evaluations_per_day=12, disclosure_requests_per_day=0)
    for check in (
        lambda: quotas.oprf_per_holder(threshold=threshold, holders=holders, seated=False),
        lambda: quotas.smallest_oprf_cap(threshold=threshold, holders=holders),
    ):
        with pytest.raises(InvalidInput) as raised:
            check()
        assert raised.value.field == "threshold"


def test_the_shares_never_give_a_party_more_than_its_cap_and_nearly_all_of_it() -> None:
    """Every n <= 16, t, and caps from the smallest allowed up: the bounds of docs/crypto.md."""
    for n in range(2, 17):
        for t in range(2, n + 1):
            smallest = Quotas(1, 0).smallest_oprf_cap(threshold=t, holders=n)
            below = Quotas(smallest - 1, 0) if smallest > 1 else None
            if below is not None:  # one less and a holder's share for another holder is 0
                assert below.oprf_per_holder(threshold=t, holders=n, seated=True) == 0
            for cap in [*range(smallest, smallest + 50), 999_983, 1_000_000, 10**9]:
                quotas = Quotas(cap, 0)
                share = quotas.oprf_per_holder(threshold=t, holders=n, seated=False)
                seated = quotas.oprf_per_holder(threshold=t, holders=n, seated=True)
                assert min(share, seated) >= 1, (n, t, cap)
                # A party without a seat, whatever sets it asks: t partials per token.
                unseated_most = n * share // t
                # A holder party computing its own partial: t-1 partials of the others.
                seated_most = (n - 1) * seated // (t - 1)
                assert max(unseated_most, seated_most) <= cap, (n, t, cap)
                # What honest software reaches with every holder online.
                assert cap - unseated_most <= -(-(n - 1) // t), (n, t, cap)
                assert cap - min(cap, seated_most) <= -(-(n - 2) // (t - 1)), (n, t, cap)


# --- validation of the sections ------------------------------------------------------


def _signer(name: str) -> Signer:
    return Signer(name, f"Beheerder {name}", _keys(name).public().ed25519)


TIMESTAMP_KEY = _keys("timestamp").public().ed25519


def _policy_with(**changes: object):
    return lambda: replace(example_policy(), **changes)


_EXAMPLE = example_policy()


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(
            _policy_with(visibility=(*_EXAMPLE.visibility, VisibilityRule(Role.RIEC, Level.COUNT))),
            f"visibility[{len(_EXAMPLE.visibility)}].role",
            id="duplicate-visibility-role",
        ),
        pytest.param(
            _policy_with(
                release=(*_EXAMPLE.release, ReleaseRule(Role.GEMEENTE, "*", "onbekend", ("naam",)))
            ),
            f"release[{len(_EXAMPLE.release)}].purpose",
            id="release-purpose-not-in-purposes",
        ),
        pytest.param(
            _policy_with(
                release=(*_EXAMPLE.release, ReleaseRule(Role.OM, "onbekend", "bibob", ("naam",)))
            ),
            f"release[{len(_EXAMPLE.release)}].category",
            id="release-category-unknown",
        ),
        pytest.param(
            _policy_with(
                release=(*_EXAMPLE.release, ReleaseRule(Role.OM, "*", "bibob", ("naam", "bsn")))
            ),
            f"release[{len(_EXAMPLE.release)}].fields[1]",
            id="release-field-not-a-detail-field",
        ),
        pytest.param(
            _policy_with(
                release=(*_EXAMPLE.release, ReleaseRule(Role.GEMEENTE, "*", "bibob", ("naam",)))
            ),
            f"release[{len(_EXAMPLE.release)}]",
            id="second-release-rule-same-key",
        ),
        pytest.param(
            _policy_with(retention=Retention(365, (("onbekend", 30),))),
            "retention.categories.onbekend",
            id="retention-category-unknown",
        ),
        pytest.param(
            _policy_with(identifier_types=("bsn", "kvk")),
            "matching.identifier_types[1]",
            id="matching-type-not-in-covenant",
        ),
        pytest.param(
            _policy_with(categories=("woonfraude", "woonfraude")),
            "categories[1]",
            id="category-twice",
        ),
        pytest.param(
            lambda: VisibilityRule(Role.RIEC, Level.NOTHING, coordinator=True),
            "level",
            id="coordinator-with-level-nothing",
        ),
        pytest.param(
            lambda: VisibilityRule(Role.GEMEENTE, Level.COUNT, (Role.POLITIE, Role.POLITIE)),
            "hidden_roles[1]",
            id="hidden-role-twice",
        ),
        pytest.param(
            lambda: VisibilityRule(Role.GEMEENTE, "count"),
            "level",
            id="level-not-a-level",
        ),
        pytest.param(
            lambda: ReleaseRule(Role.GEMEENTE, "*", "bibob", ()),
            "fields",
            id="release-without-fields",
        ),
        pytest.param(
            lambda: ReleaseRule(Role.GEMEENTE, "*", "bibob", ("naam",), period_days=0),
            "period_days",
            id="release-period-zero",
        ),
        pytest.param(
            lambda: Retention(0),
            "default_days",
            id="retention-zero-days",
        ),
        pytest.param(
            lambda: Signing(3, (_signer("beheer-a"), _signer("beheer-b")), TIMESTAMP_KEY),
            "threshold",
            id="threshold-above-signer-count",
        ),
        pytest.param(
            lambda: Signing(0, (_signer("beheer-a"),), TIMESTAMP_KEY),
            "threshold",
            id="threshold-zero",
        ),
        pytest.param(
            lambda: Signing(
                1, (_signer("beheer-a"), replace(_signer("beheer-b"), id="beheer-a")), TIMESTAMP_KEY
            ),
            "signers[1].id",
            id="duplicate-signer-id",
        ),
        pytest.param(
            lambda: Signing(
                1, (_signer("beheer-a"), replace(_signer("beheer-a"), id="beheer-b")), TIMESTAMP_KEY
            ),
            "signers[1].ed25519",
            id="two-signers-one-key",
        ),
        pytest.param(
            lambda: Signing(1, (_signer("beheer-a"),), b"\x01" * 31),
            "timestamp_ed25519",
            id="timestamp-key-short",
        ),
        pytest.param(
            lambda: Signing(1, (_signer("beheer-a"),), _signer("beheer-a").ed25519),
            "timestamp_ed25519",
            id="timestamp-key-is-a-signers",
        ),
        pytest.param(
            lambda: Signing(1, (_signer("beheer-a"),), TIMESTAMP_KEY, freshness_seconds=59),
            "freshness_seconds",
            id="freshness-below-a-minute",
        ),
        pytest.param(
            lambda: Signing(
                1, (_signer("beheer-a"),), TIMESTAMP_KEY, freshness_seconds=7 * 24 * 3600 + 1
            ),
            "freshness_seconds",
            id="freshness-above-a-week",
        ),
        pytest.param(
            lambda: replace(
                _example(),
                signing=replace(_example().signing, timestamp_ed25519=_example().broker.ed25519),
            ),
            "signing.timestamp_ed25519",
            id="timestamp-key-is-the-brokers",
        ),
        pytest.param(
            lambda: replace(_example(), policy=example_policy(min_parties=len(PARTIES) + 1)),
            "matching.min_parties",
            id="min-parties-above-party-count",
        ),
    ],
)
def test_constructors_name_the_offending_field(build, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build()
    assert caught.value.field == field


def test_the_example_policy_is_valid_and_its_rules_are_found() -> None:
    policy = example_policy(min_parties=3)
    assert policy.matching.min_parties == 3
    gemeente = policy.visibility_for(Role.GEMEENTE)
    assert gemeente is not None
    assert set(gemeente.hidden_roles) == {Role.POLITIE, Role.FIOD, Role.OM}
    assert policy.visibility_for(Role.DOUANE) is None
    assert policy.purpose("bibob") is not None
    assert policy.purpose("onbekend") is None
    assert policy.retention.days_for("vastgoedmisbruik") == 730
    assert policy.retention.days_for("woonfraude") == 365


# --- picture and case rights ---------------------------------------------------------


@pytest.mark.parametrize(
    ("viewers", "coordinators", "party", "sees", "coordinates"),
    [
        ((Role.RIEC,), (Role.RIEC,), "riec", True, True),
        ((Role.RIEC,), (Role.RIEC,), "gemeente-tilburg", False, False),
        ((Role.RIEC, Role.GEMEENTE), (), "gemeente-tilburg", True, False),
        ((), (Role.GEMEENTE,), "gemeente-tilburg", False, True),
        ((Role.RIEC,), (Role.RIEC,), "nobody", False, False),
    ],
)
def test_picture_and_case_rights_follow_the_roles(
    viewers: tuple[Role, ...],
    coordinators: tuple[Role, ...],
    party: str,
    sees: bool,
    coordinates: bool,
) -> None:
    policy = replace(
        example_policy(),
        picture=PictureRules(viewers=viewers, min_cell_count=3),
        cases=CaseRules(coordinators=coordinators),
    )
    covenant = _covenant(policy)
    assert rules.may_see_picture(covenant, party) is sees
    assert rules.may_coordinate(covenant, party) is coordinates


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_cell_count": 0}, "min_cell_count"),
        ({"epsilon_per_period": 1.0}, "epsilon_per_request"),
        ({"epsilon_per_period": 1.0, "epsilon_per_request": 2.0}, "epsilon_per_request"),
        ({"epsilon_per_period": -0.5, "epsilon_per_request": 0.1}, "epsilon_per_period"),
        ({"viewers": (Role.RIEC, Role.RIEC)}, "viewers[1]"),
    ],
)
def test_picture_rules_refuse_bad_settings(changes: dict[str, object], field: str) -> None:
    settings_ = {"viewers": (Role.RIEC,), "min_cell_count": 5, **changes}
    with pytest.raises(InvalidInput) as caught:
        PictureRules(**settings_)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_a_noisy_picture_spends_at_most_its_budget_per_request() -> None:
    rules_ = PictureRules((Role.RIEC,), 5, epsilon_per_period=1.0, epsilon_per_request=0.25)
    assert rules_.noisy
    assert not PictureRules((Role.RIEC,), 5).noisy
