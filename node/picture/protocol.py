"""The regional picture's protocol (DESIGN flow 8) as plain functions: ask, decide, answer.

A viewer (a party whose role the covenant lists in ``[picture] viewers``,
usually the RIEC) asks every party for its counts; each node decides on its
own, under its own covenant, and answers with its counts or a refusal; the
viewer combines what arrived and applies disclosure control. The arithmetic is
:mod:`samenloop.node.picture.arithmetic`'s; this module is the messages around it.

* **Asking.** :func:`check_ask` refuses locally, naming the field, what no node
  would answer (not a viewer, bad period, unknown or repeated measures and
  dimensions). :func:`build_request` signs a ``PictureRequest`` (context
  ``picture-request``, the recipient as audience) and seals it to one party.
  Only the signal measures travel: case measures (opened, closed,
  interventions) are the coordinator's own records and are counted locally.
* **Deciding** (each contributor). :func:`decide` applies, in order: the
  request id not answered before (else REPLAY); the node fresh, i.e. holding an
  unexpired covenant timestamp for its version (else COVENANT_STALE: counts go
  out only while the membership is known to be current); the request for this covenant
  and a version not newer than the node's (else INVALID_REQUEST); the requester
  allowed to see the picture (else NOT_ALLOWED); a valid period, measures and
  dimensions (else INVALID_REQUEST); and, if the covenant sets a privacy budget,
  ``epsilon_per_request`` left on every month of the period (else
  BUDGET_EXHAUSTED, saying what is left). A request whose table would be larger
  than ``LIMITS_MAX_PICTURE_CELLS`` is refused after counting
  (INVALID_REQUEST, :func:`too_large`), spending nothing.
* **Answering.** :func:`count_tables` counts the node's facts, with noise where
  the covenant sets a budget; :func:`contribution` builds the signed answer.
* **Reading.** :func:`parse_contribution` checks an answer against the request
  it answers and against the viewer's covenant (the contributor's role, the role
  values in its tables, no negative exact count); :func:`table_from_proto` and
  :func:`released_to_proto` convert.
* **Secure aggregation** (issue 13). A contributor never sends its table: it encodes it
  over the request's public domain (:mod:`samenloop.node.picture.shares`) and splits it
  into two additive shares (:func:`shares_of`), the requester's in the contribution and
  the aggregator's in a ``PictureShare`` to the covenant's picture aggregator
  (:func:`aggregator_of`). The aggregator sums every share it holds for a request once the
  requester asks (:func:`decide_sum`: at least ``min_contributors``, never singling out a
  partner against the sums it gave before); the requester checks the sum
  (:func:`parse_sum`) and adds its own shares of exactly those contributors. A share or
  sum larger than one message travels as one message per part (``part=`` of
  :func:`contribution`, :func:`share_message`; :func:`sum_messages`), each part checked
  on arrival against what the receiver knows (``picture_shares.check_part``).
* **Periods in exact mode.** :func:`check_periods`: without a privacy budget, the
  periods collected of one measure must be equal or disjoint, so that no
  suppressed cell can be recovered by subtracting one period's figures from an
  overlapping period's (see ``docs/picture.md``).

Sans-IO: the store's facts come through :class:`ContributorFacts`, time and
randomness are arguments.

Over 800 lines: asking, deciding and answering share one message format, the domain and
the budget checks, as disclosure's protocol does.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Final, Protocol, TypeVar

from google.protobuf.message import DecodeError

from samenloop.node.daemon.envelopes import Envelope
from samenloop.node.daemon.envelopes import seal as _seal
from samenloop.node.picture import arithmetic as picture
from samenloop.node.picture import shares as picture_shares
from samenloop.node.picture.arithmetic import (
    BudgetExhausted,
    BudgetLedger,
    CaseFacts,
    Dimension,
    HitGroupFacts,
    Measure,
    Period,
    ReleasedTable,
    SignalFacts,
    Table,
)
from samenloop.node.picture.shares import Domain, Part
from samenloop.policies import crypto, rules
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import InvalidInput, MessageTooLarge, NotAllowed, SamenloopError
from samenloop.policies.times import received_time
from samenloop.v1 import common_pb2, picture_pb2

__all__ = [
    "CASE_MEASURES",
    "SIGNAL_MEASURES",
    "ContributorFacts",
    "IncomingPictureRequest",
    "PictureAsk",
    "PictureRefusal",
    "PictureVerdict",
    "PriorCollection",
    "ReceivedContribution",
    "build_request",
    "check_ask",
    "check_periods",
    "contribution",
    "count_tables",
    "decide",
    "parse_contribution",
    "parse_request",
    "released_from_proto",
    "released_to_proto",
    "table_from_proto",
    "table_to_proto",
    "too_large",
]

ID_BYTES: Final[int] = common_pb2.LIMITS_ID_BYTES
MAX_CLOCK_SKEW: Final = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
MAX_TEXT_BYTES: Final[int] = common_pb2.LIMITS_MAX_TEXT_BYTES
MAX_VALUE_CHARS: Final = 64
#: Counted by every party from its own signals and the hit groups it reports.
SIGNAL_MEASURES: Final = frozenset({Measure.ACTIVE_SIGNALS, Measure.HIT_GROUPS})
#: Counted by the viewer alone, from the cases it coordinates.
CASE_MEASURES: Final = frozenset(set(Measure) - SIGNAL_MEASURES)


class PictureRefusal(enum.StrEnum):
    """Why a node did not contribute (``samenloop.v1.PictureRefusalReason``)."""

    NOT_ALLOWED = "not_allowed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    INVALID_REQUEST = "invalid_request"
    REPLAY = "replay"
    COVENANT_STALE = "covenant_stale"

    def to_proto(self) -> picture_pb2.PictureRefusalReason.ValueType:
        return picture_pb2.PictureRefusalReason.Value(f"PICTURE_REFUSAL_REASON_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> PictureRefusal | None:
        try:
            name = picture_pb2.PictureRefusalReason.Name(value)  # type: ignore[arg-type]
        except ValueError:
            return None
        return next((r for r in cls if f"PICTURE_REFUSAL_REASON_{r.name}" == name), None)


# --- asking ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PictureAsk:
    """What a viewer asks for: a period, the measures and the dimensions of every table."""

    period: Period
    measures: tuple[Measure, ...]
    dimensions: tuple[Dimension, ...]
    #: The public domain the others' tables are shared over (from the request).
    domain: Domain | None = None

    @property
    def remote_measures(self) -> tuple[Measure, ...]:
        """The measures the other parties count (the signal measures)."""
        return tuple(m for m in self.measures if m in SIGNAL_MEASURES)

    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(m.value for m in self.measures), tuple(d.value for d in self.dimensions)


def check_ask(covenant: Covenant, me: str, ask: PictureAsk) -> None:
    """Refuse before anything is stored or sent: ``NotAllowed`` if this party may not see
    the picture, ``InvalidInput`` naming the field for measures and dimensions."""
    if not rules.may_see_picture(covenant, me):
        viewers = ", ".join(r.value for r in covenant.policy.picture.viewers)
        raise NotAllowed(
            f"the covenant lets only these roles see the picture: {viewers}",
            field="party",
            reason="picture.not_a_viewer",
        )
    picture.check_request(ask.measures, ask.dimensions)
    check_role_breakdown(covenant, ask)
    if ask.remote_measures:
        aggregator_of(covenant, viewer=me)
        domain = domain_of(covenant, ask)
        picture_shares.vector_length(
            domain, len(ask.remote_measures), exact=covenant.policy.picture.band_marks
        )


def check_role_breakdown(covenant: Covenant, ask: PictureAsk) -> None:
    """Refuse a breakdown of the partners' counts by role in exact mode: a role is mostly
    one partner's, so its cells would be that partner's own counts, which no party may
    learn (issue 13). Under a privacy budget each node's counts carry noise before they
    leave it, and the breakdown is allowed. ``InvalidInput`` naming ``dimensions``."""
    if (
        ask.remote_measures
        and Dimension.ROLE in ask.dimensions
        and not covenant.policy.picture.noisy
    ):
        raise InvalidInput(
            "a breakdown of the partners' counts by role would show each partner's own "
            "counts: without a privacy budget it is not offered (collect by another "
            "dimension, or set [picture] epsilon_per_period for noisy figures)",
            field="dimensions",
            reason="picture.role_exact",
        )


def aggregator_of(covenant: Covenant, *, viewer: str) -> str:
    """The party id of the covenant's picture aggregator: the one party whose role is
    ``[picture] aggregator``, not a viewer and not ``viewer``. ``InvalidInput`` (field
    ``picture.aggregator``) if the covenant names none, or its role is not exactly one
    party's: without an aggregator no partner's counts may leave its node."""
    role = covenant.policy.picture.aggregator
    if role is None:
        raise InvalidInput(
            "the covenant names no picture aggregator: set [picture] aggregator to the role "
            "of the party that sums the second shares (it must not be a viewer)",
            field="picture.aggregator",
            reason="picture.no_aggregator",
        )
    found = [p.id for p in covenant.parties if p.role is role]
    if len(found) != 1 or found[0] == viewer or rules.may_see_picture(covenant, found[0]):
        raise InvalidInput(
            f"the aggregator's role {role.value} must be held by exactly one party, "
            f"not a viewer ({len(found)} hold it)",
            field="picture.aggregator",
            reason="picture.no_aggregator",
        )
    return found[0]


def domain_of(covenant: Covenant, ask: PictureAsk) -> Domain:
    """The public domain a viewer asks the others' tables over (``Domain.of``)."""
    rule = covenant.policy.picture
    return Domain.of(
        ask.dimensions,
        period=ask.period,
        roles=[p.role.value for p in covenant.parties],
        categories=covenant.policy.categories,
        areas=rule.areas,
        branches=rule.branches,
    )


@dataclass(frozen=True, slots=True)
class PriorCollection:
    """A collection this viewer made before, as far as :func:`check_periods` needs it:
    its id, period and measures, and whether its figures are noisy (every figure it
    holds has noise), so that subtracting them reveals no exact count."""

    request_id: bytes
    period: Period
    measures: tuple[Measure, ...]
    noisy: bool = False


def check_periods(
    request_id: bytes | None,
    period: Period,
    measures: Iterable[Measure],
    prior: Iterable[PriorCollection],
) -> None:
    """Refuse, in exact mode, a period that overlaps the period of another collection of
    the same measure without being equal to it (``InvalidInput``, field ``period``,
    reason ``picture.overlapping_period``).

    Why: with Sep = 10 and Sep..Oct = 13 both released, Oct = 3 is released too,
    whatever a table of Oct suppresses. With periods of one measure equal or
    disjoint, every figure of a period is a sum of that period's own cells, and
    each table's complementary suppression (with its totals) covers them. A trend
    within a period is a table by month, protected as one table. ``request_id``
    is the collection being checked itself (skipped), ``None`` for a new one; noisy
    prior collections are skipped (their noise protects the difference).
    """
    wanted = set(measures)
    months = set(period.months())
    for other in prior:
        if other.request_id == request_id or other.noisy or other.period == period:
            continue
        shared = sorted(m.value for m in wanted.intersection(other.measures))
        if shared and months.intersection(other.period.months()):
            raise InvalidInput(
                f"{period} overlaps {other.period}, already collected of {', '.join(shared)}: "
                "without a privacy budget, periods of one measure must be equal or not "
                "overlap, or a suppressed cell could be worked out by subtracting one from "
                f"the other; ask for {other.period} again, for months outside it, or by "
                "month within one period",
                field="period",
                reason="picture.overlapping_period",
            )


def request_message(
    covenant: Covenant, requester: str, ask: PictureAsk, *, request_id: bytes, now: datetime
) -> picture_pb2.PictureRequest:
    """The ``PictureRequest`` for the other parties: the signal measures of ``ask``."""
    if len(request_id) != ID_BYTES:
        raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
    message = picture_pb2.PictureRequest(
        request_id=request_id,
        covenant_id=covenant.id,
        covenant_version=covenant.version,
        requester=requester,
        period=ask.period.to_proto(),
        measures=[m.to_proto() for m in ask.remote_measures],
        dimensions=[d.to_proto() for d in ask.dimensions],
        aggregator=aggregator_of(covenant, viewer=requester),
        domain=domain_of(covenant, ask).to_proto(),
    )
    message.issued_at.FromDatetime(now.astimezone(UTC))
    return message


def build_request(
    keys: PartyKeys,
    covenant: Covenant,
    request: picture_pb2.PictureRequest,
    *,
    recipient: str,
    message_id: bytes,
) -> Envelope:
    """The request signed by this node and sealed to ``recipient``."""
    return _seal(
        keys,
        covenant,
        recipient,
        SignatureContext.PICTURE_REQUEST,
        request.SerializeToString(),
        message_id,
    )


# --- deciding ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncomingPictureRequest:
    """A picture request whose seal and signature verified; its content is not yet judged."""

    request_id: bytes
    requester: str
    message: picture_pb2.PictureRequest


_Message = TypeVar(
    "_Message",
    picture_pb2.PictureRequest,
    picture_pb2.PictureShare,
    picture_pb2.PictureSumRequest,
    picture_pb2.PictureSum,
)


def _parsed(kind: type[_Message], body: bytes) -> _Message:
    """A verified body parsed as ``kind``, with a request id of the right length;
    ``InvalidInput`` naming the field otherwise."""
    message = kind()
    try:
        message.ParseFromString(body)
    except DecodeError as error:
        raise InvalidInput(f"not a {kind.__name__}", field="body") from error
    if len(message.request_id) != ID_BYTES:
        raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
    return message


def parse_request(body: bytes, *, sender: str) -> IncomingPictureRequest:
    """Parse a verified request body; ``InvalidInput`` if it cannot be answered at all
    (malformed, or another requester than its signer): then it is dropped."""
    message = _parsed(picture_pb2.PictureRequest, body)
    if message.requester != sender:
        raise InvalidInput("requester is not the signer", field="requester")
    return IncomingPictureRequest(bytes(message.request_id), sender, message)


class ContributorFacts(Protocol):
    """What :func:`decide` and :func:`count_tables` ask of a node's records."""

    def picture_answered(self, request_id: bytes, /) -> bool: ...

    def picture_ledger(self, months: Sequence[str], /) -> BudgetLedger: ...

    def picture_signal_facts(self, first_month: str, last_month: str) -> list[SignalFacts]: ...

    def picture_hit_group_facts(self, first_month: str, last_month: str) -> list[HitGroupFacts]: ...


@dataclass(frozen=True, slots=True)
class PictureVerdict:
    """A node's decision on a request: contribute (spending ``epsilon`` on each month of
    the period, or nothing if exact) or refuse with a reason and a message."""

    ask: PictureAsk | None
    refusal: PictureRefusal | None = None
    message: str = ""
    epsilon: float = 0.0
    epsilon_remaining: float = 0.0

    @property
    def spent_units(self) -> int:
        return round(self.epsilon * 1_000_000_000)


def _refuse(reason: PictureRefusal, message: str, ask: PictureAsk | None = None) -> PictureVerdict:
    return PictureVerdict(ask, reason, message)


def _ask_of(message: picture_pb2.PictureRequest) -> PictureAsk:
    period = Period.from_proto(message.period)
    measures = tuple(
        Measure.from_proto(m, field=f"measures[{i}]") for i, m in enumerate(message.measures)
    )
    dimensions = tuple(
        Dimension.from_proto(d, field=f"dimensions[{i}]") for i, d in enumerate(message.dimensions)
    )
    picture.check_request(measures, dimensions)
    domain = Domain.from_proto(message.domain, dimensions)
    return PictureAsk(period, measures, dimensions, domain)


def decide(
    covenant: Covenant,
    me: str,
    request: IncomingPictureRequest,
    facts: ContributorFacts,
    *,
    now: datetime,
    stale: str | None = None,
) -> PictureVerdict:
    """Decide a request at a contributor (the rules, in order, in the module's docstring);
    ``stale`` says why the node is stale, None while it is fresh."""
    message = request.message
    if facts.picture_answered(request.request_id):
        return _refuse(PictureRefusal.REPLAY, "this request id was answered before")
    if stale is not None:
        return _refuse(PictureRefusal.COVENANT_STALE, stale)
    if message.covenant_id != covenant.id or message.covenant_version > covenant.version:
        return _refuse(
            PictureRefusal.INVALID_REQUEST,
            f"this node holds covenant {covenant.id} version {covenant.version}; "
            "retry once it has caught up",
        )
    if not rules.may_see_picture(covenant, request.requester):
        return _refuse(
            PictureRefusal.NOT_ALLOWED,
            "the covenant does not let the requester's role see the picture",
        )
    try:
        aggregator = aggregator_of(covenant, viewer=request.requester)
    except InvalidInput as error:
        return _refuse(PictureRefusal.INVALID_REQUEST, f"{error.field}: {error.message}")
    if message.aggregator != aggregator:
        return _refuse(
            PictureRefusal.INVALID_REQUEST,
            "aggregator: not the party this node's covenant names as the picture aggregator",
        )
    if not message.HasField("issued_at"):
        return _refuse(PictureRefusal.INVALID_REQUEST, "issued_at: missing")
    try:
        issued_at = received_time(message.issued_at, field="issued_at", reason="picture.time")
    except InvalidInput as error:
        return _refuse(PictureRefusal.INVALID_REQUEST, f"{error.field}: {error.message}")
    if issued_at > now + MAX_CLOCK_SKEW:
        return _refuse(PictureRefusal.INVALID_REQUEST, "issued_at: in the future")
    try:
        ask = _ask_of(message)
    except SamenloopError as error:
        return _refuse(PictureRefusal.INVALID_REQUEST, f"{error.field}: {error.message}")
    if not set(ask.measures) <= SIGNAL_MEASURES:
        return _refuse(
            PictureRefusal.INVALID_REQUEST,
            "only active_signals and hit_groups are counted by contributors",
            ask,
        )
    try:  # a viewer may seal a request by hand: each contributor checks for itself
        check_role_breakdown(covenant, ask)
    except InvalidInput as error:
        return _refuse(PictureRefusal.INVALID_REQUEST, f"{error.field}: {error.message}", ask)
    rule = covenant.policy.picture
    assert ask.domain is not None  # _ask_of reads it
    try:
        picture_shares.vector_length(ask.domain, len(ask.measures), exact=rule.band_marks)
    except MessageTooLarge as error:
        return too_large(ask, error)
    if not rule.noisy:
        return PictureVerdict(ask)
    ledger = facts.picture_ledger(ask.period.months())
    try:
        after = ledger.spend(
            ask.period, rule.epsilon_per_request, budget_per_period=rule.epsilon_per_period
        )
    except BudgetExhausted as error:
        return _refuse(PictureRefusal.BUDGET_EXHAUSTED, error.message, ask)
    remaining = after.remaining(ask.period, budget_per_period=rule.epsilon_per_period)
    return PictureVerdict(ask, epsilon=rule.epsilon_per_request, epsilon_remaining=remaining)


def too_large(ask: PictureAsk | None, error: MessageTooLarge) -> PictureVerdict:
    """The refusal of a request whose table would have more cells than a contribution may
    carry (``LIMITS_MAX_PICTURE_CELLS``): INVALID_REQUEST, spending no budget."""
    return _refuse(
        PictureRefusal.INVALID_REQUEST,
        f"the table is too large: {error.message}",
        ask,
    )


# --- answering ---------------------------------------------------------------------------


def count_tables(
    covenant: Covenant,
    me: str,
    ask: PictureAsk,
    *,
    signals: Sequence[SignalFacts] = (),
    hit_groups: Sequence[HitGroupFacts] = (),
    cases: Sequence[CaseFacts] = (),
    epsilon: float = 0.0,
    rng: random.Random | None = None,
) -> list[Table]:
    """This node's table per measure of ``ask``: exact, or with noise when ``epsilon``
    (the request's share of the budget) is set, split evenly over the tables."""
    role = covenant.role_of(me).value
    facts: list[picture.Facts] = [*signals, *hit_groups, *cases]
    tables = [
        picture.count(m, ask.dimensions, facts, role=role, period=ask.period) for m in ask.measures
    ]
    if epsilon <= 0:
        return tables
    share = picture.split_epsilon(epsilon, len(tables))
    if ask.domain is not None:  # every cell of the shared domain gets noise, zeros too
        domain: dict[Dimension, tuple[str, ...]] = dict(
            zip(ask.domain.dimensions, ask.domain.axes, strict=True)
        )
    else:
        domain = picture.public_domain(
            ask.dimensions, period=ask.period, role=role, categories=covenant.policy.categories
        )
    return [picture.add_noise(t, epsilon=share, domain=domain, rng=rng) for t in tables]


def table_to_proto(table: Table) -> picture_pb2.PictureTable:
    """A contribution's table on the wire: every cell it holds, exact or noisy."""
    quality = picture.CellQuality.NOISY if table.noisy else picture.CellQuality.EXACT
    message = picture_pb2.PictureTable(
        period=table.period.to_proto(),
        measure=table.measure.to_proto(),
        dimensions=[d.to_proto() for d in table.dimensions],
    )
    for key, value in table.items():
        message.cells.add(
            values=list(key),
            count=value,
            quality=quality.to_proto(),
            noise_scale=table.noise_scale,
        )
    return message


def table_from_proto(
    message: picture_pb2.PictureTable,
    ask: PictureAsk,
    *,
    field: str = "tables",
    role: str | None = None,
) -> Table:
    """A contribution's table, checked against what was asked: its period, a measure
    asked for, the dimensions in order, one short value per dimension in every cell,
    at most ``LIMITS_MAX_PICTURE_CELLS`` cells (else ``MessageTooLarge``). With
    ``role`` (the contributor's role in the viewer's covenant) also: every value of
    the role dimension is that role, and an exact table (no noise) has no negative
    count. ``InvalidInput`` naming the field otherwise."""
    if Period.from_proto(message.period, field=f"{field}.period") != ask.period:
        raise InvalidInput("the table counts another period", field=f"{field}.period")
    measure = Measure.from_proto(message.measure, field=f"{field}.measure")
    dims = tuple(Dimension.from_proto(d, field=f"{field}.dimensions") for d in message.dimensions)
    if dims != ask.dimensions:
        raise InvalidInput("the table has other dimensions", field=f"{field}.dimensions")
    if len(message.cells) > picture.MAX_CELLS:
        raise MessageTooLarge(
            f"a table has at most {picture.MAX_CELLS} cells, this one {len(message.cells)}",
            field=f"{field}.cells",
            reason="picture.too_large",
        )
    at_role = dims.index(Dimension.ROLE) if Dimension.ROLE in dims else None
    cells: dict[tuple[str, ...], int] = {}
    scale = 0.0
    for i, cell in enumerate(message.cells):
        values = tuple(cell.values)
        if len(values) != len(dims):
            raise InvalidInput(
                f"a cell needs {len(dims)} values", field=f"{field}.cells[{i}].values"
            )
        if any(len(v) > MAX_VALUE_CHARS for v in values):
            raise InvalidInput("a cell value is too long", field=f"{field}.cells[{i}].values")
        if role is not None and at_role is not None and values[at_role] != role:
            raise InvalidInput(
                "a role value is not the contributor's role",
                field=f"{field}.cells[{i}].values",
                reason="picture.role",
            )
        if not cell.HasField("count") or values in cells:
            raise InvalidInput("a cell without a count, or twice", field=f"{field}.cells[{i}]")
        if not (cell.noise_scale >= 0 and math.isfinite(cell.noise_scale)):
            raise InvalidInput("must be >= 0", field=f"{field}.cells[{i}].noise_scale")
        cells[values] = cell.count
        scale = max(scale, cell.noise_scale)
    if role is not None and scale == 0 and any(v < 0 for v in cells.values()):
        raise InvalidInput(
            "an exact count is negative", field=f"{field}.cells.count", reason="picture.count"
        )
    return Table(measure, dims, ask.period, cells, noise_scale=scale)


def contribution(
    covenant: Covenant,
    me: str,
    request_id: bytes,
    verdict: PictureVerdict,
    tables: Sequence[Table],
    *,
    period: picture_pb2.Period,
    now: datetime,
    share: bytes | None = None,
    part: Part | None = None,
) -> picture_pb2.PictureContribution:
    """The answer to a request: the refusal, or the requester's ``share`` of the tables
    (what is sent), or the tables themselves (the viewer's own contribution, kept at
    its own node). With ``part`` (a share of more than one part), ``share`` is ignored:
    the message carries that part (:func:`picture_shares.split`)."""
    message = picture_pb2.PictureContribution(
        request_id=request_id,
        contributor=me,
        contributor_role=covenant.role_of(me).value if covenant.is_party(me) else "",
        period=period,
    )
    message.issued_at.FromDatetime(now.astimezone(UTC))
    if verdict.refusal is not None:
        message.refusal.reason = verdict.refusal.to_proto()
        message.refusal.message = verdict.message[:MAX_TEXT_BYTES]
        return message
    if part is not None:
        message.share = part.data
        if part.count > 1:
            message.part.CopyFrom(part.to_proto())
    elif share is None:
        message.tables.extend(table_to_proto(t) for t in tables)
    else:
        message.share = share
    message.epsilon_spent = verdict.epsilon
    message.epsilon_remaining = verdict.epsilon_remaining
    return message


def seal_contribution(
    keys: PartyKeys,
    covenant: Covenant,
    message: picture_pb2.PictureContribution,
    *,
    requester: str,
    message_id: bytes,
) -> Envelope:
    """The answer signed by this node and sealed to the requester."""
    return _seal(
        keys,
        covenant,
        requester,
        SignatureContext.PICTURE_CONTRIBUTION,
        message.SerializeToString(),
        message_id,
    )


# --- reading answers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class ReceivedContribution:
    """A contribution whose seal and signature verified, read against its request."""

    request_id: bytes
    contributor: str
    contributor_role: str
    refusal: PictureRefusal | None
    message: str
    tables: tuple[Table, ...]
    epsilon_spent: float
    #: The requester's share of the contributor's vector (empty for its own or a refusal);
    #: with ``part``, only that part of it.
    share: bytes = b""
    part: Part | None = None

    def __repr__(self) -> str:
        return f"ReceivedContribution(contributor={self.contributor!r}, refusal={self.refusal})"


def read_contribution(message: picture_pb2.PictureContribution) -> tuple[bytes, str]:
    """The request id and contributor of a contribution, before its request is looked up."""
    if len(message.request_id) != ID_BYTES:
        raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
    return bytes(message.request_id), message.contributor


def _part_of(
    message: picture_pb2.PictureContribution | picture_pb2.PictureShare | picture_pb2.PictureSum,
    data: bytes,
    *,
    values: int | None,
) -> Part | None:
    """The part a message's vector is, checked (``picture_shares.check_part``: ``values``
    is the whole vector's length when the receiver knows it); None for a whole vector.
    A part that says it is the only one is refused: a whole vector travels without one."""
    if not message.HasField("part"):
        return None
    part = Part.from_proto(message.part, data)
    picture_shares.check_part(part, values=values)
    if part.count == 1:
        raise InvalidInput("a vector of one part travels without a part", field="part.count")
    return part


def parse_contribution(
    message: picture_pb2.PictureContribution,
    ask: PictureAsk,
    *,
    sender: str,
    role: str,
    measures: Sequence[Measure] | None = None,
    share_values: int | None = None,
) -> ReceivedContribution:
    """Check a contribution against the request it answers: from its signer, with the
    role ``role`` that the viewer's covenant gives the signer (as ``contributor_role``
    and as every value of the role dimension), a refusal with a known reason or one
    table per measure asked of it, no negative exact count; ``InvalidInput`` naming the
    field if not (``MessageTooLarge`` for a table of too many cells). ``measures``: the
    tables expected, by default the signal measures asked (the viewer's own
    contribution also counts the case measures). ``share_values``: a partner's
    contribution carries no table but the requester's share of its vector, of this many
    values (its own contribution is read with None)."""
    request_id, contributor = read_contribution(message)
    if contributor != sender:
        raise InvalidInput("contributor is not the signer", field="contributor")
    if message.contributor_role != role:
        raise InvalidInput(
            f"the covenant gives {sender} the role {role!r}, the contribution says "
            f"{message.contributor_role[:MAX_VALUE_CHARS]!r}",
            field="contributor_role",
            reason="picture.role",
        )
    if message.HasField("refusal"):
        reason = PictureRefusal.from_proto(message.refusal.reason)
        if reason is None:
            raise InvalidInput("unknown refusal reason", field="refusal.reason")
        return ReceivedContribution(
            request_id,
            contributor,
            message.contributor_role,
            reason,
            message.refusal.message[:MAX_TEXT_BYTES],
            (),
            0.0,
        )
    if not message.epsilon_spent >= 0:
        raise InvalidInput("must be >= 0", field="epsilon_spent")
    if share_values is not None:
        if message.tables:
            raise InvalidInput(
                "a partner's counts travel only as shares, never as a table",
                field="tables",
                reason="picture.plain_counts",
            )
        part = _part_of(message, bytes(message.share), values=share_values)
        if part is None and len(message.share) != share_values * crypto.SHARE_WORD_BYTES:
            raise InvalidInput(
                f"the share has {share_values} values of {crypto.SHARE_WORD_BYTES} bytes",
                field="share",
            )
        return ReceivedContribution(
            request_id,
            contributor,
            message.contributor_role,
            None,
            "",
            (),
            float(message.epsilon_spent),
            bytes(message.share),
            part,
        )
    tables = tuple(
        table_from_proto(t, ask, field=f"tables[{i}]", role=role)
        for i, t in enumerate(message.tables)
    )
    expected = ask.remote_measures if measures is None else measures
    if sorted(t.measure for t in tables) != sorted(expected):
        raise InvalidInput("not one table per measure asked", field="tables")
    return ReceivedContribution(
        request_id,
        contributor,
        message.contributor_role,
        None,
        "",
        tables,
        float(message.epsilon_spent),
    )


def released_to_proto(table: ReleasedTable) -> picture_pb2.PictureTable:
    """A released table as ``PictureShow`` returns it: suppressed cells without a count."""
    message = picture_pb2.PictureTable(
        period=table.period.to_proto(),
        measure=table.measure.to_proto(),
        dimensions=[d.to_proto() for d in table.dimensions],
    )
    for cell in table.cells:
        shown = message.cells.add(
            values=list(cell.values),
            quality=cell.quality.to_proto(),
            noise_scale=cell.noise_scale,
        )
        if cell.count is not None:
            shown.count = cell.count
        if cell.reason is not None:
            shown.suppression = cell.reason.to_proto()
    return message


def released_from_proto(message: picture_pb2.PictureTable, *, min_count: int = 0) -> ReleasedTable:
    """A table as ``PictureShow`` returned it, for the client and the report."""
    measure = Measure.from_proto(message.measure, field="table.measure")
    dims = tuple(Dimension.from_proto(d, field="table.dimensions") for d in message.dimensions)
    period = Period.from_proto(message.period, field="table.period")
    cells = tuple(
        picture.ReleasedCell(
            tuple(c.values),
            c.count if c.HasField("count") else None,
            picture.CellQuality.from_proto(c.quality),
            c.noise_scale,
            picture.SuppressionReason.from_proto(c.suppression),
        )
        for c in message.cells
    )
    last = {picture.UNKNOWN: 1, picture.OTHER: 2}
    axes = tuple(
        tuple(
            sorted(
                {c.values[i] for c in cells if c.values[i] != picture.TOTAL},
                key=lambda v: (last.get(v, 0), v),
            )
        )
        for i in range(len(dims))
    )
    totals = tuple(
        d for i, d in enumerate(dims) if any(c.values[i] == picture.TOTAL for c in cells)
    )
    return ReleasedTable(measure, dims, period, axes, cells, min_count, totals)


# --- secure aggregation (issue 13) --------------------------------------------------------


def shares_of(tables: Sequence[Table], ask: PictureAsk, *, exact: bool) -> tuple[bytes, bytes]:
    """A contributor's tables as a vector over the request's domain, split into the
    requester's share and the aggregator's (``crypto.additive_shares``)."""
    if ask.domain is None:
        raise InvalidInput("the request has no domain", field="domain")
    vector = picture_shares.encode(tables, ask.domain, ask.measures, exact=exact)
    return crypto.additive_shares(vector)


def request_digest(ask: PictureAsk, *, exact: bool) -> bytes:
    """What binds a share to the layout of one request's vector."""
    if ask.domain is None:
        raise InvalidInput("the request has no domain", field="domain")
    return ask.domain.digest(ask.period, ask.measures, exact=exact)


def share_message(
    request_id: bytes,
    me: str,
    requester: str,
    digest: bytes,
    share: bytes,
    *,
    period: Period,
    now: datetime,
    part: Part | None = None,
) -> picture_pb2.PictureShare:
    """The aggregator's share of this node's contribution; with ``part`` (a share of more
    than one part), that part of it, ``share`` ignored."""
    message = picture_pb2.PictureShare(
        request_id=request_id,
        contributor=me,
        requester=requester,
        request_digest=digest,
        share=share if part is None else part.data,
        period=period.to_proto(),
    )
    if part is not None and part.count > 1:
        message.part.CopyFrom(part.to_proto())
    message.issued_at.FromDatetime(now.astimezone(UTC))
    return message


@dataclass(frozen=True, slots=True, repr=False)
class IncomingShare:
    """A share whose seal and signature verified, checked by the aggregator."""

    request_id: bytes
    contributor: str
    requester: str
    digest: bytes
    share: bytes
    period: Period
    #: Which part of the share ``share`` is; None for the whole share.
    part: Part | None = None

    def __repr__(self) -> str:
        return f"IncomingShare(contributor={self.contributor!r})"


def parse_share(body: bytes, *, sender: str, covenant: Covenant, me: str) -> IncomingShare:
    """A share as the aggregator keeps it: from its signer, for a requester the covenant
    lets see the picture, at this node as the covenant's aggregator, of a bounded
    length; ``InvalidInput`` naming the field otherwise (then it is dropped)."""
    message = _parsed(picture_pb2.PictureShare, body)
    if message.contributor != sender:
        raise InvalidInput("contributor is not the signer", field="contributor")
    if not rules.may_see_picture(covenant, message.requester):
        raise NotAllowed("the requester may not see the picture", field="requester")
    if message.requester == sender:
        raise InvalidInput("a viewer does not share its own counts", field="contributor")
    if aggregator_of(covenant, viewer=message.requester) != me:
        raise NotAllowed("this node is not the covenant's picture aggregator", field="aggregator")
    if len(message.request_digest) != 32:
        raise InvalidInput("a SHA-256 digest is 32 bytes", field="request_digest")
    size = len(message.share)
    part = _part_of(message, bytes(message.share), values=None)
    if part is None and (
        not 0 < size <= picture_shares.MAX_VALUES * crypto.SHARE_WORD_BYTES
        or size % crypto.SHARE_WORD_BYTES
    ):
        raise InvalidInput("not a shared vector of a bounded length", field="share")
    period = Period.from_proto(message.period, field="period")
    return IncomingShare(
        bytes(message.request_id),
        sender,
        message.requester,
        bytes(message.request_digest),
        bytes(message.share),
        period,
        part,
    )


def sum_request_message(
    request_id: bytes, me: str, contributors: Sequence[str], *, now: datetime
) -> picture_pb2.PictureSumRequest:
    """The viewer's one question to the aggregator for a request."""
    message = picture_pb2.PictureSumRequest(
        request_id=request_id, requester=me, contributors=sorted(contributors)
    )
    message.issued_at.FromDatetime(now.astimezone(UTC))
    return message


@dataclass(frozen=True, slots=True)
class IncomingSumRequest:
    """A viewer's request for a sum, its seal and signature verified."""

    request_id: bytes
    requester: str
    contributors: tuple[str, ...]


def parse_sum_request(
    body: bytes, *, sender: str, covenant: Covenant, me: str
) -> IncomingSumRequest:
    """Check a sum request at the aggregator: from a viewer, for itself, at this node as
    the aggregator, listing distinct parties; ``InvalidInput``/``NotAllowed`` naming the
    field otherwise."""
    message = _parsed(picture_pb2.PictureSumRequest, body)
    if message.requester != sender:
        raise InvalidInput("requester is not the signer", field="requester")
    if not rules.may_see_picture(covenant, sender):
        raise NotAllowed("the requester may not see the picture", field="requester")
    if aggregator_of(covenant, viewer=sender) != me:
        raise NotAllowed("this node is not the covenant's picture aggregator", field="aggregator")
    listed = tuple(message.contributors)
    if len(set(listed)) != len(listed) or len(listed) > common_pb2.LIMITS_MAX_PARTIES:
        raise InvalidInput("distinct parties, at most the covenant's", field="contributors")
    return IncomingSumRequest(bytes(message.request_id), sender, listed)


@dataclass(frozen=True, slots=True, repr=False)
class HeldShare:
    """A share the aggregator holds for a request."""

    contributor: str
    digest: bytes
    share: bytes

    def __repr__(self) -> str:
        return f"HeldShare(contributor={self.contributor!r})"


@dataclass(frozen=True, slots=True, repr=False)
class SumVerdict:
    """The aggregator's answer to a sum request: the sum over ``contributors``, or a
    refusal with its reason and message."""

    contributors: tuple[str, ...] = ()
    digest: bytes = b""
    total: bytes = b""
    refusal: PictureRefusal | None = None
    message: str = ""

    def __repr__(self) -> str:
        return f"SumVerdict(contributors={self.contributors!r}, refusal={self.refusal})"


@dataclass(frozen=True, slots=True)
class PastSum:
    """A sum the aggregator gave the same viewer before: over which parties, for which
    months (exact mode)."""

    contributors: frozenset[str]
    months: frozenset[str]


def _rank(rows: Sequence[Sequence[int]]) -> int:
    """The rank over the rationals of a few 0/1 rows (Gaussian elimination, exact)."""
    work = [[Fraction(v) for v in row] for row in rows]
    rank = 0
    for col in range(len(work[0]) if work else 0):
        pivot = next((i for i in range(rank, len(work)) if work[i][col] != 0), None)
        if pivot is None:
            continue
        work[rank], work[pivot] = work[pivot], work[rank]
        for i in range(len(work)):
            if i != rank and work[i][col] != 0:
                f = work[i][col] / work[rank][col]
                work[i] = [x - f * y for x, y in zip(work[i], work[rank], strict=True)]
        rank += 1
    return rank


def singled_out(
    chosen: frozenset[str], months: Iterable[str], past: Sequence[PastSum]
) -> tuple[str, str] | None:
    """A (month, party) whose own counts the sum over ``chosen`` would give away together
    with the ``past`` sums of that month: the party's indicator vector lies in the span of
    the sets summed (say {A, B, C} then {A, B}: their difference is C). None if none."""
    for month in sorted(set(months)):
        sets = [p.contributors for p in past if month in p.months]
        if not sets:
            continue
        sets.append(chosen)
        parties = sorted(set().union(*sets))
        rows = [[int(party in s) for party in parties] for s in sets]
        base = _rank(rows)
        for i, party in enumerate(parties):
            unit = [int(j == i) for j in range(len(parties))]
            if _rank([*rows, unit]) == base:
                return month, party
    return None


def decide_sum(
    covenant: Covenant,
    request: IncomingSumRequest,
    held: Sequence[HeldShare],
    *,
    months: Sequence[str] = (),
    past: Sequence[PastSum] = (),
) -> SumVerdict | None:
    """The aggregator's decision, once it holds a share of every contributor the viewer
    lists (None: wait for the rest). The viewer chooses when, not whom: the sum is over
    every share held for the request, from parties other than the viewer, of one layout
    (digest). Refused (INVALID_REQUEST): fewer than the covenant's ``[picture]
    min_contributors`` (a sum over one contributor is its table); and, in exact mode, a
    set that with the ``past`` sums this viewer got for a month of the period (``months``)
    would single out one party (:func:`singled_out`). That it answers each request id
    once is the store's (``picture_sums``)."""
    rule = covenant.policy.picture
    minimum = rule.min_contributors
    by_party = {h.contributor: h for h in held if h.contributor != request.requester}
    wanted = [c for c in request.contributors if c != request.requester]
    if len(wanted) < minimum:
        return SumVerdict(
            refusal=PictureRefusal.INVALID_REQUEST,
            message=f"contributors: {len(wanted)} listed, the covenant needs at least "
            f"{minimum} other than the viewer",
        )
    if any(c not in by_party for c in wanted):
        return None
    chosen = [by_party[c] for c in sorted(by_party)]
    digests = {h.digest for h in chosen}
    lengths = {len(h.share) for h in chosen}
    if len(digests) != 1 or len(lengths) != 1:
        return SumVerdict(
            refusal=PictureRefusal.INVALID_REQUEST,
            message="contributors: their shares are of different requests",
        )
    parties = frozenset(h.contributor for h in chosen)
    if not rule.noisy:
        found = singled_out(parties, months, past)
        if found is not None:
            return SumVerdict(
                refusal=PictureRefusal.INVALID_REQUEST,
                message=f"contributors: with a sum given before for {found[0]}, this one "
                "would single out one partner's counts; collect again when the same "
                "partners answer",
            )
    length = lengths.pop() // crypto.SHARE_WORD_BYTES
    total = crypto.add_shares((h.share for h in chosen), length=length)
    return SumVerdict(tuple(h.contributor for h in chosen), digests.pop(), total)


def sum_messages(
    request_id: bytes, me: str, verdict: SumVerdict, *, now: datetime
) -> list[picture_pb2.PictureSum]:
    """The aggregator's answer as it travels: one message (a refusal, or a sum that fits
    one), or one per part of a larger sum (``picture_shares.split``)."""
    if verdict.refusal is not None:
        return [sum_message(request_id, me, verdict, now=now)]
    parts = picture_shares.split(verdict.total)
    return [
        sum_message(request_id, me, verdict, now=now, part=p if len(parts) > 1 else None)
        for p in parts
    ]


def sum_message(
    request_id: bytes,
    me: str,
    verdict: SumVerdict,
    *,
    now: datetime,
    part: Part | None = None,
) -> picture_pb2.PictureSum:
    """The aggregator's signed answer (sum or refusal); with ``part``, that part of the
    sum."""
    message = picture_pb2.PictureSum(request_id=request_id, aggregator=me)
    message.issued_at.FromDatetime(now.astimezone(UTC))
    if verdict.refusal is not None:
        message.refusal.reason = verdict.refusal.to_proto()
        message.refusal.message = verdict.message[:MAX_TEXT_BYTES]
        return message
    message.contributors.extend(verdict.contributors)
    message.request_digest = verdict.digest
    if part is None:
        message.sum = verdict.total
    else:
        message.sum = part.data
        message.part.CopyFrom(part.to_proto())
    return message


@dataclass(frozen=True, slots=True, repr=False)
class ReceivedSum:
    """The aggregator's answer as the viewer checked it."""

    request_id: bytes
    contributors: tuple[str, ...]
    total: bytes
    refusal: PictureRefusal | None
    message: str
    #: Which part of the sum ``total`` is; None for the whole sum.
    part: Part | None = None

    def __repr__(self) -> str:
        return f"ReceivedSum(contributors={self.contributors!r}, refusal={self.refusal})"


def read_sum(body: bytes) -> picture_pb2.PictureSum:
    message = _parsed(picture_pb2.PictureSum, body)
    return message


def parse_sum(
    message: picture_pb2.PictureSum,
    *,
    sender: str,
    aggregator: str,
    me: str,
    digest: bytes,
    values: int,
    held: Sequence[str],
    min_contributors: int,
) -> ReceivedSum:
    """Check the aggregator's answer at the viewer: from the aggregator the request
    named, a refusal, or a sum of the request's layout and length over at least
    ``min_contributors`` distinct parties other than the viewer, each of whom the viewer
    holds a share of (``held``): it refuses rather than guesses (``InvalidInput`` naming
    the field)."""
    if sender != aggregator or message.aggregator != sender:
        raise InvalidInput("not from the request's aggregator", field="aggregator")
    if message.HasField("refusal"):
        reason = PictureRefusal.from_proto(message.refusal.reason)
        if reason is None:
            raise InvalidInput("unknown refusal reason", field="refusal.reason")
        return ReceivedSum(
            bytes(message.request_id), (), b"", reason, message.refusal.message[:MAX_TEXT_BYTES]
        )
    listed = tuple(message.contributors)
    if len(set(listed)) != len(listed) or me in listed:
        raise InvalidInput("distinct parties other than the viewer", field="contributors")
    if len(listed) < min_contributors:
        raise InvalidInput(
            f"fewer than the covenant's {min_contributors} contributors", field="contributors"
        )
    lacking = [c for c in listed if c not in held]
    if lacking:
        raise InvalidInput(
            f"the viewer holds no share of {', '.join(lacking)[:MAX_TEXT_BYTES]}: refused, "
            "not guessed",
            field="contributors",
        )
    if message.request_digest != digest:
        raise InvalidInput("a sum of another request", field="request_digest")
    part = _part_of(message, bytes(message.sum), values=values)
    if part is None and len(message.sum) != values * crypto.SHARE_WORD_BYTES:
        raise InvalidInput("the sum has another length than the request's", field="sum")
    return ReceivedSum(bytes(message.request_id), listed, bytes(message.sum), None, "", part)


def seal_message(
    keys: PartyKeys,
    covenant: Covenant,
    context: SignatureContext,
    body: bytes,
    *,
    recipient: str,
    message_id: bytes,
) -> Envelope:
    """A share, sum request or sum signed by this node and sealed to ``recipient``."""
    return _seal(keys, covenant, recipient, context, body, message_id)
