"""Where a node's picture requests come and go: the protocol's decisions, kept in the store.

A thin adapter between :mod:`samenloop.node.picture.protocol` (the messages and
rules), :mod:`samenloop.node.picture.arithmetic` (the arithmetic), the node's store and its
keys. The local API collects and shows through it (:meth:`PictureDesk.collect`,
:meth:`PictureDesk.show`); the uplink hands it the relayed picture requests and
contributions (:meth:`PictureDesk.receive`, registered with the disclosure
desk's dispatch by signed context). Every outcome is stored in one transaction
with what it causes: a collection with its envelopes and this node's own
answer; an incoming request with the budget it spends, its answer and the
mailbox cursor; a contribution with the cursor.

As the covenant's picture aggregator it also keeps the second shares partners send
(:meth:`PictureDesk.receive_share`) and answers a viewer's one sum request per request
id (:meth:`PictureDesk.receive_sum_request`); as viewer it asks for that sum once its
partners answered (or the answer window passed) and keeps only the result
(:meth:`PictureDesk.receive_sum`).

A share or sum larger than one message arrives in parts: each part is kept with the
mailbox cursor until the last one completes the vector (``picture_shares.join``), which
is then handled as a whole one would be, its parts deleted in the same transaction;
nothing of an incomplete vector counts (no answer, no share summed).

Log lines and audit entries carry ids, names, outcomes and epsilon: never a
count, an area, a branch or a category.

Over 800 lines: one desk for a collection's whole life (ask, answer, shares, sums, parts,
release), each step a store transaction around the protocol's decision.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from samenloop.node.daemon.database import SealedEnvelope
from samenloop.node.disclosure.protocol import check_officer
from samenloop.node.picture import arithmetic as picture
from samenloop.node.picture import protocol as picture_protocol
from samenloop.node.picture import shares as picture_shares
from samenloop.node.picture import tau as picture_tau
from samenloop.node.picture.arithmetic import Dimension, Key, Measure, Period, ReleasedTable, Table
from samenloop.node.picture.models import PicturePartKind
from samenloop.node.picture.protocol import PictureAsk, PictureRefusal, PictureVerdict
from samenloop.node.picture.shares import Domain
from samenloop.node.picture.store import (
    HeldPictureShare,
    NewPictureAnswer,
    NewPictureCollection,
    NewPictureContribution,
    PictureCollectionRecord,
    PictureStore,
)
from samenloop.node.picture.tau import TauArgusUnavailable
from samenloop.policies import crypto
from samenloop.policies.audit import AuditKind
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    CovenantStale,
    InvalidInput,
    MessageTooLarge,
    NotAllowed,
    NotFound,
    SamenloopError,
)
from samenloop.policies.rules import may_see_picture
from samenloop.v1 import picture_pb2

__all__ = ["PictureCost", "PictureDesk", "PictureView"]

log = structlog.get_logger(__name__)

ID_BYTES = picture_protocol.ID_BYTES
_UNITS = 1_000_000_000
#: How a contribution this node rejected is kept: as a refusal with this reason, the
#: message saying why (the wire has no reason of its own for it).
_REJECTED = PictureRefusal.INVALID_REQUEST
_REJECTED_PREFIX = "rejected by the viewer: "
#: Protected cubes kept in memory (a report shows several views of one cube in a row).
_CUBES_KEPT = 8
#: At most this many planned requests in one budget check (a report makes five).
_MAX_PLANNED = 100


def _why(error: Exception) -> str:
    if isinstance(error, SamenloopError):
        return f"{error.field}: {error.message}" if error.field else error.message
    return "not a PictureContribution"


@dataclass(frozen=True, slots=True)
class PictureView:
    """A collection as the viewer may see it: one released table (disclosure control
    applied), who contributed, who refused (with reason and message) and who is missing."""

    request_id: bytes
    table: ReleasedTable
    contributors: tuple[str, ...]
    missing: tuple[str, ...]
    refusals: tuple[tuple[str, PictureRefusal, str], ...]


class _Mode(enum.Enum):
    """How a collection was counted: exact, noisy, or not at all (no counts yet)."""

    EXACT = "exact"
    NOISY = "noisy"
    EMPTY = "empty"


def _mode(record: PictureCollectionRecord) -> _Mode:
    counted = [c for c in record.contributions if c.refusal_reason is None]
    if not counted:
        return _Mode.EMPTY
    return _Mode.NOISY if all(c.epsilon_spent > 0 for c in counted) else _Mode.EXACT


@dataclass(frozen=True, slots=True)
class PictureCost:
    """What collecting a period costs under the covenant's privacy budget: ``needed``
    epsilon on each month of the period (at this node and at every contributor, for
    the planned requests), against ``remaining``, what this node has left on the
    period's most spent month. Exact mode (no budget) costs nothing."""

    period: Period
    noisy: bool
    planned_requests: int
    needed: float
    remaining: float

    @property
    def fits(self) -> bool:
        return not self.noisy or round(self.needed * _UNITS) <= round(self.remaining * _UNITS)

    def describe(self) -> str:
        if not self.noisy:
            return f"{self.period}: exact mode, no privacy budget to spend"
        requests = "request" if self.planned_requests == 1 else "requests"
        return (
            f"{self.period} needs epsilon {self.needed:g} on each of its months "
            f"({self.planned_requests} {requests}), {self.remaining:g} left"
        )


def ask_of(record: PictureCollectionRecord) -> PictureAsk:
    """What a stored collection asked for."""
    return PictureAsk(
        Period(record.first_month, record.last_month),
        tuple(Measure(m) for m in record.measures),
        tuple(Dimension(d) for d in record.dimensions),
    )


def remote_ask(record: PictureCollectionRecord) -> PictureAsk | None:
    """What the other parties were asked, with the domain their shares are over; None
    for a collection that sent no request (or one kept by a version before secure
    aggregation)."""
    if record.request_body is None:
        return None
    message = picture_pb2.PictureRequest.FromString(record.request_body)
    own = ask_of(record)
    domain = Domain.from_proto(message.domain, own.dimensions)
    return PictureAsk(own.period, own.remote_measures, own.dimensions, domain)


def _aggregator_in(record: PictureCollectionRecord) -> str:
    assert record.request_body is not None
    return picture_pb2.PictureRequest.FromString(record.request_body).aggregator


def _reordered(keys: Sequence[int], cells: Mapping[Key, Any]) -> dict[Key, Any]:
    return {tuple(k[i] for i in keys): v for k, v in cells.items()}


def prior_of(record: PictureCollectionRecord) -> picture_protocol.PriorCollection:
    """A stored collection for the exact-mode period check: noisy only if it holds at
    least one contribution with counts and every such contribution spent epsilon."""
    counted = [c for c in record.contributions if c.refusal_reason is None]
    return picture_protocol.PriorCollection(
        record.request_id,
        Period(record.first_month, record.last_month),
        tuple(Measure(m) for m in record.measures),
        noisy=bool(counted) and all(c.epsilon_spent > 0 for c in counted),
    )


def _unlisted(covenant: Covenant, measures: Sequence[Measure]) -> tuple[Dimension, ...]:
    """The dimensions a period's cube of ``measures`` leaves out under ``covenant``: area
    and branch when its ``[picture]`` lists no public values for them (partners share
    tables only over the covenant's public lists; ``picture_shares``), and role for the
    partners' measures (exact mode, where the cube is counted: a role's cells would be
    one partner's own counts, ``picture_protocol.check_role_breakdown``)."""
    rule = covenant.policy.picture
    partners = any(m in picture_protocol.SIGNAL_MEASURES for m in measures)
    return (
        *((Dimension.AREA,) if not rule.areas else ()),
        *((Dimension.BRANCH,) if not rule.branches else ()),
        *((Dimension.ROLE,) if partners else ()),
    )


@dataclass(frozen=True, slots=True)
class _Combined:
    """What a collection adds up to for one measure, before disclosure control."""

    table: Table
    #: The cells the covenant's rules find sensitive on the partners' counts alone
    #: (None: the plain small-count rule on the table).
    primary: frozenset[Key] | None
    contributors: tuple[str, ...]
    missing: tuple[str, ...]
    refusals: tuple[tuple[str, PictureRefusal, str], ...]


class PictureDesk:
    """This node's side of the regional picture, as viewer and as contributor."""

    def __init__(
        self,
        *,
        keys: PartyKeys,
        covenant: Callable[[], Covenant],
        store: PictureStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        wake: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
        stale: Callable[[], str | None] = lambda: None,
        answer_window: timedelta = timedelta(minutes=15),
        work_dir: Path | None = None,
    ) -> None:
        """``rng`` seeds the noise for reproducible tests; by default OpenDP draws it.
        ``work_dir`` (the node's owner-only data directory) holds τ-Argus's work files
        while it protects a cube; by default the system's temporary directory.
        ``stale`` says why the node is stale (no unexpired covenant timestamp), None while
        it is fresh: a stale node neither asks for the picture nor contributes to one."""
        self._stale = stale
        self._work_dir = work_dir
        self._answer_window = answer_window
        self._keys = keys
        self._me = keys.party
        self._covenant = covenant
        self._store = store
        self._clock = clock
        self._random = random_bytes
        self._rng = rng
        self._cubes: dict[tuple[Table, frozenset[Key] | None, int], tuple[ReleasedTable, str]] = {}
        self.wake = wake

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def register(self, handlers: dict[SignatureContext, Callable[..., None]]) -> None:
        """Add this desk to a dispatch of relayed messages by signed context."""
        handlers[SignatureContext.PICTURE_REQUEST] = self.receive_request
        handlers[SignatureContext.PICTURE_CONTRIBUTION] = self.receive_contribution
        handlers[SignatureContext.PICTURE_SHARE] = self.receive_share
        handlers[SignatureContext.PICTURE_SUM_REQUEST] = self.receive_sum_request
        handlers[SignatureContext.PICTURE_SUM] = self.receive_sum

    # --- counting, for this node and for others -------------------------------------------

    def _verdict(self, covenant: Covenant, ask: PictureAsk) -> PictureVerdict:
        """The budget decision for this node's own contribution to its own collection."""
        rule = covenant.policy.picture
        if not rule.noisy:
            return PictureVerdict(ask)
        ledger = self._store.picture_ledger(ask.period.months())
        try:
            after = ledger.spend(
                ask.period, rule.epsilon_per_request, budget_per_period=rule.epsilon_per_period
            )
        except picture.BudgetExhausted as error:
            return PictureVerdict(ask, PictureRefusal.BUDGET_EXHAUSTED, error.message)
        remaining = after.remaining(ask.period, budget_per_period=rule.epsilon_per_period)
        return PictureVerdict(ask, epsilon=rule.epsilon_per_request, epsilon_remaining=remaining)

    def _tables(self, covenant: Covenant, ask: PictureAsk, verdict: PictureVerdict) -> list[Table]:
        first, last = ask.period.first_month, ask.period.last_month
        measures = set(ask.measures)
        signals = (
            self._store.picture_signal_facts(first, last)
            if Measure.ACTIVE_SIGNALS in measures
            else []
        )
        groups = (
            self._store.picture_hit_group_facts(first, last)
            if Measure.HIT_GROUPS in measures
            else []
        )
        cases: list[picture.CaseFacts] = []
        if measures & picture_protocol.CASE_MEASURES:
            cases = [
                picture.CaseFacts(picture.CaseEvent(a.kind), a.intervention_type, a.month)
                for a in self._store.case_activity(first, last)
            ]
        return picture_protocol.count_tables(
            covenant,
            self._me,
            ask,
            signals=signals,
            hit_groups=groups,
            cases=cases,
            epsilon=verdict.epsilon,
            rng=self._rng,
        )

    @staticmethod
    def _answer(
        request_id: bytes, requester: str, ask: PictureAsk | None, verdict: PictureVerdict
    ) -> NewPictureAnswer:
        measures, dimensions = ask.names() if ask is not None else ((), ())
        return NewPictureAnswer(
            request_id=request_id,
            requester=requester,
            refusal_reason=None if verdict.refusal is None else verdict.refusal.value,
            measures=measures,
            dimensions=dimensions,
            months=ask.period.months() if ask is not None and verdict.epsilon else (),
            spent_units=verdict.spent_units,
            epsilon_spent=verdict.epsilon,
        )

    def _budget_units(self, covenant: Covenant) -> int:
        return round(covenant.policy.picture.epsilon_per_period * _UNITS)

    # --- as viewer -----------------------------------------------------------------------

    def cost(self, period: Period, *, planned_requests: int = 1) -> PictureCost:
        """What ``planned_requests`` requests for ``period`` would spend of the budget,
        and what this node has left: shown before anything is spent."""
        if isinstance(planned_requests, bool) or not 1 <= planned_requests <= _MAX_PLANNED:
            raise InvalidInput(
                f"must be 1 to {_MAX_PLANNED}", field="planned_requests", reason="picture.epsilon"
            )
        rule = self._covenant().policy.picture
        if not rule.noisy:
            return PictureCost(period, False, planned_requests, 0.0, 0.0)
        ledger = self._store.picture_ledger(period.months())
        return PictureCost(
            period,
            True,
            planned_requests,
            rule.epsilon_per_request * planned_requests,
            ledger.remaining(period, budget_per_period=rule.epsilon_per_period),
        )

    def plan(self, ask: PictureAsk, *, planned_requests: int = 1) -> PictureCost:
        """What collecting ``ask`` (and ``planned_requests - 1`` more like it) would cost,
        after the checks ``collect`` makes of the ask (``NotAllowed`` for a party that
        may not see the picture, ``InvalidInput`` naming the field); nothing is stored."""
        covenant = self._covenant()
        picture_protocol.check_ask(covenant, self._me, ask)
        if not covenant.policy.picture.noisy:
            self._cube_ask(covenant, ask)
        return self.cost(ask.period, planned_requests=planned_requests)

    def collect(
        self, ask: PictureAsk, *, officer: str, planned_requests: int = 1
    ) -> tuple[bytes, tuple[str, ...]]:
        """Start a collection: the request sealed to every other party (for the signal
        measures), this node's own counts kept. Returns the request id and the parties
        asked (this node first). ``NotAllowed`` if this party may not see the picture;
        ``InvalidInput`` naming the field for a bad request; ``BudgetExhausted`` (field
        ``period``, with the cost and what is left) if this node's budget does not cover
        ``planned_requests`` requests like this one. Nothing is stored or sent then.

        In exact mode the collection counts the period's whole cube (every dimension of
        its measures, ``picture.CUBE_DIMENSIONS``); once every measure asked has its cube
        of the period, nothing is asked again and the (first) cube's id is returned."""
        check_officer(officer)
        stale = self._stale()
        if stale is not None:
            raise CovenantStale(stale, field="covenant")
        covenant = self._covenant()
        picture_protocol.check_ask(covenant, self._me, ask)
        cost = self.cost(ask.period, planned_requests=planned_requests)
        if not cost.fits:
            raise picture.BudgetExhausted(
                f"the privacy budget does not cover this: {cost.describe()}; nothing was "
                "spent (see docs/picture.md, planning periods)",
                field="period",
            )
        if not covenant.policy.picture.noisy:
            # Exact: count the period's whole cube, whatever view was asked for; every view
            # is then a slice of one protected cube (docs/picture.md, linked tables).
            ask = self._cube_ask(covenant, ask)
            cubes = [self._cube(ask.period, m) for m in ask.measures]
            if all(cubes) and cubes[0] is not None:
                # Every measure's cube of the period is counted already; what is shown of
                # it is derived from that cube, so ask no one again.
                log.info("picture collection reused", measures=",".join(ask.names()[0]))
                return cubes[0].request_id, cubes[0].asked
        self._check_periods(covenant, None, ask)
        for attempt in (1, 2):
            now = self._now()
            request_id = self._random(ID_BYTES)
            others = (
                [p.id for p in covenant.parties if p.id != self._me] if ask.remote_measures else []
            )
            message = (
                picture_protocol.request_message(
                    covenant, self._me, ask, request_id=request_id, now=now
                )
                if others
                else None
            )
            envelopes = [
                SealedEnvelope.of(
                    picture_protocol.build_request(
                        self._keys,
                        covenant,
                        message,
                        recipient=party,
                        message_id=self._random(ID_BYTES),
                    )
                )
                for party in others
                if message is not None
            ]
            verdict = self._verdict(covenant, ask)
            if verdict.refusal is PictureRefusal.BUDGET_EXHAUSTED:
                # Spent meanwhile: ask no one rather than have the others spend theirs.
                raise picture.BudgetExhausted(verdict.message, field="period")
            tables = self._tables(covenant, ask, verdict) if verdict.refusal is None else []
            own = picture_protocol.contribution(
                covenant,
                self._me,
                request_id,
                verdict,
                tables,
                period=ask.period.to_proto(),
                now=now,
            )
            measures, dimensions = ask.names()
            asked = (self._me, *others)
            try:
                self._store.start_picture_collection(
                    NewPictureCollection(
                        request_id=request_id,
                        first_month=ask.period.first_month,
                        last_month=ask.period.last_month,
                        measures=measures,
                        dimensions=dimensions,
                        asked=asked,
                        officer=officer,
                        covenant_version=covenant.version,
                        request_body=None if message is None else message.SerializeToString(),
                    ),
                    envelopes,
                    self._answer(request_id, self._me, ask, verdict),
                    NewPictureContribution(
                        request_id=request_id,
                        contributor=self._me,
                        contributor_role=own.contributor_role,
                        refusal_reason=None if verdict.refusal is None else verdict.refusal.value,
                        refusal_message=None if verdict.refusal is None else verdict.message,
                        epsilon_spent=verdict.epsilon,
                        body=own.SerializeToString(),
                    ),
                    budget_units=self._budget_units(covenant),
                    now=now,
                )
            except picture.BudgetExhausted:
                if attempt == 2:
                    raise
                continue  # another request spent the budget meanwhile: decide again
            break
        self.wake()
        log.info(
            "picture collection started",
            asked=len(asked),
            measures=",".join(measures),
            dimensions=",".join(dimensions),
        )
        return request_id, asked

    def _check_periods(self, covenant: Covenant, request_id: bytes | None, ask: PictureAsk) -> None:
        """In exact mode: no other collection of a measure of ``ask`` over an overlapping
        but different period (``picture_protocol.check_periods``)."""
        if covenant.policy.picture.noisy:
            return
        prior = self._store.picture_collections_overlapping(
            ask.period.first_month, ask.period.last_month
        )
        picture_protocol.check_periods(
            request_id, ask.period, ask.measures, [prior_of(r) for r in prior]
        )

    def _collection(
        self,
        request_id: bytes | None,
        period: Period | None,
        measure: Measure,
        dimensions: Sequence[Dimension],
    ) -> PictureCollectionRecord:
        """The collection asked for: by id; else the period's cube of ``measure`` (exact
        mode); else the latest collection of the period by exactly ``dimensions``."""
        if request_id:
            if len(request_id) != ID_BYTES:
                raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
            record = self._store.picture_collection(request_id)
            if record is None:
                raise NotFound("no picture collection with this id", field="request_id")
            return record
        if period is None:
            raise InvalidInput("give a period or a request id", field="period")
        cube = self._cube(period, measure)
        if cube is not None:
            return cube
        wanted = set(dimensions)
        for record in self._store.picture_collections(
            first_month=period.first_month, last_month=period.last_month
        ):
            if measure.value in record.measures and set(record.dimensions) == wanted:
                return record
        by = ",".join(d.value for d in dimensions) or "(none)"
        raise NotFound(
            f"no collection of {period} by {by} with {measure.value}: collect it first "
            f"(samenloop picture collect --period {period} --by {by})",
            field="period",
            reason="picture.not_collected",
        )

    def _cube_ask(self, covenant: Covenant, ask: PictureAsk) -> PictureAsk:
        """What an exact collection of ``ask`` counts: the period's whole cube of its
        measures, checked as the ask was (its shared vector's size: ``MessageTooLarge``
        naming ``dimensions`` before anything is stored or sent, rather than every partner
        refusing a cube the analyst never asked for by name)."""
        cube = PictureAsk(
            ask.period,
            ask.measures,
            picture.cube_dimensions(ask.measures, without=_unlisted(covenant, ask.measures)),
        )
        picture_protocol.check_ask(covenant, self._me, cube)
        return cube

    def _cube(self, period: Period, measure: Measure) -> PictureCollectionRecord | None:
        """The period's exact cube of ``measure``: its first exact collection by the
        measure's cube dimensions that holds counts. Every view of the period and
        measure is released from it, also when the period is collected again later,
        so that the tables released of one period are all slices of one protected cube
        (a second cube, of slightly other counts, could be subtracted from the first)."""
        cube = picture.cube_dimensions((measure,), without=_unlisted(self._covenant(), (measure,)))
        cube_dims = tuple(d.value for d in cube)
        for record in self._store.picture_collections_overlapping(
            period.first_month, period.last_month
        ):
            if (
                record.first_month == period.first_month
                and record.last_month == period.last_month
                and measure.value in record.measures
                and record.dimensions == cube_dims
                and _mode(record) is _Mode.EXACT
                and self._counts_or_will(record, measure)
            ):
                return record
        return None

    def _counts_or_will(self, record: PictureCollectionRecord, measure: Measure) -> bool:
        """Whether a collection is, or may still become, the period's counts of
        ``measure``: the partners' sum is in, or still to come (the aggregator has not
        refused it and some partner has not refused to contribute). A collection that
        failed as a whole (every partner refused, or the aggregator did) is no cube: the
        period may be collected again, as no sum of it was ever released."""
        if measure not in ask_of(record).remote_measures or record.aggregate is not None:
            return True
        if record.aggregate_refusal is not None:
            return False
        if self._too_few_to_sum(record, self._covenant().policy.picture.min_contributors):
            return False
        refused = {c.contributor for c in record.contributions if c.refusal_reason is not None}
        return any(p not in refused for p in record.asked if p != self._me)

    def show(
        self,
        *,
        measure: Measure,
        dimensions: Sequence[Dimension],
        period: Period | None = None,
        request_id: bytes | None = None,
    ) -> PictureView:
        """A table of the combined counts after the covenant's disclosure control: small
        cells suppressed with complementary suppression against the totals, each figure
        marked exact, noisy (with its scale) or suppressed.

        Exact mode: the table by ``dimensions`` is a slice of the period's one protected
        cube of ``measure`` (``_cube``; any subset of its dimensions, in any order), also
        when asked for by the id of a later collection of the same period, so that no
        two tables released of a period can be played against each other. Noisy mode
        (and a collection without counts): the given collection, else the latest of the
        period with these dimensions, by the dimensions it was made by only."""
        covenant = self._covenant()
        if not may_see_picture(covenant, self._me):
            raise NotAllowed(
                "the covenant no longer lets this party see the picture",
                field="party",
                reason="picture.not_a_viewer",
            )
        dims = tuple(dimensions)
        if len(set(dims)) != len(dims):
            raise InvalidInput("a dimension is repeated", field="dimensions")
        record = self._collection(request_id, period, measure, dims)
        ask = ask_of(record)
        min_count = covenant.policy.picture.min_cell_count
        exact = _mode(record) is _Mode.EXACT
        cube = self._cube(ask.period, measure) if exact else None
        if (
            exact
            and cube is None
            and ask.dimensions
            == picture.cube_dimensions((measure,), without=_unlisted(covenant, (measure,)))
        ):
            cube = record  # a collection of the cube that failed as a whole: shown as it is
        if cube is None and measure not in ask.measures:
            raise InvalidInput("the collection did not count this measure", field="measure")
        if exact:
            if cube is None:
                raise InvalidInput(
                    "an older version collected this period by other dimensions than its "
                    "cube; collect the period again",
                    field="request_id" if request_id else "period",
                    reason="picture.not_collected",
                )
            record, ask = cube, ask_of(cube)
            self._check_periods(covenant, record.request_id, ask)
            combined = self._combined(covenant, record, ask, measure, ask.dimensions)
            protected, suppression = self._release_cube(combined, min_count)
            released = picture.view(protected, dims)
        else:
            if set(dims) != set(ask.dimensions):
                raise InvalidInput(
                    "show the collection by the dimensions it was made by", field="dimensions"
                )
            combined = self._combined(covenant, record, ask, measure, dims)
            suppression = "samenloop"
            released = picture.release(
                picture.with_totals(combined.table), min_count=min_count, primary=combined.primary
            )
        self._store.audit_append(
            kind=AuditKind.PICTURE_EVENT,
            subject=[record.request_id.hex()],
            details={
                "event": "picture_shown",
                "measure": measure.value,
                "dimensions": ",".join(d.value for d in dims),
                "suppressed": len(released.suppressed),
                "suppression": suppression,
            },
            now=self._now(),
        )
        return PictureView(
            request_id=record.request_id,
            table=released,
            contributors=combined.contributors,
            missing=combined.missing,
            refusals=combined.refusals,
        )

    def _combined(
        self,
        covenant: Covenant,
        record: PictureCollectionRecord,
        ask: PictureAsk,
        measure: Measure,
        dims: tuple[Dimension, ...],
    ) -> _Combined:
        """The sum of a collection's counts of ``measure`` (this node's own plus the
        partners' sum from the aggregator), by ``dims`` (the collection's dimensions in
        another order), with the cells the covenant's rules find sensitive on the
        partners' counts alone, who is in it, who is missing and who refused."""
        order = [ask.dimensions.index(d) for d in dims]
        rule = covenant.policy.picture
        if measure in ask.remote_measures:
            self._maybe_ask_sum(record.request_id, covenant)  # dropouts: after the window
            record = self._store.picture_collection(record.request_id) or record
        remote = remote_ask(record) if measure in ask.remote_measures else None
        domain = None if remote is None else remote.domain
        own: Table | None = None
        refusals: list[tuple[str, PictureRefusal, str]] = []
        holders: list[str] = []
        for stored in record.contributions:
            if stored.refusal_reason is not None:
                refusals.append(
                    (
                        stored.contributor,
                        PictureRefusal(stored.refusal_reason),
                        stored.refusal_message or "",
                    )
                )
                continue
            if stored.contributor != self._me:
                holders.append(stored.contributor)
                continue
            try:  # this node's own counts, checked again for what an older version kept
                message = picture_pb2.PictureContribution.FromString(stored.body)
                received = picture_protocol.parse_contribution(
                    message,
                    ask,
                    sender=stored.contributor,
                    role=stored.contributor_role,
                    measures=ask.measures,
                )
            except (InvalidInput, MessageTooLarge, DecodeError) as error:
                refusals.append((stored.contributor, _REJECTED, _REJECTED_PREFIX + _why(error)))
                continue
            for found in received.tables:
                if found.measure is measure:
                    cells: dict[Key, int] = {}
                    for key, value in found.items():  # folded as the partners fold theirs
                        k = key if domain is None else domain.fold(key)
                        cells[k] = cells.get(k, 0) + value
                    own = Table(
                        measure, ask.dimensions, ask.period, cells, noise_scale=found.noise_scale
                    )
        contributors = [self._me] if own is not None else []
        summed = set(record.aggregate_contributors) if record.aggregate is not None else set()
        contributors += sorted(summed)
        others: Table | None = None
        bands: dict[Key, tuple[int, ...]] = {}
        if remote is not None and domain is not None and record.aggregate is not None:
            exact = not rule.noisy
            (shared,) = [
                s
                for s in picture_shares.decode(
                    crypto.share_values(record.aggregate),
                    domain,
                    remote.measures,
                    exact=rule.band_marks,
                )
                if s.measure is measure
            ]
            per_table = len(remote.measures)
            variance = 0.0
            for stored in record.contributions:  # independent noise: variances add
                if stored.contributor in summed and stored.epsilon_spent > 0:
                    sd = picture.discrete_laplace_sd(per_table / stored.epsilon_spent)
                    variance += sd**2
            counts = {k: v for k, v in shared.counts.items() if v != 0 or not exact}
            others = Table(
                measure, dims, ask.period, _reordered(order, counts), noise_scale=variance**0.5
            )
            bands = _reordered(order, shared.bands)
        # Who is in: the partners whose share was summed; the others refused (by their
        # node, the aggregator or this node), or are not summed yet (missing).
        not_summed = [h for h in holders if h not in summed]
        if record.request_body is None and measure in ask.remote_measures:
            why = "collected before secure aggregation: its counts were erased; collect again"
            refusals += [(h, _REJECTED, why) for h in not_summed]
        elif record.aggregate_refusal is not None:
            why = "not summed: " + record.aggregate_refusal
            refusals += [(h, _REJECTED, why) for h in not_summed]
        elif record.aggregate is not None:
            why = "answered after the sum was asked of the aggregator: not in it"
            refusals += [(h, _REJECTED, why) for h in not_summed]
        elif remote is not None and self._too_few_to_sum(record, rule.min_contributors):
            why = (
                f"not summed: {len(holders)} partner(s) contributed, the covenant needs "
                f"at least {rule.min_contributors} (so that no one partner's counts show)"
            )
            refusals += [(h, _REJECTED, why) for h in not_summed]
        own_table = (
            Table(measure, dims, ask.period, _reordered(order, own), noise_scale=own.noise_scale)
            if own is not None
            else None
        )
        parts = [t for t in (own_table, others) if t is not None]
        combined = picture.combine(parts) if parts else Table(measure, dims, ask.period, {})
        primary: set[Key] | None = None
        if others is not None:
            facts = picture_shares.cell_facts(picture.with_totals(others), bands)
            primary = picture.primary_sensitive(
                facts,
                picture.SensitivityRules(
                    rule.min_cell_count, rule.min_cell_contributors, rule.dominance_share
                ),
            )
        elif remote is not None:
            primary = set()  # only this node's own counts: nothing of a partner to protect
        settled = {r[0] for r in refusals} | summed | {self._me}
        return _Combined(
            table=combined,
            primary=None if primary is None else frozenset(primary),
            contributors=tuple(contributors),
            missing=tuple(p for p in record.asked if p not in settled),
            refusals=tuple(refusals),
        )

    def _release_cube(self, combined: _Combined, min_count: int) -> tuple[ReleasedTable, str]:
        """The protected cube (all its marginals with it) and whose complement it has,
        kept while its counts and sensitive cells are the same: the report asks for
        several views of one cube in a row.

        Two complements, each checked and completed by ``picture.release``: τ-Argus's
        (``picture_tau``) and the project's own; the one that gives up less
        (``picture.loss``) is released, τ-Argus's on a tie (its protection intervals are
        at least 10 % of a cell's value). Without τ-Argus, the project's own."""
        key = (combined.table, combined.primary, min_count)
        found = self._cubes.get(key)
        if found is None:
            cube = picture.with_totals(combined.table)
            primary = (
                picture.small_cells(cube, min_count)
                if combined.primary is None
                else set(combined.primary)
            )
            found = (picture.release(cube, min_count=min_count, primary=primary), "samenloop")
            if primary:
                try:
                    pattern = picture_tau.complement(
                        combined.table,
                        [cube.axis(d) for d in cube.dimensions],
                        primary,
                        work_dir=self._work_dir,
                    )
                except TauArgusUnavailable as error:
                    log.warning(
                        "picture suppression by tau-argus failed: the project's own is used",
                        why=error.message,
                    )
                else:
                    tau = picture.release(
                        cube, min_count=min_count, primary=primary, complement=pattern
                    )
                    if picture.loss(cube, tau) <= picture.loss(cube, found[0]):
                        found = (tau, "tau-argus")
            if len(self._cubes) >= _CUBES_KEPT:
                self._cubes.pop(next(iter(self._cubes)))
            self._cubes[key] = found
        return found

    # --- what the broker relays ---------------------------------------------------------

    def receive_request(self, cursor: int, sender: str, body: bytes, covenant: Covenant) -> None:
        """Decide a relayed picture request and answer it (counts or refusal), with the
        budget spent and the mailbox cursor, in one transaction. A malformed request
        raises ``InvalidInput`` and is dropped by the dispatch."""
        incoming = picture_protocol.parse_request(body, sender=sender)
        for attempt in (1, 2):
            now = self._now()
            verdict = picture_protocol.decide(
                covenant, self._me, incoming, self._store, now=now, stale=self._stale()
            )
            ask = verdict.ask
            tables: list[Table] = []
            if verdict.refusal is None and ask is not None:
                try:
                    tables = self._tables(covenant, ask, verdict)
                except MessageTooLarge as error:  # a legitimate request, too fine a breakdown
                    verdict = picture_protocol.too_large(ask, error)
            # Secure aggregation: the requester gets one share, the aggregator the other;
            # neither alone learns anything of this node's counts.
            mine: bytes | None = None
            also: list[SealedEnvelope] = []
            own_share: HeldPictureShare | None = None
            if verdict.refusal is None and ask is not None:
                marks = covenant.policy.picture.band_marks
                mine, theirs = picture_protocol.shares_of(tables, ask, exact=marks)
                digest = picture_protocol.request_digest(ask, exact=marks)
                aggregator = incoming.message.aggregator
                if aggregator == self._me:
                    own_share = HeldPictureShare(
                        self._me,
                        digest,
                        theirs,
                        ask.period.first_month,
                        ask.period.last_month,
                    )
                else:  # one message per part of a share larger than one message
                    for part in picture_shares.split(theirs):
                        share = picture_protocol.share_message(
                            incoming.request_id,
                            self._me,
                            incoming.requester,
                            digest,
                            theirs,
                            period=ask.period,
                            now=now,
                            part=part,
                        )
                        also.append(
                            SealedEnvelope.of(
                                picture_protocol.seal_message(
                                    self._keys,
                                    covenant,
                                    SignatureContext.PICTURE_SHARE,
                                    share.SerializeToString(),
                                    recipient=aggregator,
                                    message_id=self._random(ID_BYTES),
                                )
                            )
                        )
            parts: list[picture_shares.Part | None] = (
                [None] if mine is None else [*picture_shares.split(mine)]
            )
            envelope, *more = [
                SealedEnvelope.of(
                    picture_protocol.seal_contribution(
                        self._keys,
                        covenant,
                        picture_protocol.contribution(
                            covenant,
                            self._me,
                            incoming.request_id,
                            verdict,
                            (),
                            period=incoming.message.period,
                            now=now,
                            share=mine,
                            part=part,
                        ),
                        requester=incoming.requester,
                        message_id=self._random(ID_BYTES),
                    )
                )
                for part in parts
            ]
            also = [*more, *also]
            try:
                self._store.answer_picture_request(
                    cursor,
                    self._answer(incoming.request_id, incoming.requester, ask, verdict),
                    envelope,
                    budget_units=self._budget_units(covenant),
                    now=now,
                    also=also,
                    own_share=own_share,
                    requester=incoming.requester,
                )
            except picture.BudgetExhausted:
                if attempt == 2:
                    raise
                continue
            break
        self.wake()
        log.info(
            "picture request answered",
            outcome="refused" if verdict.refusal else "contributed",
            reason=None if verdict.refusal is None else verdict.refusal.value,
            epsilon=verdict.epsilon,
        )

    def receive_contribution(
        self, cursor: int, sender: str, body: bytes, covenant: Covenant
    ) -> None:
        """Keep a relayed contribution to one of this node's collections, with the cursor.
        One for an unknown collection or from a party not asked is dropped."""
        message = picture_pb2.PictureContribution.FromString(body)
        request_id, _ = picture_protocol.read_contribution(message)
        record = self._store.picture_collection(request_id)
        now = self._now()
        if record is None or sender not in record.asked or sender == self._me:
            self._store.receive_picture_contribution(
                cursor,
                NewPictureContribution(request_id, sender, "", None, None, 0.0, b"-"),
                now=now,
            )
            log.warning("picture contribution dropped", why="not asked")
            return
        try:
            if not covenant.is_party(sender):
                raise InvalidInput("no longer a party of the covenant", field="contributor")
            role = covenant.role_of(sender).value
            remote = remote_ask(record)
            if remote is None:  # kept by a version before secure aggregation: no tables now
                raise InvalidInput(
                    "a collection made before secure aggregation takes no partner's counts",
                    field="request_id",
                )
            received = picture_protocol.parse_contribution(
                message,
                ask_of(record),
                sender=sender,
                role=role,
                share_values=self._values(covenant, remote),
            )
            if received.part is not None:
                whole = self._joined(
                    cursor, PicturePartKind.CONTRIBUTION, request_id, sender, received.part
                )
                if whole is None:
                    return  # kept with the cursor: the share is used once every part is in
                message.share = whole
                message.ClearField("part")
                body = message.SerializeToString()
                received = dataclasses.replace(received, share=whole, part=None)
        except (InvalidInput, MessageTooLarge) as error:
            # Kept as refused, with why, so that the collection shows it and it counts nowhere.
            kept = self._store.receive_picture_contribution(
                cursor,
                NewPictureContribution(
                    request_id=request_id,
                    contributor=sender,
                    contributor_role="",
                    refusal_reason=_REJECTED.value,
                    refusal_message=(_REJECTED_PREFIX + _why(error))[
                        : picture_protocol.MAX_TEXT_BYTES
                    ],
                    epsilon_spent=0.0,
                    body=b"-",
                ),
                now=now,
            )
            log.warning("picture contribution rejected", field=error.field, kept=kept)
            return
        kept = self._store.receive_picture_contribution(
            cursor,
            NewPictureContribution(
                request_id=request_id,
                contributor=sender,
                contributor_role=received.contributor_role,
                refusal_reason=None if received.refusal is None else received.refusal.value,
                refusal_message=None if received.refusal is None else received.message,
                epsilon_spent=received.epsilon_spent,
                body=body,
            ),
            now=now,
        )
        log.info(
            "picture contribution received",
            refused=received.refusal is not None,
            reason=None if received.refusal is None else received.refusal.value,
            kept=kept,
        )
        self._maybe_ask_sum(request_id, covenant)

    # --- secure aggregation (issue 13) -----------------------------------------------------

    def _joined(
        self,
        cursor: int,
        kind: PicturePartKind,
        request_id: bytes,
        sender: str,
        part: picture_shares.Part,
    ) -> bytes | None:
        """The whole vector once ``part`` completes it (checked: ``picture_shares.join``,
        ``InvalidInput`` naming the field for parts that do not fit together), for the
        caller to keep with the cursor; else None, and the part is kept with the cursor
        (or dropped, if that vector is settled already)."""
        held = self._store.picture_parts(kind, request_id, sender)
        whole = picture_shares.join([*held, part], values=part.total_values)
        if whole is None:
            kept = self._store.keep_picture_part(
                cursor, kind, request_id, sender, part, now=self._now()
            )
            log.info("picture part received", of=kind.value, kept=kept)
        return whole

    @staticmethod
    def _values(covenant: Covenant, remote: PictureAsk) -> int:
        assert remote.domain is not None
        return picture_shares.vector_length(
            remote.domain, len(remote.measures), exact=covenant.policy.picture.band_marks
        )

    def _share_holders(self, record: PictureCollectionRecord) -> list[str]:
        """The partners whose share of this collection this node holds."""
        return [
            c.contributor
            for c in record.contributions
            if c.contributor != self._me and c.refusal_reason is None and c.body != b"-"
        ]

    def _too_few_to_sum(self, record: PictureCollectionRecord, min_contributors: int) -> bool:
        """Whether a collection will never be summed: no sum was asked, none will be (every
        answer is in or the window has passed), and fewer partners than the covenant's
        ``min_contributors`` hold a share of it."""
        return (
            record.sum_requested_at is None
            and self._sum_due(record)
            and len(self._share_holders(record)) < min_contributors
        )

    def _sum_due(self, record: PictureCollectionRecord) -> bool:
        """Whether to ask the aggregator now: every party asked has answered, or the answer
        window since the collection started has passed."""
        answered = {c.contributor for c in record.contributions}
        everyone = all(p in answered for p in record.asked if p != self._me)
        late = self._now() - record.created_at.astimezone(UTC) >= self._answer_window
        return everyone or late

    def _maybe_ask_sum(self, request_id: bytes, covenant: Covenant) -> None:
        """Ask the aggregator, once, for the sum over the partners whose share this node
        holds: when every party asked has answered, or the answer window has passed
        (a partner that does not answer is then in neither set). Not with fewer
        holders than the covenant's ``min_contributors``: it would refuse."""
        record = self._store.picture_collection(request_id)
        if record is None or record.request_body is None or record.sum_requested_at is not None:
            return
        holders = self._share_holders(record)
        if not self._sum_due(record) or len(holders) < covenant.policy.picture.min_contributors:
            return
        now = self._now()
        message = picture_protocol.sum_request_message(request_id, self._me, holders, now=now)
        envelope = picture_protocol.seal_message(
            self._keys,
            covenant,
            SignatureContext.PICTURE_SUM_REQUEST,
            message.SerializeToString(),
            recipient=_aggregator_in(record),
            message_id=self._random(ID_BYTES),
        )
        if self._store.request_picture_sum(
            request_id, holders, SealedEnvelope.of(envelope), now=now
        ):
            self.wake()
            log.info("picture sum requested", contributors=len(holders))

    def receive_share(self, cursor: int, sender: str, body: bytes, covenant: Covenant) -> None:
        """At the aggregator: keep a contributor's second share (with the cursor), then
        answer the viewer's sum request if it waited for this share."""
        share = picture_protocol.parse_share(body, sender=sender, covenant=covenant, me=self._me)
        if share.part is not None:
            whole = self._joined(
                cursor, PicturePartKind.SHARE, share.request_id, sender, share.part
            )
            if whole is None:
                return  # kept with the cursor: summed once every part is in
            share = dataclasses.replace(share, share=whole, part=None)
        kept = self._store.keep_picture_share(
            cursor,
            share.request_id,
            requester=share.requester,
            contributor=share.contributor,
            request_digest=share.digest,
            share=share.share,
            first_month=share.period.first_month,
            last_month=share.period.last_month,
            now=self._now(),
        )
        log.info("picture share received", kept=kept)
        self._try_answer_sum(share.request_id, covenant)

    def receive_sum_request(
        self, cursor: int, sender: str, body: bytes, covenant: Covenant
    ) -> None:
        """At the aggregator: a viewer's sum request, answered at most once per request
        id (a repeat is audited and not answered), once the shares it lists are here."""
        asked = picture_protocol.parse_sum_request(
            body, sender=sender, covenant=covenant, me=self._me
        )
        fresh = self._store.ask_picture_sum(
            cursor,
            asked.request_id,
            requester=asked.requester,
            contributors=asked.contributors,
            now=self._now(),
        )
        if not fresh:
            log.warning("picture sum asked again: refused", why="answered at most once")
            return
        self._try_answer_sum(asked.request_id, covenant)

    def _try_answer_sum(self, request_id: bytes, covenant: Covenant) -> None:
        pending = self._store.pending_picture_sum(request_id)
        if pending is None:
            return
        rows = self._store.picture_shares_held(request_id)
        held = [picture_protocol.HeldShare(h.contributor, h.request_digest, h.share) for h in rows]
        periods = {(h.first_month, h.last_month) for h in rows}
        period = Period(*min(periods)) if len(periods) == 1 else None
        past = (
            [
                picture_protocol.PastSum(
                    frozenset(g.contributors),
                    frozenset(Period(g.first_month, g.last_month).months()),
                )
                for g in self._store.picture_sums_given(
                    pending.requester, period.first_month, period.last_month
                )
            ]
            if period is not None
            else []
        )
        verdict = picture_protocol.decide_sum(
            covenant,
            picture_protocol.IncomingSumRequest(
                request_id, pending.requester, pending.contributors
            ),
            held,
            months=period.months() if period is not None else (),
            past=past,
        )
        if verdict is None:
            return  # a listed share is still on its way
        now = self._now()
        envelopes = [
            SealedEnvelope.of(
                picture_protocol.seal_message(
                    self._keys,
                    covenant,
                    SignatureContext.PICTURE_SUM,
                    message.SerializeToString(),
                    recipient=pending.requester,
                    message_id=self._random(ID_BYTES),
                )
            )
            for message in picture_protocol.sum_messages(request_id, self._me, verdict, now=now)
        ]
        if self._store.answer_picture_sum(
            request_id,
            contributors=verdict.contributors,
            refusal=None if verdict.refusal is None else verdict.refusal.value,
            envelope=envelopes,
            first_month=None if period is None else period.first_month,
            last_month=None if period is None else period.last_month,
            now=now,
        ):
            self.wake()
            log.info(
                "picture sum answered",
                outcome="refused" if verdict.refusal else "summed",
                contributors=len(verdict.contributors),
            )

    def receive_sum(self, cursor: int, sender: str, body: bytes, covenant: Covenant) -> None:
        """At the viewer: the aggregator's sum. Checked (``picture_protocol.parse_sum``),
        the shares held of exactly its contributors added to it, and only the result
        kept, the shares erased, in one transaction with the cursor. A sum that fails a
        check is kept as refused, with why: refused, never guessed."""
        message = picture_protocol.read_sum(body)
        request_id = bytes(message.request_id)
        record = self._store.picture_collection(request_id)
        if record is None or record.request_body is None or record.sum_requested_at is None:
            raise InvalidInput("no sum was asked for this request", field="request_id")
        remote = remote_ask(record)
        assert remote is not None
        marks = covenant.policy.picture.band_marks
        holders = self._share_holders(record)
        now = self._now()
        try:
            received = picture_protocol.parse_sum(
                message,
                sender=sender,
                aggregator=_aggregator_in(record),
                me=self._me,
                digest=picture_protocol.request_digest(remote, exact=marks),
                values=self._values(covenant, remote),
                held=holders,
                min_contributors=covenant.policy.picture.min_contributors,
            )
        except InvalidInput as error:
            if error.field == "aggregator":
                raise  # not the aggregator's: dropped, the real answer may still come
            self._store.keep_picture_sum(
                cursor,
                request_id,
                aggregate=None,
                contributors=(),
                refusal=(_REJECTED_PREFIX + _why(error))[: picture_protocol.MAX_TEXT_BYTES],
                now=now,
            )
            log.warning("picture sum rejected", field=error.field)
            return
        if received.part is not None:
            try:
                whole = self._joined(cursor, PicturePartKind.SUM, request_id, sender, received.part)
            except InvalidInput as error:
                self._store.keep_picture_sum(
                    cursor,
                    request_id,
                    aggregate=None,
                    contributors=(),
                    refusal=(_REJECTED_PREFIX + _why(error))[: picture_protocol.MAX_TEXT_BYTES],
                    now=now,
                )
                log.warning("picture sum rejected", field=error.field)
                return
            if whole is None:
                return  # kept with the cursor: added once every part is in
            received = dataclasses.replace(received, total=whole, part=None)
        if received.refusal is not None:
            self._store.keep_picture_sum(
                cursor,
                request_id,
                aggregate=None,
                contributors=(),
                refusal=f"{received.refusal.value}: {received.message}",
                now=now,
            )
            log.info("picture sum refused by the aggregator", reason=received.refusal.value)
            return
        shares = {
            c.contributor: bytes(picture_pb2.PictureContribution.FromString(c.body).share)
            for c in record.contributions
            if c.contributor in received.contributors
        }
        length = self._values(covenant, remote)
        aggregate = crypto.add_shares(
            [received.total, *(shares[c] for c in received.contributors)], length=length
        )
        self._store.keep_picture_sum(
            cursor,
            request_id,
            aggregate=aggregate,
            contributors=received.contributors,
            refusal=None,
            now=now,
        )
        log.info("picture sum received", contributors=len(received.contributors))
