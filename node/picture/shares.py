"""The regional picture's secure aggregation, as plain functions: encode, split, sum, decode.

Issue 13: a viewer (the RIEC) must learn the sum of the partners' counts, never
one partner's own. Each contributor encodes its tables as one dense vector of
integers over the request's public domain (:class:`Domain`), in a canonical
order that every party computes alike, and splits it into two additive shares
modulo 2^64 (``crypto.additive_shares``): one goes to the viewer, the other to
the covenant's picture aggregator. Each share alone is uniformly random. The
aggregator sums its shares of one request and returns that sum once; the viewer
adds the shares it holds of exactly the aggregator's contributors and learns
the sum over them, nothing more (unless the two collude).

The vector, per measure in request order:

* the **value** of every leaf cell of the domain (the product of the axes, the
  last axis fastest), noisy where the covenant sets a privacy budget;
* in exact mode only, for every cell of the domain *with its totals* (``totaal``
  after each axis's values), the contributor's own count's **band** as a one-hot
  indicator over :data:`BANDS` bands: band 0 is 1, band 1 is 2-3, band b is
  2^b..2^(b+1)-1, the last band open above. A zero count is in no band. The
  indicators are packed :data:`BANDS_PER_WORD` to a value, as the digits of a
  number in base :data:`BAND_BASE` (band b adds ``BAND_BASE ** (b % BANDS_PER_WORD)``
  to word ``b // BANDS_PER_WORD``): a covenant has at most 256 parties, so a digit
  summed over every contributor stays below the base and the sum never carries
  into the next digit or wraps (257^7 < 2^57), and the packed sum decodes to the
  same band counts as :data:`BANDS` separate indicators would, in a sixth of the
  space. Summed over contributors, the bands say how many contributors fall in
  each band, and their sum how many contributed a non-zero count, which the
  disclosure rules (minimum contributors, dominance) need; no contributor's own
  band is learnt.

A vector longer than one message carries (:data:`MAX_VALUES`) travels in parts
(:func:`split`, :class:`Part`): cut in order into parts of :data:`MAX_VALUES`
values, the last shorter, each naming its index, the part count, the whole
vector's length and its SHA-256, at most :data:`MAX_PARTS` parts
(:data:`MAX_TOTAL_VALUES` values). Each part goes in its own signed, sealed message
with the request id, so whoever relays them can drop or repeat a part but not
reorder, replace or splice one: :func:`check_part` refuses a part that does not fit
its own description or the length the receiver expects, and :func:`join` gives the
vector only once every part is in, all of one description, and the whole matches
its digest (a repeated identical part changes nothing).

Sans-IO: no clock, database or network; randomness only through
``samenloop.policies.crypto``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from samenloop.node.picture.arithmetic import (
    OTHER,
    TOTAL,
    UNKNOWN,
    CellFacts,
    Dimension,
    Key,
    Measure,
    Period,
    Table,
    with_totals,
)
from samenloop.policies import crypto
from samenloop.policies.errors import InvalidInput, MessageTooLarge
from samenloop.v1 import common_pb2, picture_pb2

__all__ = [
    "BANDS",
    "MAX_PARTS",
    "MAX_TOTAL_VALUES",
    "MAX_VALUES",
    "Domain",
    "Part",
    "SharedSum",
    "band_of",
    "band_top",
    "cell_facts",
    "check_part",
    "decode",
    "encode",
    "join",
    "parts_needed",
    "split",
    "vector_length",
]

#: Band indicators per cell: 1, 2-3, 4-7, ..., 2^10-2^11-1, and 2^11 or more (open).
BANDS: Final = 12
#: The base the band indicators are packed in: above the most contributors a sum can
#: have (``LIMITS_MAX_PARTIES``), so that no digit of a summed word carries.
BAND_BASE: Final = common_pb2.LIMITS_MAX_PARTIES + 1
#: Band indicators per 64-bit value (257^7 < 2^57 <= 2^63: a sum stays positive).
BANDS_PER_WORD: Final = 7
#: Values per cell for its band indicators.
BAND_WORDS: Final = -(-BANDS // BANDS_PER_WORD)
#: Most values in one message's share or sum: one part (768 KiB of 64-bit words).
MAX_VALUES: Final = common_pb2.LIMITS_MAX_PICTURE_SHARE_VALUES
#: Most parts a shared vector is cut into.
MAX_PARTS: Final = common_pb2.LIMITS_MAX_PICTURE_SHARE_PARTS
#: Most values in one whole shared vector (24 MiB): a bound on what one party can make
#: another keep for one request.
MAX_TOTAL_VALUES: Final = common_pb2.LIMITS_MAX_PICTURE_VECTOR_VALUES
WORD_BYTES: Final = crypto.SHARE_WORD_BYTES
MAX_VALUE_CHARS: Final = 64


def band_of(count: int) -> int | None:
    """The band of a contributor's own count: None for 0 (or a negative count), else
    b with 2^b <= count < 2^(b+1), the last band open above."""
    if count <= 0:
        return None
    return min(count.bit_length() - 1, BANDS - 1)


def band_top(band: int) -> int | None:
    """The largest count in ``band``; None for the last, open band."""
    if not 0 <= band < BANDS:
        raise InvalidInput(f"a band is 0..{BANDS - 1}", field="band")
    return None if band == BANDS - 1 else 2 ** (band + 1) - 1


@dataclass(frozen=True, slots=True)
class Domain:
    """The public domain of a request's tables: one axis of values per dimension, each
    ending in ``overig`` (values outside it are folded there)."""

    dimensions: tuple[Dimension, ...]
    axes: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.dimensions) != len(self.axes):
            raise InvalidInput("one axis per dimension", field="domain")
        for i, axis in enumerate(self.axes):
            if not axis or len(set(axis)) != len(axis) or TOTAL in axis:
                raise InvalidInput(
                    "an axis lists distinct values, without 'totaal'", field=f"domain[{i}]"
                )
            if any(not v or len(v) > MAX_VALUE_CHARS for v in axis):
                raise InvalidInput("a value is empty or too long", field=f"domain[{i}].values")

    @classmethod
    def of(
        cls,
        dimensions: Sequence[Dimension],
        *,
        period: Period,
        roles: Sequence[str],
        categories: Sequence[str],
        areas: Sequence[str],
        branches: Sequence[str],
    ) -> Domain:
        """The domain a viewer asks for: the period's months, the covenant's roles and
        categories, its listed areas and branches, each with ``onbekend`` where a fact
        may lack the value, and ``overig``. ``InvalidInput`` (field ``dimensions[i]``)
        for an area or branch breakdown when the covenant lists none."""
        axes: list[tuple[str, ...]] = []
        for i, d in enumerate(dimensions):
            if d is Dimension.MONTH:
                values: tuple[str, ...] = period.months()
            elif d is Dimension.ROLE:
                values = tuple(sorted(set(roles)))
            elif d is Dimension.CATEGORY:
                values = (*categories, UNKNOWN)
            elif d in (Dimension.AREA, Dimension.BRANCH):
                listed = areas if d is Dimension.AREA else branches
                if not listed:
                    name = "areas" if d is Dimension.AREA else "branches"
                    raise InvalidInput(
                        f"the covenant lists no [picture] {name}: tables by {d.value} are "
                        f"shared over that public list; add it to the covenant",
                        field=f"dimensions[{i}]",
                        reason="picture.no_domain",
                    )
                values = (*listed, UNKNOWN)
            else:
                raise InvalidInput(
                    f"{d.value} is not counted by contributors", field=f"dimensions[{i}]"
                )
            axes.append(tuple(dict.fromkeys((*values, OTHER))))
        return cls(tuple(dimensions), tuple(axes))

    def to_proto(self) -> list[picture_pb2.PictureAxis]:
        return [
            picture_pb2.PictureAxis(dimension=d.to_proto(), values=list(axis))
            for d, axis in zip(self.dimensions, self.axes, strict=True)
        ]

    @classmethod
    def from_proto(
        cls, axes: Sequence[picture_pb2.PictureAxis], dimensions: Sequence[Dimension]
    ) -> Domain:
        """The domain a request carries, checked against its dimensions (field ``domain``)."""
        if len(axes) != len(dimensions):
            raise InvalidInput("one axis per dimension", field="domain")
        if sum(len(a.values) for a in axes) > common_pb2.LIMITS_MAX_PICTURE_CELLS:
            raise MessageTooLarge("too many axis values", field="domain")
        for i, (axis, d) in enumerate(zip(axes, dimensions, strict=True)):
            if Dimension.from_proto(axis.dimension, field=f"domain[{i}].dimension") is not d:
                raise InvalidInput("not the request's dimension", field=f"domain[{i}].dimension")
            if not axis.values or axis.values[-1] != OTHER:
                raise InvalidInput(f"an axis ends in {OTHER!r}", field=f"domain[{i}].values")
        return cls(tuple(dimensions), tuple(tuple(a.values) for a in axes))

    @property
    def leaves(self) -> int:
        n = 1
        for axis in self.axes:
            n *= len(axis)
        return n

    @property
    def cells(self) -> int:
        """Cells with totals: each axis has one value more, its total."""
        n = 1
        for axis in self.axes:
            n *= len(axis) + 1
        return n

    def leaf_keys(self) -> list[Key]:
        return list(itertools.product(*self.axes))

    def cell_keys(self) -> list[Key]:
        return list(itertools.product(*((*axis, TOTAL) for axis in self.axes)))

    def fold(self, key: Key) -> Key:
        """A value outside its axis becomes ``overig``."""
        return tuple(v if v in axis else OTHER for v, axis in zip(key, self.axes, strict=True))

    def digest(self, period: Period, measures: Sequence[Measure], *, exact: bool) -> bytes:
        """SHA-256 of what fixes the vector's layout, so that only shares of one layout sum."""
        text = json.dumps(
            {
                "period": str(period),
                "measures": [m.value for m in measures],
                "dimensions": [d.value for d in self.dimensions],
                "axes": [list(a) for a in self.axes],
                "exact": exact,
                "bands": BANDS,
            },
            sort_keys=True,
        )
        return crypto.digest(text.encode())


def vector_length(domain: Domain, measures: int, *, exact: bool) -> int:
    """How many values a contributor's vector has; ``MessageTooLarge`` (field
    ``dimensions``) beyond :data:`MAX_TOTAL_VALUES` (:data:`MAX_PARTS` parts)."""
    per_measure = domain.leaves + (domain.cells * BAND_WORDS if exact else 0)
    length = per_measure * measures
    if length > MAX_TOTAL_VALUES:
        raise MessageTooLarge(
            f"the shared tables would have {length} values, at most {MAX_TOTAL_VALUES} "
            f"({MAX_PARTS} parts of {MAX_VALUES}): ask for fewer dimensions or measures, "
            "or a shorter period",
            field="dimensions",
            reason="picture.too_large",
        )
    return length


# --- parts: a vector larger than one message ---------------------------------------------


def parts_needed(values: int) -> int:
    """How many parts a vector of ``values`` values travels in (at least one)."""
    return max(1, -(-values // MAX_VALUES))


@dataclass(frozen=True, slots=True, repr=False)
class Part:
    """One part of a shared vector as it travels: its place (``index`` of ``count``), the
    whole vector's length and SHA-256, and its own words (``data``)."""

    index: int
    count: int
    total_values: int
    digest: bytes
    data: bytes

    def __repr__(self) -> str:
        return f"Part(index={self.index}, count={self.count}, total_values={self.total_values})"

    def to_proto(self) -> picture_pb2.PicturePart:
        return picture_pb2.PicturePart(
            index=self.index,
            count=self.count,
            total_values=self.total_values,
            vector_digest=self.digest,
        )

    @classmethod
    def from_proto(cls, message: picture_pb2.PicturePart, data: bytes) -> Part:
        return cls(
            int(message.index),
            int(message.count),
            int(message.total_values),
            bytes(message.vector_digest),
            bytes(data),
        )

    @property
    def same_vector(self) -> tuple[int, int, bytes]:
        """What every part of one vector says alike."""
        return self.count, self.total_values, self.digest


def split(vector: bytes) -> list[Part]:
    """A vector (little-endian 64-bit words) cut into its parts, in order: one part for
    a vector of up to :data:`MAX_VALUES` values. ``MessageTooLarge`` (field ``share``)
    beyond :data:`MAX_TOTAL_VALUES`."""
    if len(vector) % WORD_BYTES:
        raise InvalidInput(f"a whole number of {WORD_BYTES}-byte values", field="share")
    total = len(vector) // WORD_BYTES
    if total > MAX_TOTAL_VALUES:
        raise MessageTooLarge(
            f"a shared vector has at most {MAX_TOTAL_VALUES} values, this one {total}",
            field="share",
            reason="picture.too_large",
        )
    count = parts_needed(total)
    digest = crypto.digest(vector)
    step = MAX_VALUES * WORD_BYTES
    return [Part(i, count, total, digest, vector[i * step : (i + 1) * step]) for i in range(count)]


def check_part(part: Part, *, values: int | None = None) -> None:
    """Refuse a part that does not describe itself consistently: a count of 1 to
    :data:`MAX_PARTS` that is exactly what its ``total_values`` needs (at most
    :data:`MAX_TOTAL_VALUES`, and ``values`` when the receiver knows the length), an
    index below the count, a 32-byte digest, and exactly the words its index holds.
    ``InvalidInput`` naming the field (``part.*``, ``share``)."""
    if not 1 <= part.total_values <= MAX_TOTAL_VALUES:
        raise InvalidInput(
            f"a shared vector has 1 to {MAX_TOTAL_VALUES} values", field="part.total_values"
        )
    if values is not None and part.total_values != values:
        raise InvalidInput(
            f"the request's vector has {values} values, the part says {part.total_values}",
            field="part.total_values",
        )
    if not 1 <= part.count <= MAX_PARTS or part.count != parts_needed(part.total_values):
        raise InvalidInput(
            f"{part.total_values} values travel in {parts_needed(part.total_values)} parts "
            f"(at most {MAX_PARTS})",
            field="part.count",
        )
    if not 0 <= part.index < part.count:
        raise InvalidInput(f"an index is 0 to {part.count - 1}", field="part.index")
    if len(part.digest) != crypto.DIGEST_BYTES:
        raise InvalidInput("a SHA-256 digest is 32 bytes", field="part.vector_digest")
    first = part.index * MAX_VALUES
    expected = min(MAX_VALUES, part.total_values - first) * WORD_BYTES
    if len(part.data) != expected:
        raise InvalidInput(
            f"part {part.index} of {part.count} holds {expected // WORD_BYTES} values",
            field="share",
        )


def join(parts: Iterable[Part], *, values: int | None = None) -> bytes | None:
    """The whole vector from its parts, in any order: None while a part is missing.
    ``InvalidInput`` naming the field if a part fails :func:`check_part`, the parts
    describe different vectors (``part``), two differ at one index (``part.index``; the
    same part twice is fine), or the whole does not match its digest
    (``part.vector_digest``)."""
    by_index: dict[int, Part] = {}
    described: tuple[int, int, bytes] | None = None
    for part in parts:
        check_part(part, values=values)
        if described is None:
            described = part.same_vector
        elif part.same_vector[:2] != described[:2] or not crypto.equal(part.digest, described[2]):
            raise InvalidInput("parts of different vectors", field="part")
        held = by_index.setdefault(part.index, part)
        if held is not part and not crypto.equal(held.data, part.data):
            raise InvalidInput("two different parts at one index", field="part.index")
    if described is None or len(by_index) < described[0]:
        return None
    whole = b"".join(by_index[i].data for i in range(described[0]))
    if not crypto.equal(crypto.digest(whole), described[2]):
        raise InvalidInput(
            "the parts do not make the vector they describe", field="part.vector_digest"
        )
    return whole


def encode(
    tables: Sequence[Table], domain: Domain, measures: Sequence[Measure], *, exact: bool
) -> list[int]:
    """A contributor's vector: its table of each measure in ``measures`` order (each
    folded into the domain), then in exact mode the band indicators of every cell."""
    vector_length(domain, len(measures), exact=exact)
    by_measure = {t.measure: t for t in tables}
    if set(by_measure) != set(measures) or len(tables) != len(measures):
        raise InvalidInput("one table per measure", field="tables")
    leaves = domain.leaf_keys()
    cells = domain.cell_keys() if exact else []
    out: list[int] = []
    for measure in measures:
        table = by_measure[measure]
        if table.dimensions != domain.dimensions:
            raise InvalidInput("the table has other dimensions", field="tables")
        folded: dict[Key, int] = {}
        for key, value in table.items():
            k = domain.fold(key)
            folded[k] = folded.get(k, 0) + value
        out.extend(folded.get(k, 0) for k in leaves)
        if exact:
            totals = with_totals(
                Table(measure, domain.dimensions, table.period, {k: v for k, v in folded.items()})
            )
            for key in cells:
                out.extend(_packed(band_of(totals.get(key, 0))))
    return out


def _packed(band: int | None) -> list[int]:
    """A band's one-hot indicators as :data:`BAND_WORDS` values (all 0 for no band)."""
    words = [0] * BAND_WORDS
    if band is not None:
        words[band // BANDS_PER_WORD] = BAND_BASE ** (band % BANDS_PER_WORD)
    return words


def _unpacked(words: Sequence[int]) -> tuple[int, ...]:
    """How many contributors fall in each band, from a cell's summed words; a word that
    is not a sum of indicators (negative, or beyond its digits) is refused."""
    counts: list[int] = []
    for word in words:
        if not 0 <= word < BAND_BASE**BANDS_PER_WORD:
            raise InvalidInput("a band count is out of range", field="sum")
        for _ in range(BANDS_PER_WORD):
            word, digit = divmod(word, BAND_BASE)
            counts.append(digit)
    return tuple(counts[:BANDS])


@dataclass(frozen=True, slots=True)
class SharedSum:
    """The sum over the aggregator's contributors of one measure: the leaf counts and, in
    exact mode, per cell (totals included) how many contributors fall in each band."""

    measure: Measure
    counts: Mapping[Key, int]
    bands: Mapping[Key, tuple[int, ...]]


def decode(
    values: Sequence[int], domain: Domain, measures: Sequence[Measure], *, exact: bool
) -> list[SharedSum]:
    """Split a summed vector (signed 64-bit values) back into its measures."""
    if len(values) != vector_length(domain, len(measures), exact=exact):
        raise InvalidInput("the sum has another length than the request's", field="sum")
    leaves = domain.leaf_keys()
    cells = domain.cell_keys() if exact else []
    out: list[SharedSum] = []
    at = 0
    for measure in measures:
        counts = dict(zip(leaves, values[at : at + len(leaves)], strict=True))
        at += len(leaves)
        bands: dict[Key, tuple[int, ...]] = {}
        for key in cells:
            bands[key] = _unpacked(values[at : at + BAND_WORDS])
            at += BAND_WORDS
        out.append(SharedSum(measure, counts, bands))
    return out


def cell_facts(others: Table, bands: Mapping[Key, tuple[int, ...]]) -> dict[Key, CellFacts]:
    """The facts ``picture.primary_sensitive`` judges, for every cell of ``others`` (the
    others' sums, with totals): their sum, how many of them contributed (the sum of the
    band counts) and the top of the highest non-empty band as a bound of the largest
    contribution (None if that band is open, or in noisy mode where no bands are sent)."""
    facts: dict[Key, CellFacts] = {}
    for key, value in others.items():
        counted = bands.get(key)
        if counted is None:
            facts[key] = CellFacts(value)
            continue
        highest = max((b for b, n in enumerate(counted) if n > 0), default=None)
        facts[key] = CellFacts(value, sum(counted), None if highest is None else band_top(highest))
    return facts
