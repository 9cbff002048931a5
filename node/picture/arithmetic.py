"""The regional picture's arithmetic (integraal ondermijningsbeeld): count, noise, combine, release.

Sans-IO: the protocol hands in facts read from the store, the period, the
covenant's disclosure rules and (for tests) a random generator; nothing here
reads a clock, a database or the network.

The flow at one node is ``count`` → ``add_noise`` (only where the covenant sets a
privacy budget, after ``BudgetLedger.spend`` allowed it) → contribution; at the
requester it is ``combine`` → ``with_totals`` → ``release``.

Choices that protect people rather than tables:

* **Sensitivity 1 per table.** One signal (or hit group, case event) lies in
  exactly one cell of a table, so adding or removing it changes the table by 1
  in L1 norm. A request for several tables spends ``split_epsilon`` of its
  budget on each (basic composition).
* **Noise on zeros too.** Releasing noise only on the cells a node holds would
  reveal which cells are non-zero. ``add_noise`` therefore noises every cell of
  the *public domain* it is given (categories from the covenant, the period's
  months, the node's own role, the intervention types, and, where the requester
  supplies one, a list of areas or branches); values outside a given domain are
  counted under ``"overig"``. A node cannot know the full domain of areas and
  branches by itself: for those dimensions without a given domain it noises the
  values it holds, which protects every count but does reveal *which* areas or
  branches the node holds at least one signal in. Give a domain to hide that.
* **Noisy counts stay signed.** A contribution carries noisy counts as drawn,
  negatives included, so that sums stay unbiased. ``release`` shows noisy
  figures clamped at 0 and decides suppression on the unclamped value.
* **Zeros are released.** An exact 0 is not a small cell: 0 < count < min_count
  is suppressed, 0 and counts >= min_count are shown.
* **Complementary suppression** keeps every suppressed cell undetermined by the
  released cells and totals: no line (all cells that differ in one dimension,
  with its total) has exactly one suppressed cell, and a final linear-algebra
  check over the rationals suppresses more until no suppressed cell is a
  linear function of released figures.

Over 800 lines: counting, noise, the budget and disclosure control all work on the one
``Table`` type, and ``make mutate`` measures them as one core.
"""

from __future__ import annotations

import enum
import itertools
import math
import operator
import random
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from samenloop.policies.errors import InvalidInput, MessageTooLarge, QuotaExceeded
from samenloop.v1 import case_pb2, common_pb2, picture_pb2

__all__ = [
    "CUBE_DIMENSIONS",
    "MAX_CELLS",
    "MAX_MONTHS",
    "OTHER",
    "TOTAL",
    "UNKNOWN",
    "BudgetExhausted",
    "BudgetLedger",
    "CaseEvent",
    "CaseFacts",
    "CellFacts",
    "CellQuality",
    "Dimension",
    "Facts",
    "HitGroupFacts",
    "Key",
    "Measure",
    "NoisyTable",
    "Period",
    "ReleasedCell",
    "ReleasedTable",
    "SensitivityRules",
    "SignalFacts",
    "SuppressionReason",
    "Table",
    "add_noise",
    "area_value",
    "check_request",
    "combine",
    "count",
    "cube_dimensions",
    "discrete_laplace_sd",
    "primary_sensitive",
    "public_domain",
    "release",
    "split_epsilon",
    "view",
    "with_totals",
]

#: The value of an area, branch or intervention type that a fact does not have;
#: it still counts, so that the totals are the totals.
UNKNOWN: Final = "onbekend"
#: The value of a dimension in a marginal total (row/column "totaal").
TOTAL: Final = "totaal"
#: Values outside a given public domain are counted under this one.
OTHER: Final = "overig"
#: A period spans at most this many months (three years of trend).
MAX_MONTHS: Final = 36
#: At most this many cells per table, on the wire and in a release.
MAX_CELLS: Final = common_pb2.LIMITS_MAX_PICTURE_CELLS

_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_RESERVED = frozenset({TOTAL})
# Amounts of epsilon are kept in integer units of 1e-9 so that the ledger adds exactly.
_EPSILON_UNITS: Final = 1_000_000_000


# --- dimensions, measures, qualities --------------------------------------------------


class Dimension(enum.StrEnum):
    """A coarse attribute a table is broken down by (``samenloop.v1.PictureDimension``)."""

    AREA = "area"
    BRANCH = "branch"
    CATEGORY = "category"
    ROLE = "role"
    MONTH = "month"
    INTERVENTION_TYPE = "intervention_type"

    def to_proto(self) -> picture_pb2.PictureDimension.ValueType:
        return _DIMENSION_TO_PROTO[self]

    @classmethod
    def from_proto(
        cls, value: picture_pb2.PictureDimension.ValueType | int, *, field: str = "dimensions"
    ) -> Dimension:
        """The dimension for a proto enum value; ``InvalidInput`` for unspecified or unknown."""
        try:
            return _DIMENSION_FROM_PROTO[int(value)]
        except KeyError:
            raise InvalidInput(
                "unknown picture dimension", field=field, reason="picture.dimension"
            ) from None

    @classmethod
    def parse(cls, text: str, *, field: str = "dimensions") -> Dimension:
        """A dimension by name (``"area"``), as the CLI takes it."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(d.value for d in cls)
            raise InvalidInput(
                f"unknown dimension {text!r} (one of {names})",
                field=field,
                reason="picture.dimension",
            ) from None


class Measure(enum.StrEnum):
    """What a table counts (``samenloop.v1.PictureMeasure``)."""

    ACTIVE_SIGNALS = "active_signals"
    HIT_GROUPS = "hit_groups"
    CASES_OPENED = "cases_opened"
    CASES_CLOSED = "cases_closed"
    INTERVENTIONS = "interventions"

    def to_proto(self) -> picture_pb2.PictureMeasure.ValueType:
        return _MEASURE_TO_PROTO[self]

    @classmethod
    def from_proto(
        cls, value: picture_pb2.PictureMeasure.ValueType | int, *, field: str = "measures"
    ) -> Measure:
        """The measure for a proto enum value; ``InvalidInput`` for unspecified or unknown."""
        try:
            return _MEASURE_FROM_PROTO[int(value)]
        except KeyError:
            raise InvalidInput(
                "unknown picture measure", field=field, reason="picture.measure"
            ) from None

    @classmethod
    def parse(cls, text: str, *, field: str = "measures") -> Measure:
        """A measure by name (``"hit_groups"``), as the CLI takes it."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise InvalidInput(
                f"unknown measure {text!r} (one of {names})", field=field, reason="picture.measure"
            ) from None

    @property
    def allowed_dimensions(self) -> frozenset[Dimension]:
        """The dimensions a table of this measure can be broken down by."""
        return _ALLOWED[self]


class CellQuality(enum.StrEnum):
    """How far a released figure can be trusted (``samenloop.v1.CellQuality``)."""

    EXACT = "exact"
    NOISY = "noisy"
    SUPPRESSED = "suppressed"

    def to_proto(self) -> picture_pb2.CellQuality.ValueType:
        return _QUALITY_TO_PROTO[self]

    @classmethod
    def from_proto(
        cls, value: picture_pb2.CellQuality.ValueType | int, *, field: str = "quality"
    ) -> CellQuality:
        try:
            return _QUALITY_FROM_PROTO[int(value)]
        except KeyError:
            raise InvalidInput(
                "unknown cell quality", field=field, reason="picture.quality"
            ) from None


class SuppressionReason(enum.StrEnum):
    """Why a released cell is suppressed (``samenloop.v1.SuppressionReason``): a reader is
    told whether the cell itself is small or is withheld to protect a small one."""

    TOO_FEW = "too_few"
    PROTECTS_ANOTHER = "protects_another"

    def to_proto(self) -> picture_pb2.SuppressionReason.ValueType:
        return _REASON_TO_PROTO[self]

    @classmethod
    def from_proto(
        cls, value: picture_pb2.SuppressionReason.ValueType | int
    ) -> SuppressionReason | None:
        """The reason for a proto value; ``None`` for unspecified (or one this version lacks)."""
        return _REASON_FROM_PROTO.get(int(value))


_DIMENSION_TO_PROTO: Final = {
    Dimension.AREA: picture_pb2.PICTURE_DIMENSION_AREA,
    Dimension.BRANCH: picture_pb2.PICTURE_DIMENSION_BRANCH,
    Dimension.CATEGORY: picture_pb2.PICTURE_DIMENSION_CATEGORY,
    Dimension.ROLE: picture_pb2.PICTURE_DIMENSION_ROLE,
    Dimension.MONTH: picture_pb2.PICTURE_DIMENSION_MONTH,
    Dimension.INTERVENTION_TYPE: picture_pb2.PICTURE_DIMENSION_INTERVENTION_TYPE,
}
_DIMENSION_FROM_PROTO: Final = {int(v): k for k, v in _DIMENSION_TO_PROTO.items()}
_MEASURE_TO_PROTO: Final = {
    Measure.ACTIVE_SIGNALS: picture_pb2.PICTURE_MEASURE_ACTIVE_SIGNALS,
    Measure.HIT_GROUPS: picture_pb2.PICTURE_MEASURE_HIT_GROUPS,
    Measure.CASES_OPENED: picture_pb2.PICTURE_MEASURE_CASES_OPENED,
    Measure.CASES_CLOSED: picture_pb2.PICTURE_MEASURE_CASES_CLOSED,
    Measure.INTERVENTIONS: picture_pb2.PICTURE_MEASURE_INTERVENTIONS,
}
_MEASURE_FROM_PROTO: Final = {int(v): k for k, v in _MEASURE_TO_PROTO.items()}
_QUALITY_TO_PROTO: Final = {
    CellQuality.EXACT: picture_pb2.CELL_QUALITY_EXACT,
    CellQuality.NOISY: picture_pb2.CELL_QUALITY_NOISY,
    CellQuality.SUPPRESSED: picture_pb2.CELL_QUALITY_SUPPRESSED,
}
_QUALITY_FROM_PROTO: Final = {int(v): k for k, v in _QUALITY_TO_PROTO.items()}
_REASON_TO_PROTO: Final = {
    SuppressionReason.TOO_FEW: picture_pb2.SUPPRESSION_REASON_TOO_FEW,
    SuppressionReason.PROTECTS_ANOTHER: picture_pb2.SUPPRESSION_REASON_PROTECTS_ANOTHER,
}
_REASON_FROM_PROTO: Final = {int(v): k for k, v in _REASON_TO_PROTO.items()}

_SIGNAL_DIMENSIONS: Final = frozenset(
    {Dimension.AREA, Dimension.BRANCH, Dimension.CATEGORY, Dimension.ROLE, Dimension.MONTH}
)
_CASE_DIMENSIONS: Final = frozenset({Dimension.ROLE, Dimension.MONTH})
_ALLOWED: Final[Mapping[Measure, frozenset[Dimension]]] = {
    Measure.ACTIVE_SIGNALS: _SIGNAL_DIMENSIONS,
    Measure.HIT_GROUPS: _SIGNAL_DIMENSIONS,
    Measure.CASES_OPENED: _CASE_DIMENSIONS,
    Measure.CASES_CLOSED: _CASE_DIMENSIONS,
    Measure.INTERVENTIONS: _CASE_DIMENSIONS | {Dimension.INTERVENTION_TYPE},
}

#: Intervention types of case actions (``samenloop.v1.InterventionType`` without the prefix).
INTERVENTION_TYPES: Final = tuple(
    name.removeprefix("INTERVENTION_TYPE_").lower()
    for name, number in case_pb2.InterventionType.items()
    if number != case_pb2.INTERVENTION_TYPE_UNSPECIFIED
)

#: The dimensions of a period's cube of each measure (exact mode): every dimension the
#: measure allows, in one fixed order. Every table released of a period and measure is a
#: slice of its one protected cube, so that no two released tables can be played against
#: each other (linked tables; see ``view``).
CUBE_DIMENSIONS: Final[Mapping[Measure, tuple[Dimension, ...]]] = MappingProxyType(
    {m: tuple(d for d in Dimension if d in _ALLOWED[m]) for m in Measure}
)


def cube_dimensions(
    measures: Sequence[Measure], *, without: Collection[Dimension] = ()
) -> tuple[Dimension, ...]:
    """The one cube the ``measures`` of an exact collection are counted by, leaving out
    the dimensions ``without`` (area and branch where the covenant lists no public values
    for them: partners share tables only over public lists); ``InvalidInput`` (field
    ``measures``) if they have different cubes (collect the signal measures, the case
    counts and the interventions apart)."""
    cubes = {tuple(d for d in CUBE_DIMENSIONS[m] if d not in without) for m in measures}
    if len(cubes) != 1:
        groups = sorted(
            "+".join(
                m.value
                for m in measures
                if tuple(d for d in CUBE_DIMENSIONS[m] if d not in without) == cube
            )
            for cube in cubes
        )
        raise InvalidInput(
            f"in exact mode collect measures of one cube together: {' | '.join(groups)}",
            field="measures",
            reason="picture.measure",
        )
    (cube,) = cubes
    return cube


_AREA_PREFIXES: Final = {"postcode4": "pc4", "cbs_wijk": "wijk", "cbs_buurt": "buurt"}


def area_value(kind: str | None, code: str | None) -> str | None:
    """The area dimension's value for a signal's area (``"pc4:5038"``, ``"wijk:WK085501"``).

    ``kind`` is the stored area kind (``"postcode4"``, ``"cbs_wijk"``, ``"cbs_buurt"``);
    ``None`` when the signal has no area, so that it counts as ``"onbekend"``.
    """
    if kind is None or code is None:
        return None
    return f"{_AREA_PREFIXES.get(kind, kind)}:{code}"


def check_request(measures: Sequence[Measure], dimensions: Sequence[Dimension]) -> None:
    """Refuse a request the picture cannot answer: no or repeated measures, repeated
    dimensions, or a dimension that a measure has no value for (a signal has no
    intervention type; a case event has no area)."""
    if not measures:
        raise InvalidInput(
            "ask for at least one measure", field="measures", reason="picture.measure"
        )
    if len(set(measures)) != len(measures):
        raise InvalidInput("a measure is repeated", field="measures", reason="picture.measure")
    if len(set(dimensions)) != len(dimensions):
        raise InvalidInput(
            "a dimension is repeated", field="dimensions", reason="picture.dimension"
        )
    for measure in measures:
        extra = [d.value for d in dimensions if d not in measure.allowed_dimensions]
        if extra:
            raise InvalidInput(
                f"{measure.value} cannot be broken down by {', '.join(extra)}",
                field="dimensions",
                reason="picture.dimension",
            )


# --- period ---------------------------------------------------------------------------


def _month_index(text: object, field: str) -> int:
    if not isinstance(text, str) or not _MONTH.fullmatch(text):
        raise InvalidInput("must be a month, YYYY-MM", field=field, reason="picture.period")
    return int(text[:4]) * 12 + int(text[5:]) - 1


def _month_text(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


@dataclass(frozen=True, slots=True)
class Period:
    """Whole months, both ends included: ``first_month <= last_month``, at most 36 months."""

    first_month: str
    last_month: str

    def __post_init__(self) -> None:
        first = _month_index(self.first_month, "period.first_month")
        last = _month_index(self.last_month, "period.last_month")
        if last < first:
            raise InvalidInput(
                "must not be before first_month", field="period.last_month", reason="picture.period"
            )
        if last - first + 1 > MAX_MONTHS:
            raise InvalidInput(
                f"a period spans at most {MAX_MONTHS} months",
                field="period.last_month",
                reason="picture.period",
            )

    @classmethod
    def parse(cls, text: str, *, field: str = "period") -> Period:
        """``"2026-10"`` (one month) or ``"2026-01..2026-10"``, as the CLI takes it."""
        first, sep, last = text.strip().partition("..")
        if not sep:
            last = first
        try:
            return cls(first.strip(), last.strip())
        except InvalidInput as error:
            raise InvalidInput(
                f"{error.message} (a month YYYY-MM or YYYY-MM..YYYY-MM)",
                field=field,
                reason=error.reason,
            ) from None

    @classmethod
    def from_proto(cls, message: picture_pb2.Period, *, field: str = "period") -> Period:
        try:
            return cls(message.first_month, message.last_month)
        except InvalidInput as error:
            where = field + (error.field or "").removeprefix("period")
            raise InvalidInput(error.message, field=where, reason=error.reason) from None

    def to_proto(self) -> picture_pb2.Period:
        return picture_pb2.Period(first_month=self.first_month, last_month=self.last_month)

    def months(self) -> tuple[str, ...]:
        """Every month of the period, in order."""
        first = _month_index(self.first_month, "period.first_month")
        last = _month_index(self.last_month, "period.last_month")
        return tuple(_month_text(i) for i in range(first, last + 1))

    def __contains__(self, month: object) -> bool:
        return isinstance(month, str) and self.first_month <= month <= self.last_month

    def __str__(self) -> str:
        if self.first_month == self.last_month:
            return self.first_month
        return f"{self.first_month}..{self.last_month}"


# --- facts and counting ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalFacts:
    """The coarse attributes of an active signal; the only thing the picture reads of it.

    ``area`` is the area dimension's value (see ``area_value``), ``branch`` an SBI code;
    either may be unknown. ``month`` is ``"YYYY-MM"``. ``count``: how many signals
    share these attributes (the store groups them in SQL, which is much faster
    than handing over one object per signal).
    """

    area: str | None
    branch: str | None
    category: str
    month: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class HitGroupFacts:
    """One hit group this node is the picture reporter of (the broker marks exactly one
    member per group), so that each group counts once across all nodes."""

    area: str | None
    branch: str | None
    category: str
    month: str
    count: int = 1


class CaseEvent(enum.StrEnum):
    """What happened in a case: the three accountability measures."""

    OPENED = "opened"
    CLOSED = "closed"
    INTERVENTION = "intervention"


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """One case event this node counts: a case it coordinates opened or closed, or an
    action it owns done (with its intervention type)."""

    kind: CaseEvent
    intervention_type: str | None
    month: str
    count: int = 1


Facts: TypeAlias = SignalFacts | HitGroupFacts | CaseFacts
#: A cell's values, one per dimension of its table, in the table's order.
Key: TypeAlias = tuple[str, ...]

_CASE_MEASURES: Final = {
    Measure.CASES_OPENED: CaseEvent.OPENED,
    Measure.CASES_CLOSED: CaseEvent.CLOSED,
    Measure.INTERVENTIONS: CaseEvent.INTERVENTION,
}


class Table(Mapping[Key, int]):
    """Counts of one measure by ``dimensions`` over ``period``: an immutable mapping from
    a tuple of values (in the order of ``dimensions``) to a count.

    In an exact table an absent cell is 0. ``noise_scale`` is the standard deviation
    of the noise in each cell (0 for exact counts). ``totals_over`` names the dimensions
    that ``with_totals`` added ``"totaal"`` values for.
    """

    __slots__ = ("_cells", "dimensions", "measure", "noise_scale", "period", "totals_over")

    measure: Measure
    dimensions: tuple[Dimension, ...]
    period: Period
    noise_scale: float
    totals_over: tuple[Dimension, ...]

    def __init__(
        self,
        measure: Measure,
        dimensions: Sequence[Dimension],
        period: Period,
        cells: Mapping[Key, int],
        *,
        noise_scale: float = 0.0,
        totals_over: Sequence[Dimension] = (),
    ) -> None:
        """Check each key has one value per dimension and each count is an int."""
        dims = tuple(Dimension(d) for d in dimensions)
        width = len(dims)
        checked: dict[Key, int] = {}
        for key, value in cells.items():
            if not isinstance(key, tuple) or len(key) != width:
                raise InvalidInput(
                    f"a cell needs {width} values", field="cells.values", reason="picture.cell"
                )
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput("must be an integer", field="cells.count", reason="picture.cell")
            checked[tuple(str(v) for v in key)] = value
        if len(checked) > MAX_CELLS:
            raise MessageTooLarge(
                f"a table has at most {MAX_CELLS} cells", field="cells", reason="picture.too_large"
            )
        if not (noise_scale >= 0 and math.isfinite(noise_scale)):
            raise InvalidInput("must be >= 0", field="noise_scale", reason="picture.noise_scale")
        self.measure = Measure(measure)
        self.dimensions = dims
        self.period = period
        self._cells: Mapping[Key, int] = MappingProxyType(checked)
        self.noise_scale = float(noise_scale)
        self.totals_over = tuple(Dimension(d) for d in totals_over)

    def __getitem__(self, key: Key) -> int:
        return self._cells[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._cells)

    def __len__(self) -> int:
        return len(self._cells)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.noise_scale == other.noise_scale
            and self.totals_over == other.totals_over
            and dict(self._cells) == dict(other._cells)
        )

    def __hash__(self) -> int:
        return hash((self.shape, frozenset(self._cells.items())))

    def __repr__(self) -> str:
        return (
            f"Table({self.measure.value}, {[d.value for d in self.dimensions]}, {self.period}, "
            f"{dict(self._cells)!r}, noise_scale={self.noise_scale})"
        )

    @property
    def noisy(self) -> bool:
        return self.noise_scale > 0

    @property
    def shape(self) -> tuple[Measure, tuple[Dimension, ...], Period]:
        """What the table counts; only tables of one shape combine."""
        return (self.measure, self.dimensions, self.period)

    def axis(self, dimension: Dimension) -> tuple[str, ...]:
        """The values of ``dimension`` that occur in the cells (totals excluded), in
        display order: months and codes sorted, ``onbekend`` and ``overig`` last."""
        i = self.dimensions.index(dimension)
        return _ordered({key[i] for key in self._cells if key[i] != TOTAL})

    def total(self) -> int:
        """The sum of the leaf cells (those without a ``"totaal"`` value)."""
        return sum(v for k, v in self._cells.items() if TOTAL not in k)


def _ordered(values: Iterable[str]) -> tuple[str, ...]:
    last = {UNKNOWN: 1, OTHER: 2, TOTAL: 3}
    return tuple(sorted(values, key=lambda v: (last.get(v, 0), v)))


_FIELDS: Final = {
    Dimension.AREA: "area",
    Dimension.BRANCH: "branch",
    Dimension.CATEGORY: "category",
    Dimension.MONTH: "month",
    Dimension.INTERVENTION_TYPE: "intervention_type",
}


def count(
    measure: Measure,
    dimensions: Sequence[Dimension],
    facts: Iterable[Facts],
    *,
    role: str,
    period: Period,
) -> Table:
    """Count ``facts`` of ``measure`` whose month lies in ``period``, by ``dimensions``.

    ``role`` is the counting party's role: the role dimension's value for all its
    facts. Facts of another kind than the measure counts are skipped, so that one
    list of case events serves the three case measures. A missing area, branch or
    intervention type counts as ``"onbekend"``.
    """
    dims = tuple(dimensions)
    check_request([measure], dims)
    months = frozenset(period.months())
    wanted: type[SignalFacts] | type[HitGroupFacts] | type[CaseFacts]
    kind: CaseEvent | None = _CASE_MEASURES.get(measure)
    if measure is Measure.ACTIVE_SIGNALS:
        wanted = SignalFacts
    elif measure is Measure.HIT_GROUPS:
        wanted = HitGroupFacts
    else:
        wanted = CaseFacts
    relevant = (
        f
        for f in facts
        if type(f) is wanted and f.month in months and (kind is None or f.kind is kind)  # type: ignore[union-attr]
    )
    # One C-level attrgetter call per fact; the role and "onbekend" go in afterwards,
    # on the few aggregated keys (a node counts its whole store per request).
    # check_request allowed only dimensions that the measure's facts have (a test checks
    # _ALLOWED against the fact classes).
    fields = [_FIELDS[d] for d in dims if d is not Dimension.ROLE]
    raw: dict[Any, int] = {}
    get = operator.attrgetter(*fields) if fields else (lambda _fact: ())
    for fact in relevant:
        key = get(fact)
        raw[key] = raw.get(key, 0) + fact.count
    counts: dict[Key, int] = {}
    for found, value in raw.items():
        values = iter(found if len(fields) != 1 else (found,))
        key = tuple(role if d is Dimension.ROLE else (next(values) or UNKNOWN) for d in dims)
        counts[key] = counts.get(key, 0) + value
    if any(v < 0 for v in counts.values()):
        raise InvalidInput("must be >= 0", field="facts.count", reason="picture.count")
    counts = {k: v for k, v in counts.items() if v}
    for key in counts:
        if _RESERVED.intersection(key):
            raise InvalidInput(
                f"{TOTAL!r} is reserved for totals", field="facts", reason="picture.reserved"
            )
    return Table(measure, dims, period, counts)


# --- noise ----------------------------------------------------------------------------


class NoisyTable(Table):
    """A table with calibrated noise in every cell: ``epsilon`` spent, ``laplace_scale``
    the discrete Laplace parameter b (= sensitivity / epsilon), ``noise_scale`` the
    resulting standard deviation per cell."""

    __slots__ = ("epsilon", "laplace_scale")

    epsilon: float
    laplace_scale: float

    def __init__(
        self,
        table: Table,
        cells: Mapping[Key, int],
        *,
        epsilon: float,
        laplace_scale: float,
    ) -> None:
        super().__init__(
            table.measure,
            table.dimensions,
            table.period,
            cells,
            noise_scale=discrete_laplace_sd(laplace_scale),
        )
        self.epsilon = epsilon
        self.laplace_scale = laplace_scale


def split_epsilon(epsilon_per_request: float, n_tables: int) -> float:
    """Each table's share of one request's budget (basic composition: shares add up)."""
    if n_tables < 1:
        raise InvalidInput("ask for at least one table", field="measures", reason="picture.measure")
    if not (epsilon_per_request > 0 and math.isfinite(epsilon_per_request)):
        raise InvalidInput("must be > 0", field="epsilon_per_request", reason="picture.epsilon")
    return epsilon_per_request / n_tables


def discrete_laplace_sd(laplace_scale: float) -> float:
    """Standard deviation of the discrete Laplace distribution P(k) ∝ exp(-|k|/b)."""
    if laplace_scale <= 0:
        return 0.0
    q = math.exp(-1.0 / laplace_scale)
    return math.sqrt(2.0 * q) / (1.0 - q)


def public_domain(
    dimensions: Sequence[Dimension],
    *,
    period: Period,
    role: str,
    categories: Sequence[str] = (),
    areas: Sequence[str] | None = None,
    branches: Sequence[str] | None = None,
    intervention_types: Sequence[str] = (*INTERVENTION_TYPES, UNKNOWN),
) -> dict[Dimension, tuple[str, ...]]:
    """The values of each requested dimension that anyone may know exist: the period's
    months, the node's role, the covenant's categories, the intervention types, and
    areas/branches only where given (say, the region's postcode-4 list)."""
    known: dict[Dimension, tuple[str, ...]] = {
        Dimension.MONTH: period.months(),
        Dimension.ROLE: (role,),
        Dimension.CATEGORY: tuple(categories),
        Dimension.INTERVENTION_TYPE: tuple(intervention_types),
    }
    if areas is not None:
        known[Dimension.AREA] = (*areas, UNKNOWN)
    if branches is not None:
        known[Dimension.BRANCH] = (*branches, UNKNOWN)
    return {d: known[d] for d in dimensions if known.get(d)}


def _domain_cells(table: Table, domain: Mapping[Dimension, Sequence[str]]) -> dict[Key, int]:
    """Every cell of the domain (zeros included), values outside it folded into OTHER."""
    axes: list[tuple[str, ...]] = []
    folded: dict[Key, int] = {}
    fold = [frozenset(domain[d]) if d in domain else None for d in table.dimensions]
    for key, value in table.items():
        new = tuple(
            v if allowed is None or v in allowed else OTHER
            for v, allowed in zip(key, fold, strict=True)
        )
        folded[new] = folded.get(new, 0) + value
    for i, d in enumerate(table.dimensions):
        seen = {key[i] for key in folded}
        if d in domain:
            axes.append(tuple(dict.fromkeys([*domain[d], *sorted(seen - set(domain[d]))])))
        else:
            axes.append(_ordered(seen))
    size = math.prod(len(a) for a in axes)
    if size > MAX_CELLS:
        raise MessageTooLarge(
            f"the table would have {size} cells, at most {MAX_CELLS}; ask for fewer dimensions",
            field="dimensions",
            reason="picture.too_large",
        )
    return {key: folded.get(key, 0) for key in itertools.product(*axes)}


def add_noise(
    table: Table,
    *,
    epsilon: float,
    domain: Mapping[Dimension, Sequence[str]] | None = None,
    rng: random.Random | None = None,
) -> NoisyTable:
    """``table`` with discrete Laplace noise of scale 1/epsilon in every cell of the domain.

    The sensitivity is 1: one fact is in exactly one cell. Every cell of the
    product of the domain's values (see ``public_domain``; dimensions without one
    use the values present) gets noise, zeros included, so that which cells are
    non-zero does not show. Noisy counts may be negative.

    Without ``rng`` the noise comes from OpenDP's discrete Laplace mechanism
    (``make_laplace`` over integer vectors), whose sampler draws from the operating
    system's CSPRNG and is exact (no floating-point leaks). ``rng`` is for
    reproducible tests only: the same distribution from a seeded generator.
    """
    if table.noisy:
        raise InvalidInput("the table has noise already", field="table", reason="picture.noisy")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise InvalidInput("must be > 0", field="epsilon", reason="picture.epsilon")
    laplace_scale = 1.0 / epsilon
    cells = _domain_cells(table, domain or {})
    keys = list(cells)
    exact = [cells[k] for k in keys]
    if rng is None:
        noisy = _opendp_laplace(exact, laplace_scale, epsilon)
    else:
        noisy = [v + _sample_discrete_laplace(rng, laplace_scale) for v in exact]
    return NoisyTable(
        table, dict(zip(keys, noisy, strict=True)), epsilon=epsilon, laplace_scale=laplace_scale
    )


def _opendp_laplace(values: list[int], scale: float, epsilon: float) -> list[int]:
    import opendp.prelude as dp  # a native library: load it only when noise is asked for

    dp.enable_features("contrib")
    measurement = dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=scale
    )
    # OpenDP's own accounting must agree that one fact (L1 distance 1) costs at most epsilon.
    spent = float(measurement.map(1))  # type: ignore[no-untyped-call]
    if spent > epsilon * (1 + 1e-9):
        raise AssertionError(f"OpenDP accounts {spent} for epsilon {epsilon}")
    if not values:
        return []
    result = measurement(values)
    return [int(v) for v in result]


def _sample_discrete_laplace(rng: random.Random, scale: float) -> int:
    """The difference of two geometric variables is discrete Laplace (P(k) ∝ exp(-|k|/b))."""
    q = math.exp(-1.0 / scale)
    log_q = math.log(q)

    def geometric() -> int:
        return math.floor(math.log(1.0 - rng.random()) / log_q)

    return geometric() - geometric()


# --- the privacy budget ---------------------------------------------------------------


class BudgetExhausted(QuotaExceeded):
    """A picture request would spend more of a month's privacy budget than is left."""

    default_reason = "picture.budget_exhausted"


def _units(epsilon: float, field: str) -> int:
    if isinstance(epsilon, bool) or not (epsilon >= 0 and math.isfinite(epsilon)):
        raise InvalidInput("must be a number >= 0", field=field, reason="picture.epsilon")
    return round(epsilon * _EPSILON_UNITS)


@dataclass(frozen=True, slots=True)
class BudgetLedger:
    """The privacy budget (epsilon) this node has spent per month of the picture.

    A request for a period spends its epsilon on every month of the period: each
    fact lies in one month, so months are disjoint and are accounted apart. Amounts
    are kept in integer units of 1e-9 so that sums are exact and the budget is
    never exceeded by rounding.
    """

    spent_units: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spent_units", MappingProxyType(dict(self.spent_units)))

    def spent(self, month: str) -> float:
        return self.spent_units.get(month, 0) / _EPSILON_UNITS

    def remaining(self, period: Period, *, budget_per_period: float) -> float:
        """What one more request for ``period`` may spend: the least left of its months."""
        budget = _units(budget_per_period, "epsilon_per_period")
        left = min(budget - self.spent_units.get(m, 0) for m in period.months())
        return max(left, 0) / _EPSILON_UNITS

    def spend(self, period: Period, epsilon: float, *, budget_per_period: float) -> BudgetLedger:
        """The ledger after spending ``epsilon`` on each month of ``period``; all or nothing.

        ``BudgetExhausted`` (field ``period``) if any month would go over
        ``budget_per_period``, saying how much is left.
        """
        budget = _units(budget_per_period, "epsilon_per_period")
        amount = _units(epsilon, "epsilon")
        if amount <= 0:
            raise InvalidInput("must be > 0", field="epsilon", reason="picture.epsilon")
        months = period.months()
        over = [m for m in months if self.spent_units.get(m, 0) + amount > budget]
        if over:
            left = self.remaining(period, budget_per_period=budget_per_period)
            raise BudgetExhausted(
                f"the privacy budget for {', '.join(over)} is spent: this request needs "
                f"epsilon {epsilon:g}, {left:g} of {budget_per_period:g} is left",
                field="period",
            )
        spent = dict(self.spent_units)
        for m in months:
            spent[m] = spent.get(m, 0) + amount
        return BudgetLedger(spent)


# --- combining contributions ----------------------------------------------------------


def combine(tables: Sequence[Table]) -> Table:
    """The sum of contributions of one shape: cell by cell.

    Noise adds up: independent noise with standard deviations s_i sums to noise
    with standard deviation sqrt(sum s_i²), which becomes the combined table's
    ``noise_scale``. Mixing exact and noisy contributions gives a noisy table.
    """
    if not tables:
        raise InvalidInput("no contributions to combine", field="tables", reason="picture.empty")
    shape = tables[0].shape
    for i, table in enumerate(tables):
        if table.shape != shape:
            raise InvalidInput(
                "a contribution counts another measure, period or dimensions",
                field=f"tables[{i}]",
                reason="picture.shape",
            )
        if table.totals_over:
            raise InvalidInput(
                "combine contributions before adding totals",
                field=f"tables[{i}]",
                reason="picture.totals",
            )
    summed: Counter[Key] = Counter()
    for table in tables:
        summed.update(table)
    scale = math.sqrt(sum(t.noise_scale**2 for t in tables))
    measure, dims, period = shape
    cells = dict(summed) if scale > 0 else {k: v for k, v in summed.items() if v != 0}
    return Table(measure, dims, period, cells, noise_scale=scale)


def with_totals(table: Table, over: Sequence[Dimension] | None = None) -> Table:
    """``table`` plus marginal totals (value ``"totaal"``) over every combination of the
    dimensions in ``over`` (default: all), grand total included. Totals are sums of
    the cells as given, before any suppression."""
    if table.totals_over:
        raise InvalidInput("the table has totals already", field="table", reason="picture.totals")
    dims = table.dimensions if over is None else tuple(over)
    positions = sorted({table.dimensions.index(d) for d in dims})
    cells: Counter[Key] = Counter(table)
    for r in range(1, len(positions) + 1):
        for subset in itertools.combinations(positions, r):
            for key, value in table.items():
                cells[tuple(TOTAL if i in subset else v for i, v in enumerate(key))] += value
    if positions and len(positions) == len(table.dimensions):
        cells.setdefault((TOTAL,) * len(positions), 0)  # the grand total, even of nothing
    return Table(
        table.measure,
        table.dimensions,
        table.period,
        cells,
        noise_scale=table.noise_scale,
        totals_over=tuple(table.dimensions[i] for i in positions),
    )


# --- disclosure control ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleasedCell:
    """One released figure: its values, its count (``None`` if suppressed), how far it
    can be trusted, the standard deviation of its noise (0 if exact), and for a
    suppressed cell why (``None`` when not known, as from an older node)."""

    values: Key
    count: int | None
    quality: CellQuality
    noise_scale: float = 0.0
    reason: SuppressionReason | None = None

    @property
    def is_total(self) -> bool:
        return TOTAL in self.values


@dataclass(frozen=True, slots=True)
class ReleasedTable:
    """A table after disclosure control, fit to show: what it counts, the values of each
    dimension (``axes``, in display order, totals excluded), and its cells. A value
    combination absent from ``cells`` is an exact 0."""

    measure: Measure
    dimensions: tuple[Dimension, ...]
    period: Period
    axes: tuple[tuple[str, ...], ...]
    cells: tuple[ReleasedCell, ...]
    min_count: int
    totals_over: tuple[Dimension, ...] = ()
    _by_values: Mapping[Key, ReleasedCell] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_values", MappingProxyType({c.values: c for c in self.cells}))

    def cell(self, values: Sequence[str]) -> ReleasedCell:
        """The cell for ``values`` (an exact 0 if not listed)."""
        key = tuple(values)
        found = self._by_values.get(key)
        if found is not None:
            return found
        return ReleasedCell(key, 0, CellQuality.EXACT, 0.0)

    def axis(self, dimension: Dimension) -> tuple[str, ...]:
        return self.axes[self.dimensions.index(dimension)]

    @property
    def suppressed(self) -> tuple[ReleasedCell, ...]:
        return tuple(c for c in self.cells if c.quality is CellQuality.SUPPRESSED)

    @property
    def noisy(self) -> bool:
        return any(c.quality is CellQuality.NOISY for c in self.cells)


@dataclass(frozen=True, slots=True)
class CellFacts:
    """What the viewer knows of one cell beyond its released sum, all of it about the
    contributors other than itself: ``others``, the sum of their counts (the cell's
    count without the viewer's own); ``contributors``, how many of them hold a non-zero
    count (None where unknown, as in noisy mode); ``largest``, an upper bound of the
    largest single contribution (None where unknown or unbounded)."""

    others: int
    contributors: int | None = None
    largest: int | None = None


@dataclass(frozen=True, slots=True)
class SensitivityRules:
    """The covenant's primary suppression rules: ``min_count``, the fewest counts a
    non-zero cell needs; ``min_contributors``, the fewest contributors other than the
    viewer; ``dominance_share``, the largest share of a cell one contributor may hold
    (1: no such rule)."""

    min_count: int
    min_contributors: int = 1
    dominance_share: float = 1.0


def primary_sensitive(cells: Mapping[Key, CellFacts], rules: SensitivityRules) -> set[Key]:
    """The cells to suppress before any complementary suppression, judged on what the
    others contributed (the viewer knows its own counts; padding a cell with them must
    not make it safe). A cell is sensitive when the others' sum is positive and
    (a) below ``min_count``, (b) held by fewer than ``min_contributors`` others, or
    (c) the largest contribution may exceed ``dominance_share`` of it; an unknown
    bound is taken as the whole sum (conservative)."""
    sensitive: set[Key] = set()
    for key, facts in cells.items():
        others = facts.others
        if others <= 0:
            continue
        if others < rules.min_count or (
            facts.contributors is not None and facts.contributors < rules.min_contributors
        ):
            sensitive.add(key)
        elif rules.dominance_share < 1 and facts.contributors is not None:
            largest = others if facts.largest is None else min(facts.largest, others)
            if largest > rules.dominance_share * others:
                sensitive.add(key)
    return sensitive


def release(
    table: Table,
    *,
    min_count: int,
    noisy: bool | None = None,
    noise_scale: float | None = None,
    primary: Collection[Key] | None = None,
    complement: Collection[Key] = (),
) -> ReleasedTable:
    """Apply the covenant's disclosure control to a combined table (with or without totals).

    Primary suppression: the cells ``primary`` names (see ``primary_sensitive``), by
    default those with 0 < count < ``min_count`` (``small_cells``). Complementary
    suppression, when the table has totals: the cells ``complement`` names (another
    method's pattern, τ-Argus's for the exact cube: ``picture_tau``) are given up
    with them, and the pattern is then checked and completed by this one: until
    stable, every line (the cells
    that differ only in one totalled dimension, and their total) with exactly one
    suppressed cell gets one more suppressed: a cell with fewer totals in it before one
    with more (a leaf first, the grand total last), non-zero before zero, one that also
    settles another lone suppressed cell before one that does not, the smallest before a
    larger; then any suppressed cell that is
    still a linear function of the released figures gets a neighbour suppressed
    (when every line through it is suppressed already, the nearest released cell
    on another suppressed cell's line), and the lines are checked again.

    ``noisy`` and ``noise_scale`` default to the table's own. Noisy figures are
    shown clamped at 0 (suppression is decided on the unclamped value, and the
    totals are sums of unclamped cells). A total's noise scale is the cell
    scale times the square root of the number of cells it sums.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise InvalidInput("must be an integer >= 1", field="min_count", reason="picture.min_count")
    scale = table.noise_scale if noise_scale is None else float(noise_scale)
    is_noisy = (scale > 0) if noisy is None else noisy
    dims = table.dimensions
    axes = tuple(table.axis(d) for d in dims)
    totalled = [dims.index(d) for d in table.totals_over]

    def counted(key: Key) -> int:
        return table.get(key, 0)

    suppressed = small_cells(table, min_count) if primary is None else set(primary)
    too_few = frozenset(suppressed)
    if totalled and suppressed:
        # A count of 0 given up protects nothing (counts are never negative): not taken.
        suppressed |= {k for k in complement if table.get(k, 0) != 0}
        suppressed = _complement(counted, suppressed, axes, totalled, exact=not is_noisy)

    released: list[ReleasedCell] = []
    quality = CellQuality.NOISY if is_noisy else CellQuality.EXACT
    keys = set(table) | suppressed
    for key in sorted(keys, key=lambda k: _sort_key(k, axes)):
        cell_scale = scale * math.sqrt(_summed_cells(key, axes)) if is_noisy else 0.0
        if key in suppressed:
            why = (
                SuppressionReason.TOO_FEW if key in too_few else SuppressionReason.PROTECTS_ANOTHER
            )
            released.append(ReleasedCell(key, None, CellQuality.SUPPRESSED, cell_scale, why))
        else:
            value = counted(key)
            if is_noisy:
                released.append(ReleasedCell(key, max(value, 0), quality, cell_scale))
            elif value != 0 or TOTAL in key:
                released.append(ReleasedCell(key, value, quality, 0.0))
    return ReleasedTable(
        table.measure,
        dims,
        table.period,
        axes,
        tuple(released),
        min_count,
        table.totals_over,
    )


def loss(table: Mapping[Key, int], released: ReleasedTable) -> tuple[int, int]:
    """What a protected table gives up: the total count of its suppressed cells (as
    statistical offices weigh information loss), then how many there are."""
    hidden = released.suppressed
    return sum(table.get(c.values, 0) for c in hidden), len(hidden)


def small_cells(table: Mapping[Key, int], min_count: int) -> set[Key]:
    """The default primary cells: a count of at least 1 and below ``min_count``."""
    return {k for k, v in table.items() if 0 < v < min_count}


def view(cube: ReleasedTable, dimensions: Sequence[Dimension]) -> ReleasedTable:
    """The table by ``dimensions`` (a subset of the cube's, in any order) as a slice of a
    released cube with totals over every dimension: the cells whose other dimensions are
    ``"totaal"``, with their figures and suppressions exactly as the cube released them.

    Why a slice: tables of one period by different dimensions share their marginals
    (the area totals of an area by category table are the area table). Protected one by
    one, their suppression patterns differ and one table's figures can give away what
    another suppressed (category totals 505 + 505 + 503 + 503 of one table against a
    grand total of 2019 in another). Protected once, as one cube whose every marginal is
    a cell, no combination of its slices shows more than the cube does, and the cube's
    complementary suppression leaves no suppressed cell a linear function of its
    released cells.
    """
    dims = tuple(dimensions)
    if len(set(dims)) != len(dims):
        raise InvalidInput("a dimension is repeated", field="dimensions")
    if set(cube.totals_over) != set(cube.dimensions):
        raise InvalidInput(
            "a view is a slice of a cube with totals over every dimension", field="cube"
        )
    missing = [d.value for d in dims if d not in cube.dimensions]
    if missing:
        raise InvalidInput(
            f"{cube.measure.value} is not counted by {', '.join(missing)}",
            field="dimensions",
            reason="picture.dimension",
        )
    at = [cube.dimensions.index(d) for d in dims]
    rest = [i for i in range(len(cube.dimensions)) if i not in at]
    cells = tuple(
        ReleasedCell(tuple(c.values[i] for i in at), c.count, c.quality, c.noise_scale, c.reason)
        for c in cube.cells
        if all(c.values[i] == TOTAL for i in rest)
    )
    axes = tuple(cube.axes[i] for i in at)
    ordered = sorted(cells, key=lambda c: _sort_key(c.values, axes))
    return ReleasedTable(
        cube.measure, dims, cube.period, axes, tuple(ordered), cube.min_count, dims
    )


def _sort_key(key: Key, axes: Sequence[tuple[str, ...]]) -> tuple[int, ...]:
    return tuple(
        len(axis) if v == TOTAL else axis.index(v) for v, axis in zip(key, axes, strict=True)
    )


def _summed_cells(key: Key, axes: Sequence[tuple[str, ...]]) -> int:
    return math.prod(len(axis) for v, axis in zip(key, axes, strict=True) if v == TOTAL)


def _lines(
    key: Key, axes: Sequence[tuple[str, ...]], totalled: Sequence[int]
) -> Iterator[list[Key]]:
    """The lines through ``key``: for each totalled dimension, its values and then the total."""
    for i in totalled:
        yield [(*key[:i], v, *key[i + 1 :]) for v in (*axes[i], TOTAL)]


def _complement(
    counted: Callable[[Key], int],
    primary: set[Key],
    axes: Sequence[tuple[str, ...]],
    totalled: Sequence[int],
    *,
    exact: bool = True,
) -> set[Key]:
    """``primary`` and the complementary suppressions that protect it (see ``release``).

    In an exact table a 0 is never given up to protect another cell: counts are never
    negative, so a hidden 0 whose other lines are all 0 is known to be 0 and leaves its
    partner pinned down (found by the LP audit of bench/linked_tables.py). A noisy 0 is
    noise like any other figure and may be given up."""
    suppressed = set(primary)

    def usable(key: Key) -> bool:
        return key not in suppressed and not (exact and counted(key) == 0)

    def lonely(key: Key) -> int:
        """How many lines through ``key`` have exactly one suppressed cell."""
        return sum(
            sum(1 for k in line if k in suppressed) == 1 for line in _lines(key, axes, totalled)
        )

    def pick(line: Sequence[Key]) -> Key | None:
        """The released member to give up: fewer totals in it first (leaves, then
        marginals, the grand total last: in a cube every marginal is some view's figure),
        non-zero before zero, then one that also protects another line's lone suppressed
        cell (closing a rectangle), then the smallest count, then the first in display order."""
        candidates = [k for k in line if usable(k)]
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda k: (
                k.count(TOTAL),
                counted(k) == 0,
                -lonely(k),
                abs(counted(k)),
                _sort_key(k, axes),
            ),
        )

    while True:
        changed = True
        while changed:
            changed = False
            for key in sorted(suppressed, key=lambda k: _sort_key(k, axes)):
                for line in _lines(key, axes, totalled):
                    if sum(1 for k in line if k in suppressed) == 1:
                        extra = pick(line)
                        if extra is not None:
                            suppressed.add(extra)
                            changed = True
        determined = _determined(suppressed, axes, totalled)
        if not determined:
            return suppressed
        # Protect every fixed cell in one round (one elimination per round, not per cell:
        # the cubes have thousands of cells), except one on a line that this round already
        # gave up a cell on: that may have protected it; the next round checks again.
        touched: set[tuple[Key, ...]] = set()
        for key in sorted(determined, key=lambda k: _sort_key(k, axes)):
            lines = [tuple(line) for line in _lines(key, axes, totalled)]
            if touched.intersection(lines):
                continue
            added = _protect(key, suppressed, pick, usable, counted, axes, totalled)
            touched.update(tuple(line) for line in _lines(added, axes, totalled))
            touched.update(lines)


def _protect(
    key: Key,
    suppressed: set[Key],
    pick: Callable[[Sequence[Key]], Key | None],
    usable: Callable[[Key], bool],
    counted: Callable[[Key], int],
    axes: Sequence[tuple[str, ...]],
    totalled: Sequence[int],
) -> Key:
    """Give up one more cell for a suppressed ``key`` that the released figures still fix;
    returns it."""
    options = [pick(line) for line in _lines(key, axes, totalled)]
    chosen = [k for k in options if k is not None]
    if chosen:
        extra = min(chosen, key=lambda k: (k.count(TOTAL), counted(k) == 0, abs(counted(k))))
        suppressed.add(extra)
        return extra
    # Every line through it is suppressed already, and still the other lines fix it:
    # give up the nearest released cell on a line of a suppressed cell that shares an
    # equation with it (same values where there are no totals), and look again.
    fixed = [i for i in range(len(key)) if i not in totalled]
    nearby = {
        k
        for other in suppressed
        if all(other[i] == key[i] for i in fixed)
        for line in _lines(other, axes, totalled)
        for k in line
        if usable(k)
    }
    if not nearby:
        # All of its part of the table is suppressed: then nothing in it is fixed.
        raise AssertionError(f"suppression cannot protect {key}")
    extra = min(
        nearby,
        key=lambda k: (
            sum(k[i] != key[i] for i in totalled),
            k.count(TOTAL),
            counted(k) == 0,
            abs(counted(k)),
            _sort_key(k, axes),
        ),
    )
    suppressed.add(extra)
    return extra


def _determined(
    suppressed: set[Key], axes: Sequence[tuple[str, ...]], totalled: Sequence[int]
) -> list[Key]:
    """Suppressed cells that the released figures fix by linear algebra.

    Each line is an equation (its cells sum to its total); with the released
    figures known, the unknowns are the suppressed cells. A cell is fixed exactly
    when its unit vector lies in the row space of the equations over the unknowns:
    in reduced row echelon form, a pivot row with no free variable in it.
    """
    unknowns = sorted(suppressed, key=lambda k: _sort_key(k, axes))
    column = {k: j for j, k in enumerate(unknowns)}
    rows: list[dict[int, int]] = []
    seen: set[tuple[Key, ...]] = set()
    for key in unknowns:
        for line in _lines(key, axes, totalled):
            ident = tuple(line)
            if ident in seen:
                continue
            seen.add(ident)
            row: dict[int, int] = {}
            for k in line[:-1]:
                if k in column:
                    row[column[k]] = 1
            if line[-1] in column:
                row[column[line[-1]]] = -1
            if row:
                rows.append(row)
    # Integer rows (fraction-free elimination, each row divided by the gcd of its entries):
    # the same reduced row echelon form up to a factor per row, many times faster than
    # Fraction arithmetic on the cubes a period's tables are slices of.
    pivots: dict[int, dict[int, int]] = {}  # pivot column -> reduced row
    for row in rows:
        for col, prow in pivots.items():
            factor = row.get(col)
            if factor:
                row = _eliminate(row, prow, prow[col], factor)
        if not row:
            continue
        col = min(row)
        if row[col] < 0:
            row = {c: -v for c, v in row.items()}
        for other_col, other in list(pivots.items()):
            factor = other.get(col)
            if factor:
                pivots[other_col] = _eliminate(other, row, row[col], factor)
        pivots[col] = row
    return [unknowns[col] for col, row in pivots.items() if len(row) == 1]


def _eliminate(
    row: dict[int, int], pivot: dict[int, int], lead: int, factor: int
) -> dict[int, int]:
    """``row * lead - pivot * factor`` (which clears the pivot's column from ``row``),
    divided by the gcd of its entries; zero entries dropped."""
    out = {c: v * lead for c, v in row.items()}
    for c, v in pivot.items():
        new = out.get(c, 0) - factor * v
        if new:
            out[c] = new
        else:
            out.pop(c, None)
    divisor = math.gcd(*out.values()) if out else 1
    if divisor > 1:
        out = {c: v // divisor for c, v in out.items()}
    return out
