"""Where a node's picture requests come and go: the protocol's decisions, kept in the store.

A thin adapter between :mod:`samenloop.node.picture_protocol` (the messages and
rules), :mod:`samenloop.node.picture` (the arithmetic), the node's store and its
keys. The local API collects and shows through it (:meth:`PictureDesk.collect`,
:meth:`PictureDesk.show`); the uplink hands it the relayed picture requests and
contributions (:meth:`PictureDesk.receive`, registered with the disclosure
desk's dispatch by signed context). Every outcome is stored in one transaction
with what it causes: a collection with its envelopes and this node's own
answer; an incoming request with the budget it spends, its answer and the
mailbox cursor; a contribution with the cursor.

Log lines and audit entries carry ids, names, outcomes and epsilon: never a
count, an area, a branch or a category.
"""

from __future__ import annotations

import enum
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from google.protobuf.message import DecodeError

from samenloop.node import picture, picture_protocol
from samenloop.node.disclosure import check_officer
from samenloop.node.picture import Dimension, Measure, Period, ReleasedTable, Table
from samenloop.node.picture_protocol import PictureAsk, PictureRefusal, PictureVerdict
from samenloop.node.store import (
    NewPictureAnswer,
    NewPictureCollection,
    NewPictureContribution,
    NodeStore,
    PictureCollectionRecord,
    SealedEnvelope,
)
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


class PictureDesk:
    """This node's side of the regional picture, as viewer and as contributor."""

    def __init__(
        self,
        *,
        keys: PartyKeys,
        covenant: Callable[[], Covenant],
        store: NodeStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        wake: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
        stale: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``rng`` seeds the noise for reproducible tests; by default OpenDP draws it.
        ``stale`` says why the node is stale (no unexpired covenant timestamp), None while
        it is fresh: a stale node neither asks for the picture nor contributes to one."""
        self._stale = stale
        self._keys = keys
        self._me = keys.party
        self._covenant = covenant
        self._store = store
        self._clock = clock
        self._random = random_bytes
        self._rng = rng
        self._cubes: dict[tuple[Table, int], ReleasedTable] = {}
        self.wake = wake

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def register(self, handlers: dict[SignatureContext, Callable[..., None]]) -> None:
        """Add this desk to a dispatch of relayed messages by signed context."""
        handlers[SignatureContext.PICTURE_REQUEST] = self.receive_request
        handlers[SignatureContext.PICTURE_CONTRIBUTION] = self.receive_contribution

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
            picture.cube_dimensions(ask.measures)
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
            ask = PictureAsk(ask.period, ask.measures, picture.cube_dimensions(ask.measures))
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
            message = picture_protocol.request_message(
                covenant, self._me, ask, request_id=request_id, now=now
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

    def _cube(self, period: Period, measure: Measure) -> PictureCollectionRecord | None:
        """The period's exact cube of ``measure``: its first exact collection by the
        measure's cube dimensions that holds counts. Every view of the period and
        measure is released from it, also when the period is collected again later,
        so that the tables released of one period are all slices of one protected cube
        (a second cube, of slightly other counts, could be subtracted from the first)."""
        cube_dims = tuple(d.value for d in picture.CUBE_DIMENSIONS[measure])
        for record in self._store.picture_collections_overlapping(
            period.first_month, period.last_month
        ):
            if (
                record.first_month == period.first_month
                and record.last_month == period.last_month
                and measure.value in record.measures
                and record.dimensions == cube_dims
                and _mode(record) is _Mode.EXACT
            ):
                return record
        return None

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
            combined, contributors, refusals = self._combined(record, ask, measure, ask.dimensions)
            released = picture.view(self._release_cube(combined, min_count), dims)
        else:
            if set(dims) != set(ask.dimensions):
                raise InvalidInput(
                    "show the collection by the dimensions it was made by", field="dimensions"
                )
            combined, contributors, refusals = self._combined(record, ask, measure, dims)
            released = picture.release(picture.with_totals(combined), min_count=min_count)
        answered = {c.contributor for c in record.contributions}
        self._store.audit_append(
            kind=AuditKind.PICTURE_EVENT,
            subject=[record.request_id.hex()],
            details={
                "event": "picture_shown",
                "measure": measure.value,
                "dimensions": ",".join(d.value for d in dims),
                "suppressed": len(released.suppressed),
            },
            now=self._now(),
        )
        return PictureView(
            request_id=record.request_id,
            table=released,
            contributors=contributors,
            missing=tuple(p for p in record.asked if p not in answered),
            refusals=refusals,
        )

    def _combined(
        self,
        record: PictureCollectionRecord,
        ask: PictureAsk,
        measure: Measure,
        dims: tuple[Dimension, ...],
    ) -> tuple[Table, tuple[str, ...], tuple[tuple[str, PictureRefusal, str], ...]]:
        """The sum of a collection's contributions of ``measure``, by ``dims`` (the
        collection's dimensions in another order), with who contributed and who refused."""
        order = [ask.dimensions.index(d) for d in dims]
        tables: list[Table] = []
        contributors: list[str] = []
        refusals: list[tuple[str, PictureRefusal, str]] = []
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
            try:  # checked when it came; again, for what an older version kept
                message = picture_pb2.PictureContribution.FromString(stored.body)
                received = picture_protocol.parse_contribution(
                    message,
                    ask,
                    sender=stored.contributor,
                    role=stored.contributor_role,
                    measures=ask.measures if stored.contributor == self._me else None,
                )
            except (InvalidInput, MessageTooLarge, DecodeError) as error:
                refusals.append((stored.contributor, _REJECTED, _REJECTED_PREFIX + _why(error)))
                continue
            for found in received.tables:
                if found.measure is measure:
                    tables.append(
                        Table(
                            measure,
                            dims,
                            ask.period,
                            {tuple(k[i] for i in order): v for k, v in found.items()},
                            noise_scale=found.noise_scale,
                        )
                    )
            contributors.append(stored.contributor)
        combined = picture.combine(tables) if tables else Table(measure, dims, ask.period, {})
        return combined, tuple(contributors), tuple(refusals)

    def _release_cube(self, combined: Table, min_count: int) -> ReleasedTable:
        """The protected cube (all its marginals with it), kept while its counts are the
        same: the report asks for several views of one cube in a row."""
        key = (combined, min_count)
        found = self._cubes.get(key)
        if found is None:
            found = picture.release(picture.with_totals(combined), min_count=min_count)
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
            message = picture_protocol.contribution(
                covenant,
                self._me,
                incoming.request_id,
                verdict,
                tables,
                period=incoming.message.period,
                now=now,
            )
            envelope = picture_protocol.seal_contribution(
                self._keys,
                covenant,
                message,
                requester=incoming.requester,
                message_id=self._random(ID_BYTES),
            )
            try:
                self._store.answer_picture_request(
                    cursor,
                    self._answer(incoming.request_id, incoming.requester, ask, verdict),
                    SealedEnvelope.of(envelope),
                    budget_units=self._budget_units(covenant),
                    now=now,
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
            received = picture_protocol.parse_contribution(
                message, ask_of(record), sender=sender, role=role
            )
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
