"""The covenant's rule sections (``samenloop.policies.policy``), check by check.

Table-driven: each row breaks one check of one section's constructor and names
the field the error must name and the message people read (the covenant's
administrator sees it when ``covenant`` refuses a file). Then the values at
the edge of every range that must still pass, and the lookups. The TOML
reading of the same sections is tested in tests/test_covenant.py; the
decisions built on them in tests/test_rules.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest

from samenloop.policies.errors import InvalidInput
from samenloop.policies.policy import (
    ANY_CATEGORY,
    IDENTIFIER_TYPES,
    MIN_TOKEN_QUOTA,
    CaseRules,
    Level,
    Matching,
    PictureRules,
    Policy,
    Purpose,
    Quotas,
    ReleaseRule,
    Retention,
    Role,
    Signer,
    Signing,
    VisibilityRule,
    check_int,
    check_name,
    check_token,
    example_policy,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
# The timestamp role's key: none of the signers' keys.
KEY_T = bytes(range(2, 34))

TOKEN = "must be 1-64 characters: a-z, 0-9, '_', '.', '-' (starting with a letter or digit)"
ROLES = (
    "must be one of: gemeente, politie, om, belastingdienst, fiod, douane, ind, "
    "arbeidsinspectie, provincie, woningcorporatie, riec, liec"
)
LEVELS = "must be one of: nothing, exists, count, roles, parties, categories"
TYPES = (
    "is not one of: address, bag, bsn, email, iban, kenteken, kvk, person, phone, rsin, vestiging"
)
EXAMPLE = example_policy()


def _refused(build: Callable[[], object]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        build()
    return caught.value


# --- the field checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "Bibob", "_bibob", "-bibob", ".bibob", "bi bob", "bibob\n", "a" * 65, 5, None, b"bibob"],
)
def test_check_token_refuses(value: object) -> None:
    error = _refused(lambda: check_token(value, field="purpose"))
    assert (error.field, error.message) == ("purpose", TOKEN)


@pytest.mark.parametrize("value", ["a", "0", "a" * 64, "a_b.c-d", "woon-en.adres_fraude9"])
def test_check_token_accepts(value: str) -> None:
    assert check_token(value, field="purpose") == value


NON_EMPTY = "must be a non-empty string"
BOUNDED = "must be at most 1024 bytes, without surrounding spaces"
CONTROL = "must not contain control characters"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(None, NON_EMPTY, id="none"),
        pytest.param(b"Gemeente", NON_EMPTY, id="bytes"),
        pytest.param("", NON_EMPTY, id="empty"),
        pytest.param(" \n\t", NON_EMPTY, id="only-spaces"),
        pytest.param(" Gemeente", BOUNDED, id="leading-space"),
        pytest.param("Gemeente\n", BOUNDED, id="trailing-newline"),
        pytest.param("é" * 512 + "x", BOUNDED, id="1025-bytes"),
        pytest.param("Gemeente\tTilburg", CONTROL, id="tab"),
        pytest.param("Gemeente\x00Tilburg", CONTROL, id="nul"),
        pytest.param("Gemeente\x1fTilburg", CONTROL, id="unit-separator"),
        pytest.param("Gemeente\x7fTilburg", CONTROL, id="delete"),
        pytest.param("Gemeente\rTilburg", CONTROL, id="carriage-return"),
    ],
)
def test_check_name_refuses(value: object, message: str) -> None:
    error = _refused(lambda: check_name(value, field="name"))
    assert (error.field, error.message) == ("name", message)


@pytest.mark.parametrize(
    "value",
    ["G", "é" * 512, "Gemeente\nTilburg", "Gemeente Tilburg", "\u2019s-Hertogenbosch", "x\x80y"],
)
def test_check_name_accepts(value: str) -> None:
    assert check_name(value, field="name") == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(True, "must be an integer", id="bool"),
        pytest.param(1.0, "must be an integer", id="float"),
        pytest.param("1", "must be an integer", id="text"),
        pytest.param(0, "must be 1..5", id="below"),
        pytest.param(6, "must be 1..5", id="above"),
    ],
)
def test_check_int_refuses(value: object, message: str) -> None:
    error = _refused(lambda: check_int(value, 1, 5, field="days"))
    assert (error.field, error.message) == ("days", message)


@pytest.mark.parametrize("value", [1, 3, 5])
def test_check_int_accepts_both_ends(value: int) -> None:
    assert check_int(value, 1, 5, field="days") == value


# --- every section's checks -------------------------------------------------------------


def _signer(signer_id: str = "beheer-a", key: bytes = KEY_A, name: str = "Beheer A") -> Signer:
    return Signer(signer_id, name, key)


def _release(**changes: object) -> ReleaseRule:
    fields: dict[str, object] = {
        "role": Role.GEMEENTE,
        "category": "woonfraude",
        "purpose": "adresfraude",
        "fields": ("naam",),
        **changes,
    }
    return ReleaseRule(**fields)  # type: ignore[arg-type]


def _picture(**changes: object) -> PictureRules:
    fields: dict[str, object] = {"viewers": (Role.RIEC,), "min_cell_count": 5, **changes}
    return PictureRules(**fields)  # type: ignore[arg-type]


def _policy(**changes: object) -> Policy:
    return replace(EXAMPLE, **changes)


_N_VIS, _N_REL = len(EXAMPLE.visibility), len(EXAMPLE.release)

# (build, field, message); one row per check, in the order of the code.
REFUSALS: list[tuple[Callable[[], object], str, str]] = [
    # Signer
    (
        lambda: _signer("Beheer"),
        "id",
        "must be lower-case letters, digits and hyphens, starting with a letter or digit",
    ),
    (lambda: _signer(name=" Beheer"), "name", BOUNDED),
    (lambda: _signer(key=bytes(31)), "ed25519", "must be 32 bytes"),
    (lambda: _signer(key=bytes(33)), "ed25519", "must be 32 bytes"),
    (lambda: _signer(key="k" * 32), "ed25519", "must be 32 bytes"),  # type: ignore[arg-type]
    # Signing
    (lambda: Signing(1, [_signer()], KEY_T), "signers", "must be a list"),  # type: ignore[arg-type]
    (lambda: Signing(1, (), KEY_T), "signers", "list at least one signer"),
    (lambda: Signing(1, ("beheer-a",), KEY_T), "signers[0]", "must be a signer"),  # type: ignore[arg-type]
    (
        lambda: Signing(1, (_signer(), _signer(key=KEY_B)), KEY_T),
        "signers[1].id",
        "duplicate signer id 'beheer-a'",
    ),
    (
        lambda: Signing(1, (_signer(), _signer("beheer-b")), KEY_T),
        "signers[1].ed25519",
        "same key as another signer: every signer needs its own key",
    ),
    (lambda: Signing(0, (_signer(),), KEY_T), "threshold", "must be 1..1"),
    (
        lambda: Signing(3, (_signer(), _signer("beheer-b", KEY_B)), KEY_T),
        "threshold",
        "must be 1..2",
    ),
    (lambda: Signing(True, (_signer(),), KEY_T), "threshold", "must be an integer"),
    # Purpose
    (lambda: Purpose("Bibob", "Bibob screening"), "id", TOKEN),
    (lambda: Purpose("bibob", ""), "description", NON_EMPTY),
    # Matching
    (lambda: Matching(1, ("bsn",)), "min_parties", "must be 2..1000"),
    (lambda: Matching(1001, ("bsn",)), "min_parties", "must be 2..1000"),
    (lambda: Matching(2, ["bsn"]), "identifier_types", "must be a list"),  # type: ignore[arg-type]
    (lambda: Matching(2, ("bsn", "BSN")), "identifier_types[1]", TOKEN),
    (lambda: Matching(2, ("bsn", "paspoort")), "identifier_types[1]", f"'paspoort' {TYPES}"),
    (lambda: Matching(2, ("bsn", "kvk", "bsn")), "identifier_types[2]", "'bsn' is listed twice"),
    (lambda: Matching(2, ()), "identifier_types", "list at least one identifier type"),
    # VisibilityRule
    (lambda: VisibilityRule("riec", Level.COUNT), "role", ROLES),  # type: ignore[arg-type]
    (lambda: VisibilityRule(Role.RIEC, "count"), "level", LEVELS),  # type: ignore[arg-type]
    (
        lambda: VisibilityRule(Role.GEMEENTE, Level.COUNT, [Role.POLITIE]),  # type: ignore[arg-type]
        "hidden_roles",
        "must be a list",
    ),
    (
        lambda: VisibilityRule(Role.GEMEENTE, Level.COUNT, (Role.OM, "politie")),  # type: ignore[arg-type]
        "hidden_roles[1]",
        ROLES,
    ),
    (
        lambda: VisibilityRule(Role.GEMEENTE, Level.COUNT, (Role.OM, Role.FIOD, Role.OM)),
        "hidden_roles[2]",
        "'om' is listed twice",
    ),
    (
        lambda: VisibilityRule(Role.RIEC, Level.COUNT, coordinator=1),  # type: ignore[arg-type]
        "coordinator",
        "must be true or false",
    ),
    (
        lambda: VisibilityRule(Role.RIEC, Level.NOTHING, coordinator=True),
        "level",
        "a coordinator that learns nothing coordinates nothing",
    ),
    # ReleaseRule
    (lambda: _release(role="gemeente"), "role", ROLES),
    (lambda: _release(category="Woonfraude"), "category", TOKEN),
    (lambda: _release(category="**"), "category", TOKEN),
    (lambda: _release(purpose=""), "purpose", TOKEN),
    (lambda: _release(fields=["naam"]), "fields", "must be a list"),
    (lambda: _release(fields=("naam", "Adres")), "fields[1]", TOKEN),
    (lambda: _release(fields=("naam", "naam")), "fields[1]", "'naam' is listed twice"),
    (lambda: _release(fields=()), "fields", "list at least one field"),
    (lambda: _release(four_eyes="true"), "four_eyes", "must be true or false"),
    (lambda: _release(max_per_period=-1), "max_per_period", "must be 0..1000000000"),
    (lambda: _release(max_per_period=10**9 + 1), "max_per_period", "must be 0..1000000000"),
    (lambda: _release(period_days=0), "period_days", "must be 1..36600"),
    (lambda: _release(period_days=36_601), "period_days", "must be 1..36600"),
    # Retention
    (lambda: Retention(0), "default_days", "must be 1..36600"),
    (lambda: Retention(36_601), "default_days", "must be 1..36600"),
    (lambda: Retention(30, [("woonfraude", 30)]), "categories", "must be a list"),  # type: ignore[arg-type]
    (lambda: Retention(30, ("woonfraude",)), "categories", "must be (category, days) pairs"),  # type: ignore[arg-type]
    (
        lambda: Retention(30, (("woonfraude", 30, 1),)),  # type: ignore[arg-type]
        "categories",
        "must be (category, days) pairs",
    ),
    (lambda: Retention(30, (("Woonfraude", 30),)), "categories.Woonfraude", TOKEN),
    (lambda: Retention(30, (("woonfraude", 0),)), "categories.woonfraude", "must be 1..36600"),
    (
        lambda: Retention(30, (("woonfraude", 36_601),)),
        "categories.woonfraude",
        "must be 1..36600",
    ),
    (
        lambda: Retention(30, (("woonfraude", 30), ("leegstand", 9), ("woonfraude", 40))),
        "categories.woonfraude",
        "listed twice",
    ),
    # Quotas
    (lambda: Quotas(0, 10), "oprf_evaluations_per_day", "must be 1..1000000000"),
    (lambda: Quotas(10**9 + 1, 10), "oprf_evaluations_per_day", "must be 1..1000000000"),
    (lambda: Quotas(10, -1), "disclosure_requests_per_day", "must be 0..1000000000"),
    (lambda: Quotas(10, 10**9 + 1), "disclosure_requests_per_day", "must be 0..1000000000"),
    (
        lambda: Quotas(10, 10, token_entries_per_day=MIN_TOKEN_QUOTA - 1),
        "token_entries_per_day",
        f"must be {MIN_TOKEN_QUOTA}..1000000000",
    ),
    (
        lambda: Quotas(10, 10, token_entries_per_day=10**9 + 1),
        "token_entries_per_day",
        f"must be {MIN_TOKEN_QUOTA}..1000000000",
    ),
    (
        lambda: Quotas(10, 10, token_entries_held=MIN_TOKEN_QUOTA - 1),
        "token_entries_held",
        f"must be {MIN_TOKEN_QUOTA}..1000000000",
    ),
    (
        lambda: Quotas(10, 10, token_entries_held=10**9 + 1),
        "token_entries_held",
        f"must be {MIN_TOKEN_QUOTA}..1000000000",
    ),
    # PictureRules
    (lambda: _picture(viewers=("riec",)), "viewers[0]", ROLES),
    (lambda: _picture(viewers=(Role.RIEC, Role.RIEC)), "viewers[1]", "'riec' is listed twice"),
    (lambda: _picture(min_cell_count=0), "min_cell_count", "must be 1..1000000000"),
    (lambda: _picture(epsilon_per_period=True), "epsilon_per_period", "must be a number"),
    (lambda: _picture(epsilon_per_period="1.0"), "epsilon_per_period", "must be a number"),
    (lambda: _picture(epsilon_per_request=None), "epsilon_per_request", "must be a number"),
    (lambda: _picture(epsilon_per_period=-0.1), "epsilon_per_period", "must be 0..100"),
    (lambda: _picture(epsilon_per_period=100.5), "epsilon_per_period", "must be 0..100"),
    (lambda: _picture(epsilon_per_period=math.nan), "epsilon_per_period", "must be 0..100"),
    (lambda: _picture(epsilon_per_period=math.inf), "epsilon_per_period", "must be 0..100"),
    (
        lambda: _picture(epsilon_per_period=1.0, epsilon_per_request=math.nan),
        "epsilon_per_request",
        "must be 0..100",
    ),
    (
        lambda: _picture(epsilon_per_period=1.0, epsilon_per_request=-1.0),
        "epsilon_per_request",
        "must be 0..100",
    ),
    (
        lambda: _picture(epsilon_per_period=1.0),
        "epsilon_per_request",
        "set both epsilon_per_period and epsilon_per_request, or neither",
    ),
    (
        lambda: _picture(epsilon_per_request=0.5),
        "epsilon_per_request",
        "set both epsilon_per_period and epsilon_per_request, or neither",
    ),
    (
        lambda: _picture(epsilon_per_period=1.0, epsilon_per_request=1.5),
        "epsilon_per_request",
        "one request cannot spend more than the period's budget",
    ),
    # CaseRules
    (lambda: CaseRules(("riec",)), "coordinators[0]", ROLES),  # type: ignore[arg-type]
    (lambda: CaseRules([Role.RIEC]), "coordinators", "must be a list"),  # type: ignore[arg-type]
    # Policy
    (lambda: _policy(identifier_types=("bsn", "pas")), "identifier_types[1]", f"'pas' {TYPES}"),
    (
        lambda: _policy(identifier_types=(), matching=Matching(2, ("bsn",))),
        "identifier_types",
        "list at least one identifier type",
    ),
    (lambda: _policy(categories=("woonfraude", "Leegstand")), "categories[1]", TOKEN),
    (lambda: _policy(categories=()), "categories", "list at least one category"),
    (
        lambda: _policy(detail_fields=("naam", "adres", "naam")),
        "detail_fields[2]",
        "'naam' is listed twice",
    ),
    (lambda: _policy(purposes=list(EXAMPLE.purposes)), "purposes", "must be a list"),
    (
        lambda: _policy(purposes=(*EXAMPLE.purposes, "bibob")),
        f"purposes[{len(EXAMPLE.purposes)}]",
        "must be a purpose",
    ),
    (
        lambda: _policy(purposes=(*EXAMPLE.purposes, Purpose("bibob", "Nogmaals"))),
        f"purposes[{len(EXAMPLE.purposes)}].id",
        "duplicate purpose 'bibob'",
    ),
    (lambda: _policy(matching=None), "matching", "must be the matching section"),
    (
        lambda: _policy(
            identifier_types=("bsn", "kvk", "iban"), matching=Matching(2, ("kvk", "email"))
        ),
        "matching.identifier_types[1]",
        "'email' is not among the covenant's identifier_types",
    ),
    (lambda: _policy(visibility=list(EXAMPLE.visibility)), "visibility", "must be a list"),
    (
        lambda: _policy(visibility=(*EXAMPLE.visibility, "riec")),
        f"visibility[{_N_VIS}]",
        "must be a visibility rule",
    ),
    (
        lambda: _policy(visibility=(*EXAMPLE.visibility, VisibilityRule(Role.LIEC, Level.COUNT))),
        f"visibility[{_N_VIS}].role",
        "a second rule for role 'liec'",
    ),
    (lambda: _policy(release=list(EXAMPLE.release)), "release", "must be a list"),
    (
        lambda: _policy(release=(*EXAMPLE.release, None)),
        f"release[{_N_REL}]",
        "must be a release rule",
    ),
    (
        lambda: _policy(
            release=(*EXAMPLE.release, _release(purpose="adresfraude", fields=("adres",)))
        ),
        f"release[{_N_REL}]",
        "a second rule for this role, category and purpose",
    ),
    (
        lambda: _policy(release=(*EXAMPLE.release, _release(category="fietsendiefstal"))),
        f"release[{_N_REL}].category",
        "'fietsendiefstal' is not among the covenant's categories",
    ),
    (
        lambda: _policy(release=(*EXAMPLE.release, _release(purpose="nieuwsgierigheid"))),
        f"release[{_N_REL}].purpose",
        "'nieuwsgierigheid' is not among the covenant's purposes",
    ),
    (
        lambda: _policy(
            release=(*EXAMPLE.release, _release(purpose="bibob", fields=("naam", "adres", "bsn")))
        ),
        f"release[{_N_REL}].fields[2]",
        "'bsn' is not among the covenant's detail_fields",
    ),
    (lambda: _policy(retention=365), "retention", "must be the retention section"),
    (
        lambda: _policy(retention=Retention(365, (("woonfraude", 9), ("fietsendiefstal", 30)))),
        "retention.categories.fietsendiefstal",
        "'fietsendiefstal' is not among the covenant's categories",
    ),
    (lambda: _policy(quotas=None), "quotas", "must be the quotas section"),
    (lambda: _policy(picture=None), "picture", "must be the picture section"),
    (lambda: _policy(cases=None), "cases", "must be the cases section"),
]


@pytest.mark.parametrize(("build", "field", "message"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_every_check_names_its_field_and_says_why(
    build: Callable[[], object], field: str, message: str
) -> None:
    error = _refused(build)
    assert (error.field, error.message) == (field, message)


# --- what passes, at the edges ------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: Signing(2, (_signer(), _signer("beheer-b", KEY_B)), KEY_T), id="t-equals-n"
        ),
        pytest.param(lambda: Matching(1000, ("bsn",)), id="min-parties-1000"),
        pytest.param(lambda: _release(category=ANY_CATEGORY), id="any-category"),
        pytest.param(
            lambda: _release(max_per_period=10**9, period_days=36_600), id="release-maxima"
        ),
        pytest.param(lambda: _release(max_per_period=0, period_days=1), id="release-minima"),
        pytest.param(lambda: Retention(36_600, (("woonfraude", 1),)), id="retention-edges"),
        pytest.param(lambda: Quotas(1, 0), id="quota-minima"),
        pytest.param(lambda: Quotas(10**9, 10**9, 10**9, 10**9), id="quota-maxima"),
        pytest.param(
            lambda: Quotas(1, 0, MIN_TOKEN_QUOTA, MIN_TOKEN_QUOTA), id="token-quota-minima"
        ),
        pytest.param(lambda: _picture(viewers=(), min_cell_count=1), id="no-viewers"),
        pytest.param(
            lambda: _picture(epsilon_per_period=100, epsilon_per_request=100), id="eps-100"
        ),
        pytest.param(lambda: _picture(epsilon_per_period=1, epsilon_per_request=0.5), id="int-eps"),
        pytest.param(lambda: CaseRules(()), id="no-case-coordinators"),
        pytest.param(lambda: _policy(detail_fields=()), id="no-detail-fields"),
        pytest.param(
            lambda: _policy(
                detail_fields=(),
                release=(*EXAMPLE.release, _release(purpose="bibob", fields=("bsn",))),
            ),
            id="any-field-without-detail-fields",
        ),
        pytest.param(lambda: _policy(visibility=(), release=()), id="no-rules"),
    ],
)
def test_values_at_the_edges_pass(build: Callable[[], object]) -> None:
    assert build() is not None


def test_a_noisy_picture_needs_both_budgets() -> None:
    assert _picture(epsilon_per_period=2.0, epsilon_per_request=2.0).noisy
    assert not _picture().noisy


# --- lookups ------------------------------------------------------------------------------


def test_levels_are_ordered() -> None:
    levels = list(Level)
    assert levels == [
        Level.NOTHING,
        Level.EXISTS,
        Level.COUNT,
        Level.ROLES,
        Level.PARTIES,
        Level.CATEGORIES,
    ]
    for i, level in enumerate(levels):
        assert level.rank == i
        for j, other in enumerate(levels):
            assert level.at_least(other) is (i >= j), (level, other)


def test_signing_finds_signers_by_id() -> None:
    a, b = _signer(), _signer("beheer-b", KEY_B, "Beheer B")
    signing = Signing(2, (a, b), KEY_T)
    assert signing.signer("beheer-b") is b
    assert signing.signer("beheer-a") is a
    assert signing.signer("beheer-c") is None


def test_policy_lookups() -> None:
    assert EXAMPLE.visibility_for(Role.LIEC) == VisibilityRule(
        Role.LIEC, Level.COUNT, coordinator=True
    )
    assert EXAMPLE.visibility_for(Role.DOUANE) is None
    bibob = EXAMPLE.purpose("bibob")
    assert bibob is not None
    assert bibob.description == "Bibob screening of a permit applicant (Wet Bibob)"
    assert EXAMPLE.purpose("onbekend") is None
    assert EXAMPLE.retention.days_for("vastgoedmisbruik") == 730
    assert EXAMPLE.retention.days_for("leegstand") == 365
    assert EXAMPLE.retention.longest_days == 730
    assert Retention(90, (("woonfraude", 30),)).longest_days == 90
    assert (EXAMPLE.quotas.token_entries_per_day, EXAMPLE.quotas.token_entries_held) == (
        1_000_000,
        5_000_000,
    )
    assert _release().key == (Role.GEMEENTE, "woonfraude", "adresfraude")


def test_the_identifier_types_are_those_the_node_parses() -> None:
    assert IDENTIFIER_TYPES == (
        "bsn",
        "rsin",
        "kvk",
        "vestiging",
        "address",
        "bag",
        "kenteken",
        "iban",
        "phone",
        "email",
        "person",
    )


def test_example_policy_takes_min_parties() -> None:
    assert example_policy().matching.min_parties == 2
    assert example_policy(min_parties=4).matching.min_parties == 4


# --- the OPRF cap shared among the key holders -------------------------------------------


@pytest.mark.parametrize(
    ("cap", "t", "n", "seated", "share"),
    [
        pytest.param(12, 2, 3, False, 8, id="floor(12*2/3)"),
        pytest.param(10, 2, 3, False, 6, id="floor(10*2/3)-rounds-down"),
        pytest.param(10, 3, 4, True, 6, id="seated-floor(10*2/3)-rounds-down"),
        pytest.param(12, 2, 3, True, 6, id="seated-floor(12*1/2)"),
        pytest.param(10, 3, 5, False, 6, id="floor(10*3/5)"),
        pytest.param(10, 3, 5, True, 5, id="seated-floor(10*2/4)"),
        pytest.param(7, 3, 3, False, 7, id="t-equals-n"),
        pytest.param(7, 3, 3, True, 7, id="seated-t-equals-n"),
        pytest.param(1, 2, 16, True, 0, id="below-the-smallest-cap"),
    ],
)
def test_each_holder_gives_its_share_of_the_cap(
    cap: int, t: int, n: int, seated: bool, share: int
) -> None:
    quotas = Quotas(oprf_evaluations_per_day=cap, disclosure_requests_per_day=0)
    given = quotas.oprf_per_holder(threshold=t, holders=n, seated=seated)
    assert (given, type(given)) == (share, int)


@pytest.mark.parametrize(
    ("t", "n", "smallest"),
    [(2, 2, 1), (2, 3, 2), (3, 5, 2), (3, 8, 4), (2, 16, 15), (16, 16, 1)],
)
def test_the_smallest_cap_leaves_every_holder_a_share(t: int, n: int, smallest: int) -> None:
    quotas = Quotas(oprf_evaluations_per_day=smallest, disclosure_requests_per_day=0)
    assert quotas.smallest_oprf_cap(threshold=t, holders=n) == smallest
    assert quotas.oprf_per_holder(threshold=t, holders=n, seated=True) >= 1
    if smallest > 1:
        less = Quotas(oprf_evaluations_per_day=smallest - 1, disclosure_requests_per_day=0)
        assert less.oprf_per_holder(threshold=t, holders=n, seated=True) == 0


@pytest.mark.parametrize(("t", "n"), [(1, 3), (0, 3), (4, 3), (3, 2)])
def test_the_shares_need_a_threshold_of_two_up_to_the_holders(t: int, n: int) -> None:
    quotas = Quotas(oprf_evaluations_per_day=12, disclosure_requests_per_day=0)
    for check in (
        lambda: quotas.oprf_per_holder(threshold=t, holders=n, seated=False),
        lambda: quotas.oprf_per_holder(threshold=t, holders=n, seated=True),
        lambda: quotas.smallest_oprf_cap(threshold=t, holders=n),
    ):
        error = _refused(check)
        assert (error.field, error.message) == ("threshold", f"threshold {t} must be 2..{n}")
