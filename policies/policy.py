"""The covenant's rules as data: signers, purposes, matching, visibility, release, retention.

These are the sections of the covenant that say who may see and share what.
They are plain frozen dataclasses, validated on construction with errors that
name the field; ``samenloop.policies.covenant`` reads and writes them as TOML
and ``samenloop.policies.rules`` turns them into decisions. Nothing here does
I/O.

Vocabulary (see docs/covenant.md):

* a *signer* is an administrator whose Ed25519 signature counts towards the
  covenant's signature threshold (TUF's root keys);
* a *purpose* (doel) is a reason for a disclosure that the covenant allows;
* a *visibility rule* says, per recipient role, how much of a hit it learns
  (:class:`Level`), which roles it never learns of (to avoid tipping off), and
  whether it coordinates (is told of hits it is not part of);
* a *release rule* says, per requesting role, category and purpose, which
  detail fields the owner may release, whether a second officer must approve
  (four eyes) and how many releases per period are allowed.

Over 800 lines: one frozen dataclass per section of the covenant's rules, each with its
checks; they are read together, in the order docs/covenant.md describes them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from samenloop.policies.certs import check_id
from samenloop.policies.errors import InvalidInput
from samenloop.v1 import common_pb2

__all__ = [
    "ANY_CATEGORY",
    "DEFAULT_DISCLOSURE_SCORE",
    "DEFAULT_FRESHNESS_SECONDS",
    "DEFAULT_SHOWN_SCORE",
    "IDENTIFIER_TYPES",
    "PERSON_KEY_KINDS",
    "CaseRules",
    "Level",
    "Matching",
    "NetworkRules",
    "PersonMatching",
    "PictureRules",
    "Policy",
    "Purpose",
    "Quotas",
    "ReleaseRule",
    "Retention",
    "Role",
    "Signer",
    "Signing",
    "VisibilityRule",
    "check_int",
    "check_name",
    "check_token",
]

#: The identifier types a covenant may name; the node's parsers know exactly these.
IDENTIFIER_TYPES = (
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

#: The person key kinds a covenant may turn on (``[person_matching] kinds``): the wire
#: names of ``samenloop.node.identifiers.person_keys.PersonKeyKind`` (a test keeps the two
#: equal; the rules cannot import the node).
PERSON_KEY_KINDS: Final = (
    "person.phonetic_date",
    "person.given_date",
    "person.names_year_month",
    "person.names_year",
    "person.names_month_day",
    "person.names_address",
    "person.names_postcode",
    "person.given_address",
    "person.address_date",
)
#: Default lowest score at which a probable person hit is shown, and at which it may lead
#: to a disclosure: ``person_score.SHOWN_THRESHOLD`` and ``DISCLOSURE_THRESHOLD`` (a test
#: keeps them equal).
DEFAULT_SHOWN_SCORE: Final = 9.4
DEFAULT_DISCLOSURE_SCORE: Final = 72.7
#: No score a sum of the kinds' weights can reach is higher (a bound for typos).
MAX_PERSON_SCORE: Final = 1000.0

#: A release rule's category that matches every category of the covenant.
ANY_CATEGORY = "*"

MAX_NAME_BYTES = 256
MAX_DAYS = 36_600  # a hundred years: beyond that a number is a typo
MAX_QUOTA = 10**9
#: Byte quotas: up to a terabyte, beyond which a number is a typo.
MAX_BYTES_QUOTA = 2**40
#: The broker's quotas of token entries per party: a day's submissions, and entries held.
#: A regional partner holds thousands to a few hundred thousand signals of a few
#: identifiers each; the defaults leave room for ten times that and a first import of a
#: million entries a day, and keep one party well below what the broker's index is
#: built and measured for (tens of millions of entries).
DEFAULT_TOKEN_ENTRIES_PER_DAY = 1_000_000
DEFAULT_TOKEN_ENTRIES_HELD = 5_000_000
#: No token quota below one full batch: a node could never send the batches it makes.
MIN_TOKEN_QUOTA: int = common_pb2.LIMITS_MAX_TOKENS_PER_BATCH
#: The broker's quotas of relayed envelopes. A disclosure request or answer, or a case
#: message, is a few KB sealed; a picture contribution up to one envelope (1 MiB). A
#: partner sends hundreds a day; the defaults leave it ten thousand envelopes and 64 MiB
#: a day, and let 512 MiB wait in one party's mailbox (several days of a busy partner's
#: traffic while it is offline) before senders must wait for it to read its mailbox.
DEFAULT_ENVELOPES_PER_DAY = 10_000
DEFAULT_ENVELOPE_BYTES_PER_DAY = 64 * 2**20
DEFAULT_ENVELOPE_BYTES_WAITING = 512 * 2**20
#: No envelope byte quota below two maximal envelopes: a node must always be able to send
#: the largest envelope it may make (stored with the broker's wrapping, it is a little
#: over ``LIMITS_MAX_ENVELOPE_BYTES``).
MIN_ENVELOPE_BYTES_QUOTA: int = 2 * common_pb2.LIMITS_MAX_ENVELOPE_BYTES
#: The bytes of hit notices one party's submissions and withdrawals may put in the other
#: parties' mailboxes a day. An honest first import of a million entries, a few percent of
#: them in hits, causes some tens of MB of notices (a notice of a small group is under
#: 1 KB); churning refs under a shared token, which grows each co-member's notice to many
#: KB, is what this bounds.
DEFAULT_HIT_NOTICE_BYTES_PER_DAY = 256 * 2**20
#: No notice quota below one maximal notice to every other party of the largest covenant
#: would make little sense; a day's first batch is never refused for it anyway.
MIN_HIT_NOTICE_BYTES_QUOTA = 2**20
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")


class Role(enum.StrEnum):
    """The kinds of partner a covenant knows; visibility and release rules are written per role."""

    GEMEENTE = "gemeente"
    POLITIE = "politie"
    OM = "om"
    BELASTINGDIENST = "belastingdienst"
    FIOD = "fiod"
    DOUANE = "douane"
    IND = "ind"
    ARBEIDSINSPECTIE = "arbeidsinspectie"
    PROVINCIE = "provincie"
    WONINGCORPORATIE = "woningcorporatie"
    RIEC = "riec"
    LIEC = "liec"


class Level(enum.StrEnum):
    """How much of a hit a recipient learns; each level adds to the one before."""

    NOTHING = "nothing"  # no notice at all: its signals count, it is not told
    EXISTS = "exists"  # that a hit on its signal exists, nothing about the others
    COUNT = "count"  # ... and how many parties it may know of hold the subject
    ROLES = "roles"  # ... and their roles
    PARTIES = "parties"  # ... and which parties, with their signal references
    CATEGORIES = "categories"  # ... and the categories of their signals

    @property
    def rank(self) -> int:
        return _LEVEL_RANKS[self]

    def at_least(self, other: Level) -> bool:
        return _LEVEL_RANKS[self] >= _LEVEL_RANKS[other]


#: Each level's place in the order, looked up per notice on the broker's hot path.
_LEVEL_RANKS: Final[dict[Level, int]] = {level: i for i, level in enumerate(Level)}


# --- field rules ---------------------------------------------------------------------


def check_token(value: object, *, field: str) -> str:
    """A short lower-case identifier used in rules: a category, purpose, field or signer id."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidInput(
            "must be 1-64 characters: a-z, 0-9, '_', '.', '-' (starting with a letter or digit)",
            field=field,
        )
    return value


def check_name(value: object, *, field: str) -> str:
    """A display name or description: non-empty, no control characters, trimmed, bounded."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("must be a non-empty string", field=field)
    if len(value.encode("utf-8")) > MAX_NAME_BYTES * 4 or value != value.strip():
        raise InvalidInput(
            f"must be at most {MAX_NAME_BYTES * 4} bytes, without surrounding spaces", field=field
        )
    if any((ord(char) < 0x20 and char != "\n") or ord(char) == 0x7F for char in value):
        raise InvalidInput("must not contain control characters", field=field)
    return value


def check_int(value: object, low: int, high: int, *, field: str) -> int:
    """An integer (not a bool) in ``low..high``; else ``InvalidInput`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("must be an integer", field=field)
    if not low <= value <= high:
        raise InvalidInput(f"must be {low}..{high}", field=field)
    return value


def _check_bool(value: object, *, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput("must be true or false", field=field)
    return value


def _check_tuple(value: object, *, field: str) -> tuple[object, ...]:
    if not isinstance(value, tuple):
        raise InvalidInput("must be a list", field=field)
    return value


def _distinct_tokens(values: object, *, field: str, allowed: Iterable[str] | None = None) -> None:
    items = _check_tuple(values, field=field)
    allowed_set = frozenset(allowed) if allowed is not None else None
    seen: set[str] = set()
    for i, item in enumerate(items):
        check_token(item, field=f"{field}[{i}]")
        assert isinstance(item, str)
        if allowed_set is not None and item not in allowed_set:
            raise InvalidInput(
                f"{item!r} is not one of: {', '.join(sorted(allowed_set))}", field=f"{field}[{i}]"
            )
        if item in seen:
            raise InvalidInput(f"{item!r} is listed twice", field=f"{field}[{i}]")
        seen.add(item)


def _check_roles(values: object, *, field: str) -> None:
    items = _check_tuple(values, field=field)
    seen: set[Role] = set()
    for i, item in enumerate(items):
        if not isinstance(item, Role):
            raise InvalidInput(f"must be one of: {', '.join(Role)}", field=f"{field}[{i}]")
        if item in seen:
            raise InvalidInput(f"{item.value!r} is listed twice", field=f"{field}[{i}]")
        seen.add(item)


# --- the sections ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signer:
    """An administrator whose signature counts towards the covenant's threshold."""

    id: str
    name: str
    ed25519: bytes

    def __post_init__(self) -> None:
        check_id(self.id, field="id")
        check_name(self.name, field="name")
        if not isinstance(self.ed25519, bytes) or len(self.ed25519) != 32:
            raise InvalidInput("must be 32 bytes", field="ed25519")


#: How long a covenant timestamp may vouch for a version unless the covenant says
#: otherwise (``signing.freshness_seconds``): a day, as TUF's timestamp role.
DEFAULT_FRESHNESS_SECONDS: Final = 24 * 3600
#: The shortest freshness period a covenant may set: a timestamp job must run more
#: often than this, and a shorter period leaves no room for a late run.
MIN_FRESHNESS_SECONDS: Final = 60
#: The longest: a week. Longer would let a broker operator that withholds a version keep
#: the nodes on the old one longer than a covenant's parties would want to find out.
MAX_FRESHNESS_SECONDS: Final = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Signing:
    """Who signs the covenant and how many of them must (the threshold); and the
    timestamp role (TUF's): the Ed25519 key that signs the short-lived statements that a
    version is current, and how long one may vouch for it (``freshness_seconds``).

    The timestamp key belongs to an administrator or an automated job of theirs, never
    to the broker's operator, and is none of the signers' keys: it signs often, on a
    machine that runs unattended, and must not be able to sign a covenant.
    """

    threshold: int
    signers: tuple[Signer, ...]
    timestamp_ed25519: bytes
    freshness_seconds: int = DEFAULT_FRESHNESS_SECONDS

    def __post_init__(self) -> None:
        signers = _check_tuple(self.signers, field="signers")
        if not signers:
            raise InvalidInput("list at least one signer", field="signers")
        ids: set[str] = set()
        keys: set[bytes] = set()
        for i, signer in enumerate(signers):
            if not isinstance(signer, Signer):
                raise InvalidInput("must be a signer", field=f"signers[{i}]")
            if signer.id in ids:
                raise InvalidInput(f"duplicate signer id {signer.id!r}", field=f"signers[{i}].id")
            if signer.ed25519 in keys:
                raise InvalidInput(
                    "same key as another signer: every signer needs its own key",
                    field=f"signers[{i}].ed25519",
                )
            ids.add(signer.id)
            keys.add(signer.ed25519)
        check_int(self.threshold, 1, len(signers), field="threshold")
        if not isinstance(self.timestamp_ed25519, bytes) or len(self.timestamp_ed25519) != 32:
            raise InvalidInput(
                "must be the timestamp key's Ed25519 public key (32 bytes)",
                field="timestamp_ed25519",
            )
        if self.timestamp_ed25519 in keys:
            raise InvalidInput(
                "same key as a signer: the timestamp key must not be able to sign the covenant",
                field="timestamp_ed25519",
            )
        check_int(
            self.freshness_seconds,
            MIN_FRESHNESS_SECONDS,
            MAX_FRESHNESS_SECONDS,
            field="freshness_seconds",
        )

    def signer(self, signer_id: str) -> Signer | None:
        return next((s for s in self.signers if s.id == signer_id), None)


@dataclass(frozen=True, slots=True)
class Purpose:
    """A purpose (doel) for which details may be asked; doelbinding keys on its id."""

    id: str
    description: str

    def __post_init__(self) -> None:
        check_token(self.id, field="id")
        check_name(self.description, field="description")


@dataclass(frozen=True, slots=True)
class Matching:
    """When tokens form a hit: distinct parties needed, and which identifier types count."""

    min_parties: int
    identifier_types: tuple[str, ...]

    def __post_init__(self) -> None:
        check_int(self.min_parties, 2, 1000, field="min_parties")
        _distinct_tokens(self.identifier_types, field="identifier_types", allowed=IDENTIFIER_TYPES)
        if not self.identifier_types:
            raise InvalidInput("list at least one identifier type", field="identifier_types")


@dataclass(frozen=True, slots=True)
class VisibilityRule:
    """What parties of ``role`` learn of a hit.

    ``level`` bounds what they learn; members whose role is in
    ``hidden_roles`` are never shown to them (their signals still count, so
    that, say, police signals do not tip off a municipality); a
    ``coordinator`` is told of every hit it may see, also when it holds no
    signal in it.
    """

    role: Role
    level: Level
    hidden_roles: tuple[Role, ...] = ()
    coordinator: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise InvalidInput(f"must be one of: {', '.join(Role)}", field="role")
        if not isinstance(self.level, Level):
            raise InvalidInput(f"must be one of: {', '.join(Level)}", field="level")
        _check_roles(self.hidden_roles, field="hidden_roles")
        _check_bool(self.coordinator, field="coordinator")
        if self.coordinator and self.level is Level.NOTHING:
            raise InvalidInput(
                "a coordinator that learns nothing coordinates nothing", field="level"
            )


@dataclass(frozen=True, slots=True)
class ReleaseRule:
    """Which fields an owner may release to a ``role`` for a ``category`` and ``purpose``.

    ``category`` may be ``"*"`` (any category); a rule for the exact category
    wins over it. ``four_eyes``: a second officer of the owner must approve
    first. ``max_per_period``: at most this many releases to one requesting
    party under this rule per ``period_days`` (0: no maximum).
    """

    role: Role
    category: str
    purpose: str
    fields: tuple[str, ...]
    four_eyes: bool = False
    max_per_period: int = 0
    period_days: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise InvalidInput(f"must be one of: {', '.join(Role)}", field="role")
        if self.category != ANY_CATEGORY:
            check_token(self.category, field="category")
        check_token(self.purpose, field="purpose")
        _distinct_tokens(self.fields, field="fields")
        if not self.fields:
            raise InvalidInput("list at least one field", field="fields")
        _check_bool(self.four_eyes, field="four_eyes")
        check_int(self.max_per_period, 0, MAX_QUOTA, field="max_per_period")
        check_int(self.period_days, 1, MAX_DAYS, field="period_days")

    @property
    def key(self) -> tuple[Role, str, str]:
        return (self.role, self.category, self.purpose)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long signals are kept: ``default_days``, or per category in ``categories``."""

    default_days: int
    categories: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        check_int(self.default_days, 1, MAX_DAYS, field="default_days")
        items = _check_tuple(self.categories, field="categories")
        seen: set[str] = set()
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise InvalidInput("must be (category, days) pairs", field="categories")
            category, days = item
            check_token(category, field=f"categories.{category}")
            check_int(days, 1, MAX_DAYS, field=f"categories.{category}")
            if category in seen:
                raise InvalidInput("listed twice", field=f"categories.{category}")
            seen.add(str(category))

    def days_for(self, category: str) -> int:
        return dict(self.categories).get(category, self.default_days)

    @property
    def longest_days(self) -> int:
        """The longest retention of any category: what the broker, which cannot see
        categories, allows a token entry at most."""
        return max((self.default_days, *(days for _, days in self.categories)))


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-party limits: OPRF evaluations (caps online guessing) and disclosure requests per
    day; at the broker, token entries submitted and refs withdrawn per UTC day and entries
    held at once, so that no party can fill the broker (or slow everyone's matching) with
    entries of its own; the bytes of hit notices its submissions and withdrawals put in
    other parties' mailboxes per UTC day; envelopes it sends per UTC day (count and bytes),
    and the envelope bytes that may wait in one party's mailbox from all senders together,
    so that no party, nor all together, can fill a mailbox or the broker's disk.

    The broker's token quotas are at least one full batch (``LIMITS_MAX_TOKENS_PER_BATCH``)
    and its envelope byte quotas at least two maximal envelopes: a node must always be able
    to send the batches and envelopes it makes.
    """

    oprf_evaluations_per_day: int
    disclosure_requests_per_day: int
    token_entries_per_day: int = DEFAULT_TOKEN_ENTRIES_PER_DAY
    token_entries_held: int = DEFAULT_TOKEN_ENTRIES_HELD
    hit_notice_bytes_per_day: int = DEFAULT_HIT_NOTICE_BYTES_PER_DAY
    envelopes_per_day: int = DEFAULT_ENVELOPES_PER_DAY
    envelope_bytes_per_day: int = DEFAULT_ENVELOPE_BYTES_PER_DAY
    envelope_bytes_waiting: int = DEFAULT_ENVELOPE_BYTES_WAITING

    def __post_init__(self) -> None:
        check_int(self.oprf_evaluations_per_day, 1, MAX_QUOTA, field="oprf_evaluations_per_day")
        check_int(
            self.disclosure_requests_per_day, 0, MAX_QUOTA, field="disclosure_requests_per_day"
        )
        check_int(
            self.token_entries_per_day, MIN_TOKEN_QUOTA, MAX_QUOTA, field="token_entries_per_day"
        )
        check_int(self.token_entries_held, MIN_TOKEN_QUOTA, MAX_QUOTA, field="token_entries_held")
        check_int(
            self.hit_notice_bytes_per_day,
            MIN_HIT_NOTICE_BYTES_QUOTA,
            MAX_BYTES_QUOTA,
            field="hit_notice_bytes_per_day",
        )
        check_int(self.envelopes_per_day, 1, MAX_QUOTA, field="envelopes_per_day")
        for name in ("envelope_bytes_per_day", "envelope_bytes_waiting"):
            check_int(getattr(self, name), MIN_ENVELOPE_BYTES_QUOTA, MAX_BYTES_QUOTA, field=name)

    def oprf_per_holder(self, *, threshold: int, holders: int, seated: bool) -> int:
        """Elements one key holder evaluates per UTC day for one requesting party: its share.

        Holders cannot see each other's counts, so each enforces a share of the
        party's cap C such that all of them together never give it more than C
        tokens. Every token needs partial evaluations from ``threshold`` (t)
        distinct holders of the ``holders`` (n). A requester without a seat gets
        floor(C*t/n) from each holder: at most floor(n*floor(C*t/n)/t) <= C
        tokens, whatever sets it asks. A ``seated`` requester (it holds another
        seat of the key) can add its own partial evaluation without asking, so
        it needs only t-1 of the n-1 others, and each of them gives it
        floor(C*(t-1)/(n-1)): again at most C tokens. See docs/crypto.md.
        """
        if not 2 <= threshold <= holders:
            raise InvalidInput(f"threshold {threshold} must be 2..{holders}", field="threshold")
        if seated:
            return self.oprf_evaluations_per_day * (threshold - 1) // (holders - 1)
        return self.oprf_evaluations_per_day * threshold // holders

    def smallest_oprf_cap(self, *, threshold: int, holders: int) -> int:
        """The smallest cap that leaves every holder a share of at least one element a day.

        The seated share floor(C*(t-1)/(n-1)) is the smaller one, as
        (t-1)/(n-1) <= t/n whenever t <= n.
        """
        if not 2 <= threshold <= holders:
            raise InvalidInput(f"threshold {threshold} must be 2..{holders}", field="threshold")
        return -(-(holders - 1) // (threshold - 1))


#: A picture classification is printed in a page margin: one short line.
MAX_CLASSIFICATION: Final = 100
#: An area code as the picture writes it: postcode-4, CBS wijk or CBS buurt.
_AREA_CODE: Final = re.compile(r"pc4:[1-9][0-9]{3}|wijk:WK[0-9]{6}|buurt:BU[0-9]{8}")
#: An SBI code as the KvK registers it: 2 to 5 digits.
_SBI_CODE: Final = re.compile(r"[0-9]{2,5}")
#: The most values a covenant lists for the picture's areas or branches.
MAX_PICTURE_AXIS: Final = 5000


@dataclass(frozen=True, slots=True)
class PictureRules:
    """Who may see the regional picture and the disclosure control it is released under.

    ``viewers``: the roles that may ask for the picture and see it (typically
    the RIEC). ``min_cell_count``: cells below it are suppressed, with
    complementary suppression. ``epsilon_per_period``: each node's privacy
    budget per calendar month of the picture; 0 means exact counts, no noise.
    ``epsilon_per_request``: what one request spends of it, at each node.
    ``classification``: the marking every printed page of a picture report
    carries (``"Departementaal vertrouwelijk"``); empty for none.

    Secure aggregation (issue 13): ``aggregator`` is the role of the one party that
    receives the second additive share of every contribution and sums them for a
    viewer; it must not be a viewer, and the covenant assumes it does not collude with
    one. Without it no party's counts leave its node for the picture.
    ``min_contributors``: the aggregator sums a request only over at least this many
    contributors other than the viewer. A cell's safety is judged on what the others
    contributed, without the viewer's own counts: ``min_cell_contributors`` is the
    fewest contributors other than the viewer a non-zero cell needs, and
    ``dominance_share`` the largest share of a cell one contributor may hold (1 turns
    the rule off). ``areas`` and ``branches``: the public lists of area codes
    (``pc4:4331``, ``wijk:WK…``, ``buurt:BU…``) and SBI codes that tables by area or
    branch are shared over (other values count as ``overig``).
    """

    viewers: tuple[Role, ...]
    min_cell_count: int
    epsilon_per_period: float = 0.0
    epsilon_per_request: float = 0.0
    classification: str = ""
    aggregator: Role | None = None
    min_contributors: int = 2
    min_cell_contributors: int = 1
    dominance_share: float = 1.0
    areas: tuple[str, ...] = ()
    branches: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_roles(self.viewers, field="viewers")
        check_int(self.min_cell_count, 1, MAX_QUOTA, field="min_cell_count")
        if self.classification != "":
            check_name(self.classification, field="classification")
            if "\n" in self.classification or len(self.classification) > MAX_CLASSIFICATION:
                raise InvalidInput(
                    f"must be one line of at most {MAX_CLASSIFICATION} characters",
                    field="classification",
                )
        for name in ("epsilon_per_period", "epsilon_per_request"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput("must be a number", field=name)
            if not 0 <= value <= 100 or value != value:
                raise InvalidInput("must be 0..100", field=name)
        if (self.epsilon_per_period == 0) != (self.epsilon_per_request == 0):
            raise InvalidInput(
                "set both epsilon_per_period and epsilon_per_request, or neither",
                field="epsilon_per_request",
            )
        if self.epsilon_per_request > self.epsilon_per_period:
            raise InvalidInput(
                "one request cannot spend more than the period's budget",
                field="epsilon_per_request",
            )
        if self.aggregator is not None:
            if not isinstance(self.aggregator, Role):
                raise InvalidInput("must be a role", field="aggregator")
            if self.aggregator in self.viewers:
                raise InvalidInput(
                    f"{self.aggregator.value} is a viewer: the aggregator must not see the "
                    "picture, or it would hold both shares of every contribution",
                    field="aggregator",
                )
        check_int(self.min_contributors, 2, common_pb2.LIMITS_MAX_PARTIES, field="min_contributors")
        check_int(
            self.min_cell_contributors,
            1,
            common_pb2.LIMITS_MAX_PARTIES,
            field="min_cell_contributors",
        )
        share = self.dominance_share
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise InvalidInput("must be a number", field="dominance_share")
        if not 0.5 <= share <= 1:
            raise InvalidInput("must be 0.5..1 (1: no dominance rule)", field="dominance_share")
        for name, pattern in (("areas", _AREA_CODE), ("branches", _SBI_CODE)):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) > MAX_PICTURE_AXIS:
                raise InvalidInput(f"list at most {MAX_PICTURE_AXIS}", field=name)
            for i, value in enumerate(values):
                if not isinstance(value, str) or not pattern.fullmatch(value):
                    raise InvalidInput(
                        f"{str(value)[:64]!r} is not a code of this kind", field=f"{name}[{i}]"
                    )
            if len(set(values)) != len(values):
                raise InvalidInput("a code is listed twice", field=name)

    @property
    def noisy(self) -> bool:
        return self.epsilon_per_period > 0

    @property
    def band_marks(self) -> bool:
        """Whether contributors send the band marks of their counts with their shares:
        only in exact mode, and only where a rule needs them (more than one contributor
        per cell, or a dominance share below 1); otherwise the shared vector is the counts
        alone, a fraction of the size, and the viewer learns no band counts."""
        return not self.noisy and (self.min_cell_contributors > 1 or self.dominance_share < 1)


@dataclass(frozen=True, slots=True)
class CaseRules:
    """Case coordination (casusregie): the roles that may open cases on hits they see."""

    coordinators: tuple[Role, ...]

    def __post_init__(self) -> None:
        _check_roles(self.coordinators, field="coordinators")


@dataclass(frozen=True, slots=True)
class NetworkRules:
    """The subject network (``[network]``): the roles that are told which hit groups a
    partner's signal ties together (typically the RIEC). A node reports such a link
    only to a viewer that may see both groups and the reporter (``rules.link_viewers``)."""

    viewers: tuple[Role, ...]

    def __post_init__(self) -> None:
        _check_roles(self.viewers, field="viewers")


@dataclass(frozen=True, slots=True)
class PersonMatching:
    """Person keys beyond the exact one (``[person_matching]``): which kinds are
    tokenised and matched, and the score a probable person hit needs to be shown
    (``shown_score``) and to be used for a disclosure (``disclosure_score``)."""

    kinds: tuple[str, ...] = ()
    shown_score: float = DEFAULT_SHOWN_SCORE
    disclosure_score: float = DEFAULT_DISCLOSURE_SCORE

    def __post_init__(self) -> None:
        _distinct_tokens(self.kinds, field="kinds", allowed=PERSON_KEY_KINDS)
        for name in ("shown_score", "disclosure_score"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= MAX_PERSON_SCORE
            ):
                raise InvalidInput(f"must be a number from 0 to {MAX_PERSON_SCORE:g}", field=name)
        if self.disclosure_score < self.shown_score:
            raise InvalidInput(
                "must be at least shown_score: a hit that is not shown cannot be disclosed",
                field="disclosure_score",
            )


@dataclass(frozen=True, slots=True)
class Policy:
    """Every rule of a covenant that is not about identities and keys."""

    identifier_types: tuple[str, ...]
    categories: tuple[str, ...]
    purposes: tuple[Purpose, ...]
    matching: Matching
    visibility: tuple[VisibilityRule, ...]
    release: tuple[ReleaseRule, ...]
    retention: Retention
    quotas: Quotas
    picture: PictureRules
    cases: CaseRules
    detail_fields: tuple[str, ...] = field(default=())
    #: Absent in covenants written before person keys: only the exact person key.
    person_matching: PersonMatching | None = None
    #: Absent in covenants written before the subject network: no links are reported.
    network: NetworkRules | None = None

    def __post_init__(self) -> None:
        _distinct_tokens(self.identifier_types, field="identifier_types", allowed=IDENTIFIER_TYPES)
        if not self.identifier_types:
            raise InvalidInput("list at least one identifier type", field="identifier_types")
        if self.person_matching is not None:
            if not isinstance(self.person_matching, PersonMatching):
                raise InvalidInput("must be the person_matching section", field="person_matching")
            if self.person_matching.kinds and "person" not in self.matching.identifier_types:
                raise InvalidInput(
                    "person key kinds need 'person' among matching.identifier_types",
                    field="person_matching.kinds",
                )
        _distinct_tokens(self.categories, field="categories")
        if not self.categories:
            raise InvalidInput("list at least one category", field="categories")
        _distinct_tokens(self.detail_fields, field="detail_fields")
        purposes = _check_tuple(self.purposes, field="purposes")
        purpose_ids: set[str] = set()
        for i, purpose in enumerate(purposes):
            if not isinstance(purpose, Purpose):
                raise InvalidInput("must be a purpose", field=f"purposes[{i}]")
            if purpose.id in purpose_ids:
                raise InvalidInput(f"duplicate purpose {purpose.id!r}", field=f"purposes[{i}].id")
            purpose_ids.add(purpose.id)
        if not isinstance(self.matching, Matching):
            raise InvalidInput("must be the matching section", field="matching")
        for i, kind in enumerate(self.matching.identifier_types):
            if kind not in self.identifier_types:
                raise InvalidInput(
                    f"{kind!r} is not among the covenant's identifier_types",
                    field=f"matching.identifier_types[{i}]",
                )
        seen_roles: set[Role] = set()
        for i, rule in enumerate(_check_tuple(self.visibility, field="visibility")):
            if not isinstance(rule, VisibilityRule):
                raise InvalidInput("must be a visibility rule", field=f"visibility[{i}]")
            if rule.role in seen_roles:
                raise InvalidInput(
                    f"a second rule for role {rule.role.value!r}", field=f"visibility[{i}].role"
                )
            seen_roles.add(rule.role)
        seen_release: set[tuple[Role, str, str]] = set()
        for i, release in enumerate(_check_tuple(self.release, field="release")):
            if not isinstance(release, ReleaseRule):
                raise InvalidInput("must be a release rule", field=f"release[{i}]")
            if release.key in seen_release:
                raise InvalidInput(
                    "a second rule for this role, category and purpose", field=f"release[{i}]"
                )
            seen_release.add(release.key)
            if release.category != ANY_CATEGORY and release.category not in self.categories:
                raise InvalidInput(
                    f"{release.category!r} is not among the covenant's categories",
                    field=f"release[{i}].category",
                )
            if release.purpose not in purpose_ids:
                raise InvalidInput(
                    f"{release.purpose!r} is not among the covenant's purposes",
                    field=f"release[{i}].purpose",
                )
            if self.detail_fields:
                for j, name in enumerate(release.fields):
                    if name not in self.detail_fields:
                        raise InvalidInput(
                            f"{name!r} is not among the covenant's detail_fields",
                            field=f"release[{i}].fields[{j}]",
                        )
        if not isinstance(self.retention, Retention):
            raise InvalidInput("must be the retention section", field="retention")
        for category, _days in self.retention.categories:
            if category not in self.categories:
                raise InvalidInput(
                    f"{category!r} is not among the covenant's categories",
                    field=f"retention.categories.{category}",
                )
        if not isinstance(self.quotas, Quotas):
            raise InvalidInput("must be the quotas section", field="quotas")
        if not isinstance(self.picture, PictureRules):
            raise InvalidInput("must be the picture section", field="picture")
        if not isinstance(self.cases, CaseRules):
            raise InvalidInput("must be the cases section", field="cases")
        if self.network is not None and not isinstance(self.network, NetworkRules):
            raise InvalidInput("must be the network section", field="network")

    def visibility_for(self, role: Role) -> VisibilityRule | None:
        return next((rule for rule in self.visibility if rule.role is role), None)

    def purpose(self, purpose_id: str) -> Purpose | None:
        return next((p for p in self.purposes if p.id == purpose_id), None)


# --- the example -----------------------------------------------------------------------

#: Signal categories from practice (DESIGN.md): a starting set for covenants and the demo.
EXAMPLE_CATEGORIES = (
    "vastgoedmisbruik",
    "woonfraude",
    "witwasindicatie",
    "drugsproductie",
    "katvanger",
    "risicobranche",
    "bedrijventerrein",
    "buitengebied",
    "leegstand",
)
EXAMPLE_DETAIL_FIELDS = ("naam", "adres", "omschrijving", "dossier", "contactpersoon")


def example_policy(*, min_parties: int = 2) -> Policy:
    """The rules of a typical regional RIEC covenant; ``covenant init`` starts from these.

    Police and FIOD signals count towards hits but are not shown to
    municipalities, housing corporations or the tax office (no tipping off);
    the RIEC coordinates and sees every hit with its categories; municipalities
    may ask for details for a Bibob screening (four eyes) and for tackling
    address fraud; the RIEC may ask for case preparation.
    """
    hidden = (Role.POLITIE, Role.FIOD, Role.OM)
    return Policy(
        identifier_types=IDENTIFIER_TYPES,
        categories=EXAMPLE_CATEGORIES,
        detail_fields=EXAMPLE_DETAIL_FIELDS,
        purposes=(
            Purpose("bibob", "Bibob screening of a permit applicant (Wet Bibob)"),
            Purpose("adresfraude", "Tackling housing and address fraud (woon- en adresfraude)"),
            Purpose("casusvoorbereiding", "Preparing a case for the RIEC case meeting"),
        ),
        matching=Matching(min_parties=min_parties, identifier_types=IDENTIFIER_TYPES),
        visibility=(
            VisibilityRule(Role.RIEC, Level.CATEGORIES, coordinator=True),
            VisibilityRule(Role.LIEC, Level.COUNT, coordinator=True),
            VisibilityRule(Role.POLITIE, Level.CATEGORIES),
            VisibilityRule(Role.OM, Level.CATEGORIES),
            VisibilityRule(Role.FIOD, Level.CATEGORIES),
            VisibilityRule(Role.GEMEENTE, Level.CATEGORIES, hidden_roles=hidden),
            VisibilityRule(Role.BELASTINGDIENST, Level.CATEGORIES, hidden_roles=hidden),
            VisibilityRule(Role.WONINGCORPORATIE, Level.PARTIES, hidden_roles=hidden),
            VisibilityRule(Role.PROVINCIE, Level.COUNT, hidden_roles=hidden),
        ),
        release=(
            ReleaseRule(
                Role.GEMEENTE,
                ANY_CATEGORY,
                "bibob",
                ("naam", "omschrijving"),
                four_eyes=True,
                max_per_period=50,
                period_days=30,
            ),
            ReleaseRule(Role.GEMEENTE, "woonfraude", "adresfraude", ("naam", "adres")),
            ReleaseRule(
                Role.WONINGCORPORATIE, "woonfraude", "adresfraude", ("adres", "omschrijving")
            ),
            ReleaseRule(
                Role.RIEC,
                ANY_CATEGORY,
                "casusvoorbereiding",
                ("naam", "omschrijving", "dossier", "contactpersoon"),
            ),
        ),
        retention=Retention(default_days=365, categories=(("vastgoedmisbruik", 730),)),
        quotas=Quotas(oprf_evaluations_per_day=1_000_000, disclosure_requests_per_day=200),
        picture=PictureRules(viewers=(Role.RIEC,), min_cell_count=5),
        cases=CaseRules(coordinators=(Role.RIEC,)),
    )
