"""The regional picture's repository: collections, answers, budget, shares and sums.

As for disclosures, each method is one transaction: a collection is stored with its
envelopes and this node's own answer; an incoming request's answer with the budget it
spends, its envelope and the mailbox cursor; a contribution with the cursor. Audit
entries carry ids, names and epsilon: never a count or an attribute.

What the picture counts of the other capabilities (signals' coarse attributes, hit
groups, case activity) it reads here, in SQL, named for the picture: the counting stays
near the cost of reading the rows (issue 6's benchmark), and the desk depends on this
repository alone.

Over 800 lines: a collection, its contributions, its secure aggregation (shares held,
sums asked and given) and the parts of vectors larger than one message are one life
cycle over one set of tables; a contribution received clears that sender's parts in its
own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf.message import DecodeError
from sqlalchemy import Connection, delete, func, insert, or_, select, update

from samenloop.node.cases import machine as case_core
from samenloop.node.cases import models as case_models
from samenloop.node.daemon import models as daemon_models
from samenloop.node.daemon.database import (
    DEFAULT_PAGE,
    ID_BYTES,
    MONTH,
    Database,
    SealedEnvelope,
    audit_names,
    check_bytes,
    chunks,
    month_bounds,
    utc,
)
from samenloop.node.identifiers.person_hits import is_person_kind
from samenloop.node.picture import arithmetic as picture
from samenloop.node.picture import models
from samenloop.node.picture.models import PicturePartKind
from samenloop.node.picture.shares import Part
from samenloop.node.signals import models as signal_models
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import InvalidInput
from samenloop.v1 import broker_pb2, common_pb2

__all__ = [
    "PICTURE_REPLAY",
    "GivenPictureSum",
    "HeldPictureShare",
    "NewPictureAnswer",
    "NewPictureCollection",
    "NewPictureContribution",
    "PendingPictureSum",
    "PictureCollectionRecord",
    "PictureContributionRecord",
    "PictureStore",
]

#: The refusal reason of a replayed picture request (``PictureRefusalReason`` in lower case).
PICTURE_REPLAY: Final = "replay"


#: What a month up to a restore from a backup counts as spent: more than any budget.
RESTORED_SPENT_UNITS: Final = 2**62


@dataclass(frozen=True, slots=True)
class NewPictureCollection:
    """A picture collection this node starts as a viewer: the request and who is asked."""

    request_id: bytes
    first_month: str
    last_month: str
    measures: tuple[str, ...]
    dimensions: tuple[str, ...]
    asked: tuple[str, ...]
    officer: str
    covenant_version: int
    #: The serialized PictureRequest sent to the others (None when none was sent).
    request_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewPictureAnswer:
    """This node's answer to a picture request: contributed (with the budget it spends on
    each month, in units of 1e-9 epsilon) or refused with a reason."""

    request_id: bytes
    requester: str
    refusal_reason: str | None
    measures: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()
    months: tuple[str, ...] = ()
    spent_units: int = 0
    epsilon_spent: float = 0.0


@dataclass(frozen=True, slots=True, repr=False)
class NewPictureContribution:
    """A party's answer to one of this node's collections: the serialized, verified
    ``PictureContribution`` (counts only) and what the node indexes of it."""

    request_id: bytes
    contributor: str
    contributor_role: str
    refusal_reason: str | None
    refusal_message: str | None
    epsilon_spent: float
    body: bytes

    def __repr__(self) -> str:
        return f"NewPictureContribution(contributor={self.contributor!r})"


@dataclass(frozen=True, slots=True, repr=False)
class PictureContributionRecord:
    """A contribution as stored with its collection."""

    contributor: str
    contributor_role: str
    refusal_reason: str | None
    refusal_message: str | None
    epsilon_spent: float
    body: bytes
    received_at: datetime

    def __repr__(self) -> str:
        return f"PictureContributionRecord(contributor={self.contributor!r})"


@dataclass(frozen=True, slots=True)
class PictureCollectionRecord:
    """A collection this node started, with the contributions received so far."""

    request_id: bytes
    first_month: str
    last_month: str
    measures: tuple[str, ...]
    dimensions: tuple[str, ...]
    asked: tuple[str, ...]
    officer: str
    covenant_version: int
    created_at: datetime
    contributions: tuple[PictureContributionRecord, ...]
    request_body: bytes | None = None
    sum_requested_at: datetime | None = None
    #: The others' counts summed (shares added): never one partner's alone.
    aggregate: bytes | None = field(default=None, repr=False)
    aggregate_contributors: tuple[str, ...] = ()
    aggregate_refusal: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class HeldPictureShare:
    """A share the aggregator holds for a request."""

    contributor: str
    request_digest: bytes
    share: bytes
    first_month: str = ""
    last_month: str = ""

    def __repr__(self) -> str:
        return f"HeldPictureShare(contributor={self.contributor!r})"


@dataclass(frozen=True, slots=True)
class GivenPictureSum:
    """A sum the aggregator gave a viewer: over which parties, for which period."""

    contributors: tuple[str, ...]
    first_month: str
    last_month: str


@dataclass(frozen=True, slots=True)
class PendingPictureSum:
    """A viewer's sum request the aggregator has not answered yet."""

    request_id: bytes
    requester: str
    contributors: tuple[str, ...]


class PictureStore(Database):
    """Picture collections and answers, the privacy budget, secure aggregation's shares,
    sums and parts, and the facts the picture counts."""

    def start_picture_collection(
        self,
        collection: NewPictureCollection,
        envelopes: Sequence[SealedEnvelope],
        own_answer: NewPictureAnswer,
        own_contribution: NewPictureContribution,
        *,
        budget_units: int,
        now: datetime,
    ) -> None:
        """Store a collection this node starts, the requests sealed to the other parties
        and its own answer (budget spent, contribution kept), together. ``NotAllowed``
        (reason ``picture.budget_exhausted``) if the budget changed since it was read."""
        now = utc(now)
        check_bytes(collection.request_id, ID_BYTES, "request_id")
        with self._write() as conn:
            conn.execute(
                insert(models.PictureCollection).values(
                    request_id=collection.request_id,
                    first_month=collection.first_month,
                    last_month=collection.last_month,
                    measures=json.dumps(list(collection.measures)),
                    dimensions=json.dumps(list(collection.dimensions)),
                    asked=json.dumps(list(collection.asked)),
                    officer=collection.officer,
                    covenant_version=collection.covenant_version,
                    created_at=now,
                    request_body=collection.request_body,
                )
            )
            for envelope in envelopes:
                self._queue_envelope(conn, envelope, now)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[collection.request_id.hex()],
                details={
                    "event": "collection_started",
                    "period": f"{collection.first_month}..{collection.last_month}",
                    "measures": audit_names(collection.measures),
                    "dimensions": audit_names(collection.dimensions),
                    "asked": len(collection.asked),
                },
                now=now,
            )
            self._answer_picture(conn, own_answer, budget_units, now)
            self._keep_contribution(conn, own_contribution, now)

    def answer_picture_request(
        self,
        cursor: int,
        answer: NewPictureAnswer,
        envelope: SealedEnvelope,
        *,
        budget_units: int,
        now: datetime,
        also: Sequence[SealedEnvelope] = (),
        own_share: HeldPictureShare | None = None,
        requester: str = "",
    ) -> bool:
        """Record this node's answer to a picture request, spend its budget, queue the
        sealed contribution (or refusal) and advance the mailbox cursor, in one
        transaction; with it the aggregator's share (``also``, sealed to it), or, when
        this node is the aggregator, its own second share kept directly (``own_share``).
        A refusal as a replay is sent but stores no answer; any other
        answer to a request id answered before stores and sends nothing (returns
        False). ``BudgetExhausted`` if the budget changed since it was read: decide
        again."""
        now = utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            if answer.refusal_reason == PICTURE_REPLAY:
                self._picture_audit(conn, answer, "request_replayed", now)
            elif not self._answer_picture(conn, answer, budget_units, now):
                return False
            self._queue_envelope(conn, envelope, now)
            for extra in also:
                self._queue_envelope(conn, extra, now)
            if own_share is not None:
                conn.execute(
                    self._insert(models.PictureShareHeld)
                    .values(
                        request_id=answer.request_id,
                        requester=requester,
                        contributor=own_share.contributor,
                        request_digest=own_share.request_digest,
                        share=own_share.share,
                        first_month=own_share.first_month,
                        last_month=own_share.last_month,
                        received_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["request_id", "contributor"])
                )
        return True

    def _answer_picture(
        self, conn: Connection, answer: NewPictureAnswer, budget_units: int, now: datetime
    ) -> bool:
        check_bytes(answer.request_id, ID_BYTES, "request_id")
        a = models.PictureAnswer
        result = conn.execute(
            self._insert(a)
            .values(
                request_id=answer.request_id,
                requester=answer.requester,
                outcome=(
                    models.PictureAnswerOutcome.REFUSED
                    if answer.refusal_reason is not None
                    else models.PictureAnswerOutcome.CONTRIBUTED
                ).value,
                refusal_reason=answer.refusal_reason,
                epsilon_spent=answer.epsilon_spent,
                answered_at=now,
            )
            .on_conflict_do_nothing(index_elements=["request_id"])
            .returning(a.request_id)  # an INSERT's rowcount is not kept on PostgreSQL
        )
        if result.first() is None:
            self._picture_audit(conn, answer, "request_replayed", now)
            return False
        if answer.spent_units > 0:
            self._spend_budget(conn, answer.months, answer.spent_units, budget_units, now)
        self._picture_audit(conn, answer, "request_answered", now)
        return True

    def _picture_audit(
        self, conn: Connection, answer: NewPictureAnswer, event: str, now: datetime
    ) -> None:
        self.append_audit(
            conn,
            kind=AuditKind.PICTURE_EVENT,
            actor=answer.requester,
            subject=[answer.request_id.hex()],
            details={
                "event": event,
                "outcome": "refused" if answer.refusal_reason else "contributed",
                "reason": answer.refusal_reason or "",
                "measures": audit_names(answer.measures),
                "dimensions": audit_names(answer.dimensions),
                "epsilon_spent": f"{answer.epsilon_spent:g}",
                "months": audit_names(answer.months) if answer.spent_units > 0 else "",
            },
            now=now,
        )

    def _restored_through(self, conn: Connection) -> str | None:
        """The month this node's database was restored from a backup in, if it was: what it
        spent of the privacy budget up to then may be more than its ledger says (the
        spending after the backup is gone with it), so every month up to this one counts
        as spent."""
        restored_at = conn.execute(
            select(daemon_models.FeedRestore.restored_at)
        ).scalar_one_or_none()
        return None if restored_at is None else restored_at.strftime("%Y-%m")

    def _spend_budget(
        self, conn: Connection, months: Sequence[str], units: int, budget_units: int, now: datetime
    ) -> None:
        """Add ``units`` to each month's spending, never beyond ``budget_units``: a month
        that would go over fails the whole transaction (``BudgetExhausted``), and so does a
        month up to a restore from a backup (:meth:`_restored_through`)."""
        b = models.PictureBudget
        restored_through = self._restored_through(conn) if units > 0 else None
        for month in months:
            if not MONTH.fullmatch(month):
                raise InvalidInput("a month is written YYYY-MM", field="months")
            if restored_through is not None and month <= restored_through:
                raise picture.BudgetExhausted(
                    f"the privacy budget of {month} may have been spent before this node was "
                    "restored from a backup",
                    field="period",
                )
            conn.execute(
                self._insert(b)
                .values(month=month, spent_units=0, updated_at=now)
                .on_conflict_do_nothing(index_elements=["month"])
            )
            result = conn.execute(
                update(b)
                .where(b.month == month, b.spent_units + units <= budget_units)
                .values(spent_units=b.spent_units + units, updated_at=now)
            )
            if result.rowcount != 1:
                raise picture.BudgetExhausted(
                    f"the privacy budget of {month} is spent", field="period"
                )

    def picture_answered(self, request_id: bytes, /) -> bool:
        """Whether this node answered a picture request with this id before."""
        a = models.PictureAnswer
        with self._read() as conn:
            found = conn.execute(select(a.request_id).where(a.request_id == request_id)).first()
        return found is not None

    def picture_ledger(self, months: Sequence[str], /) -> picture.BudgetLedger:
        """The privacy budget spent so far on ``months`` (the others are left out)."""
        b = models.PictureBudget
        if not months:
            return picture.BudgetLedger()
        with self._read() as conn:
            rows = conn.execute(
                select(b.month, b.spent_units).where(b.month.in_(list(months)))
            ).all()
            restored_through = self._restored_through(conn)
        spent = {r.month: int(r.spent_units) for r in rows}
        if restored_through is not None:
            for month in months:
                if month <= restored_through:
                    spent[month] = max(spent.get(month, 0), RESTORED_SPENT_UNITS)
        return picture.BudgetLedger(spent)

    def receive_picture_contribution(
        self, cursor: int, contribution: NewPictureContribution, *, now: datetime
    ) -> bool:
        """Keep a contribution to one of this node's collections and advance the mailbox
        cursor, in one transaction. A contribution to an unknown collection, from a party
        not asked, or a second one from the same party is dropped (returns False)."""
        now = utc(now)
        c = models.PictureCollection
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            asked = conn.execute(
                select(c.asked).where(c.request_id == contribution.request_id)
            ).scalar_one_or_none()
            self._clear_parts(
                conn,
                PicturePartKind.CONTRIBUTION,
                contribution.request_id,
                contribution.contributor,
            )
            if asked is None or contribution.contributor not in json.loads(asked):
                self.append_audit(
                    conn,
                    kind=AuditKind.PICTURE_EVENT,
                    actor=contribution.contributor,
                    subject=[contribution.request_id.hex()],
                    details={"event": "contribution_dropped", "why": "not asked"},
                    now=now,
                )
                return False
            return self._keep_contribution(conn, contribution, now)

    def _keep_contribution(
        self, conn: Connection, contribution: NewPictureContribution, now: datetime
    ) -> bool:
        result = conn.execute(
            self._insert(models.PictureContribution)
            .values(
                request_id=contribution.request_id,
                contributor=contribution.contributor,
                contributor_role=contribution.contributor_role,
                refusal_reason=contribution.refusal_reason,
                refusal_message=contribution.refusal_message,
                epsilon_spent=contribution.epsilon_spent,
                body=contribution.body,
                received_at=now,
            )
            .on_conflict_do_nothing(index_elements=["request_id", "contributor"])
            .returning(models.PictureContribution.id)
        )
        kept = result.first() is not None
        self.append_audit(
            conn,
            kind=AuditKind.PICTURE_EVENT,
            actor=contribution.contributor,
            subject=[contribution.request_id.hex()],
            details={
                "event": "contribution_received" if kept else "contribution_repeated",
                "outcome": "refused" if contribution.refusal_reason else "contributed",
                "reason": contribution.refusal_reason or "",
                "epsilon_spent": f"{contribution.epsilon_spent:g}",
            },
            now=now,
        )
        return kept

    def picture_collection(self, request_id: bytes) -> PictureCollectionRecord | None:
        """One of this node's collections with the contributions received so far."""
        c = models.PictureCollection
        with self._read() as conn:
            row = conn.execute(select(c.__table__).where(c.request_id == request_id)).one_or_none()
            return None if row is None else self._collection_record(conn, row)

    def picture_collections(
        self,
        *,
        first_month: str | None = None,
        last_month: str | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> list[PictureCollectionRecord]:
        """This node's collections, newest first; only those of one period if given."""
        c = models.PictureCollection
        query = select(c.__table__).order_by(c.id.desc()).limit(limit)
        if first_month is not None:
            query = query.where(c.first_month == first_month)
        if last_month is not None:
            query = query.where(c.last_month == last_month)
        with self._read() as conn:
            return [self._collection_record(conn, row) for row in conn.execute(query).all()]

    def picture_collections_overlapping(
        self, first_month: str, last_month: str
    ) -> list[PictureCollectionRecord]:
        """This node's collections whose period shares a month with ``first_month`` ..
        ``last_month``, oldest first (all of them: the exact-mode period check)."""
        month_bounds(first_month, last_month)  # both are YYYY-MM
        c = models.PictureCollection
        query = (
            select(c.__table__)
            .where(c.first_month <= last_month, c.last_month >= first_month)
            .order_by(c.id)
        )
        with self._read() as conn:
            return [self._collection_record(conn, row) for row in conn.execute(query).all()]

    def _collection_record(self, conn: Connection, row: Any) -> PictureCollectionRecord:
        p = models.PictureContribution
        contributions = tuple(
            PictureContributionRecord(
                contributor=r.contributor,
                contributor_role=r.contributor_role,
                refusal_reason=r.refusal_reason,
                refusal_message=r.refusal_message,
                epsilon_spent=float(r.epsilon_spent),
                body=bytes(r.body),
                received_at=r.received_at,
            )
            for r in conn.execute(
                select(p.__table__).where(p.request_id == row.request_id).order_by(p.id)
            )
        )
        return PictureCollectionRecord(
            request_id=bytes(row.request_id),
            first_month=row.first_month,
            last_month=row.last_month,
            measures=tuple(json.loads(row.measures)),
            dimensions=tuple(json.loads(row.dimensions)),
            asked=tuple(json.loads(row.asked)),
            officer=row.officer,
            covenant_version=row.covenant_version,
            created_at=row.created_at,
            contributions=contributions,
            request_body=None if row.request_body is None else bytes(row.request_body),
            sum_requested_at=row.sum_requested_at,
            aggregate=None if row.aggregate is None else bytes(row.aggregate),
            aggregate_contributors=tuple(json.loads(row.aggregate_contributors or "[]")),
            aggregate_refusal=row.aggregate_refusal,
        )

    # --- secure aggregation: the viewer's side ---------------------------------------------

    def request_picture_sum(
        self,
        request_id: bytes,
        contributors: Sequence[str],
        envelope: SealedEnvelope,
        *,
        now: datetime,
    ) -> bool:
        """Queue the viewer's one sum request to the aggregator, unless it was queued
        before (returns False): the request and its envelope in one transaction."""
        now = utc(now)
        c = models.PictureCollection
        with self._write() as conn:
            result = conn.execute(
                update(c)
                .where(c.request_id == request_id, c.sum_requested_at.is_(None))
                .values(sum_requested_at=now)
            )
            if result.rowcount != 1:
                return False
            self._queue_envelope(conn, envelope, now)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[request_id.hex()],
                details={"event": "sum_requested", "contributors": len(contributors)},
                now=now,
            )
        return True

    def keep_picture_sum(
        self,
        cursor: int,
        request_id: bytes,
        *,
        aggregate: bytes | None,
        contributors: Sequence[str],
        refusal: str | None,
        now: datetime,
    ) -> bool:
        """Keep the aggregator's answer with the mailbox cursor, in one transaction: the
        others' summed counts (the shares added) or the refusal; the shares this node
        held of those contributors are erased with it (``-``), so that nothing but the
        sum remains. A second answer for the request changes nothing (returns False)."""
        now = utc(now)
        c, p = models.PictureCollection, models.PictureContribution
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            result = conn.execute(
                update(c)
                .where(
                    c.request_id == request_id,
                    c.aggregate.is_(None),
                    c.aggregate_refusal.is_(None),
                )
                .values(
                    aggregate=aggregate,
                    aggregate_contributors=json.dumps(sorted(contributors)),
                    aggregate_refusal=refusal,
                )
            )
            kept = result.rowcount == 1
            if kept and contributors:
                conn.execute(
                    update(p)
                    .where(p.request_id == request_id, p.contributor.in_(list(contributors)))
                    .values(body=b"-")
                )
            if kept:  # parts of shares or of the sum still held are of no use now
                self._clear_parts(conn, PicturePartKind.CONTRIBUTION, request_id)
                self._clear_parts(conn, PicturePartKind.SUM, request_id)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[request_id.hex()],
                details={
                    "event": "sum_received" if kept else "sum_repeated",
                    "outcome": "refused" if refusal else "summed",
                    "contributors": len(contributors),
                },
                now=now,
            )
        return kept

    # --- secure aggregation: the aggregator's side -----------------------------------------

    def keep_picture_share(
        self,
        cursor: int,
        request_id: bytes,
        *,
        requester: str,
        contributor: str,
        request_digest: bytes,
        share: bytes,
        first_month: str,
        last_month: str,
        now: datetime,
    ) -> bool:
        """Keep a contributor's second share with the mailbox cursor, in one transaction.
        A share for a request already summed, or a second one of the contributor, is
        dropped (returns False)."""
        now = utc(now)
        check_bytes(request_id, ID_BYTES, "request_id")
        m, h = models.PictureSumAnswer, models.PictureShareHeld
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            answered = conn.execute(select(m.answered_at).where(m.request_id == request_id)).first()
            self._clear_parts(conn, PicturePartKind.SHARE, request_id, contributor)
            kept = False
            if answered is None or answered.answered_at is None:
                kept = (
                    conn.execute(
                        self._insert(h)
                        .values(
                            request_id=request_id,
                            requester=requester,
                            contributor=contributor,
                            request_digest=request_digest,
                            share=share,
                            first_month=first_month,
                            last_month=last_month,
                            received_at=now,
                        )
                        .on_conflict_do_nothing(index_elements=["request_id", "contributor"])
                        .returning(h.id)
                    ).first()
                    is not None
                )
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                actor=contributor,
                subject=[request_id.hex()],
                details={"event": "share_kept" if kept else "share_dropped"},
                now=now,
            )
        return kept

    def ask_picture_sum(
        self,
        cursor: int,
        request_id: bytes,
        *,
        requester: str,
        contributors: Sequence[str],
        now: datetime,
    ) -> bool:
        """Record a viewer's sum request with the mailbox cursor; False (and nothing but the
        cursor and an audit entry) if this request id was asked before: the aggregator
        answers each at most once."""
        now = utc(now)
        check_bytes(request_id, ID_BYTES, "request_id")
        m = models.PictureSumAnswer
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            fresh = (
                conn.execute(
                    self._insert(m)
                    .values(
                        request_id=request_id,
                        requester=requester,
                        contributors=json.dumps(list(contributors)),
                        asked_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["request_id"])
                    .returning(m.request_id)
                ).first()
                is not None
            )
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                actor=requester,
                subject=[request_id.hex()],
                details={"event": "sum_asked" if fresh else "sum_asked_again"},
                now=now,
            )
        return fresh

    def pending_picture_sum(self, request_id: bytes) -> PendingPictureSum | None:
        """The unanswered sum request for ``request_id``, if there is one."""
        m = models.PictureSumAnswer
        with self._read() as conn:
            row = conn.execute(
                select(m.requester, m.contributors).where(
                    m.request_id == request_id, m.answered_at.is_(None)
                )
            ).first()
        if row is None:
            return None
        return PendingPictureSum(request_id, row.requester, tuple(json.loads(row.contributors)))

    def picture_shares_held(self, request_id: bytes) -> list[HeldPictureShare]:
        h = models.PictureShareHeld
        with self._read() as conn:
            rows = conn.execute(
                select(h.contributor, h.request_digest, h.share, h.first_month, h.last_month)
                .where(h.request_id == request_id)
                .order_by(h.id)
            ).all()
        return [
            HeldPictureShare(
                r.contributor, bytes(r.request_digest), bytes(r.share), r.first_month, r.last_month
            )
            for r in rows
        ]

    def picture_sums_given(
        self, requester: str, first_month: str, last_month: str
    ) -> list[GivenPictureSum]:
        """The sums this aggregator gave ``requester`` for a period overlapping the given one."""
        m = models.PictureSumAnswer
        with self._read() as conn:
            rows = conn.execute(
                select(m.contributors, m.first_month, m.last_month).where(
                    m.requester == requester,
                    m.answered_at.is_not(None),
                    m.refusal_reason.is_(None),
                    m.first_month <= last_month,
                    m.last_month >= first_month,
                )
            ).all()
        return [
            GivenPictureSum(tuple(json.loads(r.contributors)), r.first_month, r.last_month)
            for r in rows
        ]

    def answer_picture_sum(
        self,
        request_id: bytes,
        *,
        contributors: Sequence[str],
        refusal: str | None,
        envelope: SealedEnvelope | Sequence[SealedEnvelope],
        first_month: str | None = None,
        last_month: str | None = None,
        now: datetime,
    ) -> bool:
        """Answer a pending sum request once, in one transaction: mark it answered (with
        the contributors summed and the period), queue the signed sum (or refusal; a sum
        of several parts as one envelope per part) and delete every share, and every part
        of one, held for the request. False if it was answered meanwhile."""
        now = utc(now)
        m, h = models.PictureSumAnswer, models.PictureShareHeld
        with self._write() as conn:
            result = conn.execute(
                update(m)
                .where(m.request_id == request_id, m.answered_at.is_(None))
                .values(
                    answered_at=now,
                    contributors=json.dumps(list(contributors)),
                    refusal_reason=refusal,
                    first_month=first_month,
                    last_month=last_month,
                )
            )
            if result.rowcount != 1:
                return False
            for extra in envelope if isinstance(envelope, Sequence) else (envelope,):
                self._queue_envelope(conn, extra, now)
            conn.execute(delete(h).where(h.request_id == request_id))
            self._clear_parts(conn, PicturePartKind.SHARE, request_id)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[request_id.hex()],
                details={
                    "event": "sum_answered",
                    "outcome": "refused" if refusal else "summed",
                    "reason": refusal or "",
                    "contributors": len(contributors),
                },
                now=now,
            )
        return True

    # --- secure aggregation: vectors in parts ----------------------------------------------

    def picture_parts(self, kind: PicturePartKind, request_id: bytes, sender: str) -> list[Part]:
        """The parts held of ``sender``'s vector of ``kind`` for a request, by index."""
        t = models.PicturePartHeld
        with self._read() as conn:
            rows = conn.execute(
                select(t.part_index, t.part_count, t.total_values, t.vector_digest, t.data)
                .where(t.kind == kind.value, t.request_id == request_id, t.sender == sender)
                .order_by(t.part_index)
            ).all()
        return [
            Part(
                int(r.part_index),
                int(r.part_count),
                int(r.total_values),
                bytes(r.vector_digest),
                bytes(r.data),
            )
            for r in rows
        ]

    def keep_picture_part(
        self,
        cursor: int,
        kind: PicturePartKind,
        request_id: bytes,
        sender: str,
        part: Part,
        *,
        now: datetime,
    ) -> bool:
        """Keep one part of a vector that is not whole yet, with the mailbox cursor, in one
        transaction (checked by ``picture_shares.check_part`` before). Dropped (False:
        only the cursor and an audit entry) when that vector is settled already: for a
        contribution, the collection is unknown, the sender was not asked, its answer is
        kept or the sum is in; for a share, the sender's share is held or the request's
        sum was answered; for a sum, the collection holds the sum or a refusal. A part
        held at its index already is kept as it was: a repeat changes nothing."""
        now = utc(now)
        check_bytes(request_id, ID_BYTES, "request_id")
        t = models.PicturePartHeld
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            kept = False
            if not self._part_settled(conn, kind, request_id, sender):
                kept = (
                    conn.execute(
                        self._insert(t)
                        .values(
                            kind=kind.value,
                            request_id=request_id,
                            sender=sender,
                            part_index=part.index,
                            part_count=part.count,
                            total_values=part.total_values,
                            vector_digest=part.digest,
                            data=part.data,
                            received_at=now,
                        )
                        .on_conflict_do_nothing(
                            index_elements=["kind", "request_id", "sender", "part_index"]
                        )
                        .returning(t.id)
                    ).first()
                    is not None
                )
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                actor=sender,
                subject=[request_id.hex()],
                details={
                    "event": "part_kept" if kept else "part_dropped",
                    "of": kind.value,
                    "part": f"{part.index + 1}/{part.count}",
                },
                now=now,
            )
        return kept

    def _part_settled(
        self, conn: Connection, kind: PicturePartKind, request_id: bytes, sender: str
    ) -> bool:
        c, p = models.PictureCollection, models.PictureContribution
        m, h = models.PictureSumAnswer, models.PictureShareHeld
        if kind is PicturePartKind.SHARE:
            answered = conn.execute(select(m.answered_at).where(m.request_id == request_id)).first()
            held = conn.execute(
                select(h.id).where(h.request_id == request_id, h.contributor == sender)
            ).first()
            return held is not None or (answered is not None and answered.answered_at is not None)
        row = conn.execute(
            select(c.asked, c.aggregate, c.aggregate_refusal).where(c.request_id == request_id)
        ).first()
        if row is None or row.aggregate is not None or row.aggregate_refusal is not None:
            return True
        if kind is PicturePartKind.SUM:
            return False
        kept = conn.execute(
            select(p.id).where(p.request_id == request_id, p.contributor == sender)
        ).first()
        return kept is not None or sender not in json.loads(row.asked)

    def _clear_parts(
        self,
        conn: Connection,
        kind: PicturePartKind,
        request_id: bytes,
        sender: str | None = None,
    ) -> None:
        """Delete the parts held of a vector that is now settled (or of every sender's)."""
        t = models.PicturePartHeld
        query = delete(t).where(t.kind == kind.value, t.request_id == request_id)
        if sender is not None:
            query = query.where(t.sender == sender)
        conn.execute(query)

    # --- what the picture counts of the other capabilities' tables -----------------------

    def counts(self) -> tuple[int, dict[str, int]]:
        """Picture collections this node started, and the requests it answered by outcome
        (for the metrics, at scrape time)."""
        answers = models.PictureAnswer
        with self._read() as conn:
            collections = conn.execute(
                select(func.count()).select_from(models.PictureCollection)
            ).scalar_one()
            outcomes = {
                outcome: int(n)
                for outcome, n in conn.execute(
                    select(answers.outcome, func.count()).group_by(answers.outcome)
                )
            }
        return int(collections), outcomes

    def picture_signal_facts(self, first_month: str, last_month: str) -> list[picture.SignalFacts]:
        """The coarse attributes of the signals of the months ``first_month``..``last_month``
        that were active at some time in them, grouped: one fact per combination of
        attributes, with how many signals have it. All the regional picture reads.

        Counting in SQL keeps the picture near the cost of reading the rows (issue 6's
        benchmark). Signals without a month are not counted (every signal stored
        since the picture existed has one).
        """
        sg = signal_models.Signal
        start = datetime.strptime(first_month, "%Y-%m").replace(tzinfo=UTC)
        attributes = (sg.area_kind, sg.area_code, sg.branch, sg.category, sg.month)
        with self._read() as conn:
            rows = conn.execute(
                select(*attributes, func.count())
                .where(
                    sg.month >= first_month,
                    sg.month <= last_month,
                    or_(sg.ended_at.is_(None), sg.ended_at >= start),
                )
                .group_by(*attributes)
            ).all()
        areas: dict[tuple[str | None, str | None], str | None] = {}
        facts: list[picture.SignalFacts] = []
        for kind, code, branch, category, month, count in rows:
            if month is None:  # excluded by the query; for the type checker
                continue
            area = areas.get((kind, code), "")
            if area == "":
                area = areas[kind, code] = picture.area_value(kind, code)
            facts.append(picture.SignalFacts(area, branch, category, month, count))
        return facts

    def picture_hit_group_facts(
        self, first_month: str, last_month: str
    ) -> list[picture.HitGroupFacts]:
        """The hit groups this node counts in its picture contributions for a period: those
        formed in it (``first_seen``) whose latest notice names this node the group's
        ``picture_reporter`` (the broker names exactly one member per group), each with
        the coarse attributes of this node's own first signal in it. A group on person
        key kinds only (``docs/linkage.md``) is not counted: one person gives a group per
        agreeing kind, and a probable hit is not an exact one; the picture counts exact
        hits."""
        start, end = month_bounds(first_month, last_month)
        h, hr, si, sg = (
            signal_models.Hit,
            signal_models.HitRef,
            signal_models.SignalIdentifier,
            signal_models.Signal,
        )
        with self._read() as conn:
            rows = conn.execute(
                select(h.group_id, h.notice, h.first_seen).where(
                    h.first_seen >= start, h.first_seen < end
                )
            ).all()
            groups = [r for r in rows if _reports(r.notice)]
            signals: dict[bytes, Any] = {}
            exact: set[bytes] = set()
            for chunk in chunks([bytes(r.group_id) for r in groups]):
                for r in conn.execute(
                    select(hr.group_id, si.type, sg.category, sg.area_kind, sg.area_code, sg.branch)
                    .join(si, si.id == hr.identifier_id)
                    .join(sg, sg.id == si.signal_id)
                    .where(self._among(hr.group_id, chunk))
                    .order_by(sg.id.desc())
                ):
                    signals[bytes(r.group_id)] = r  # the lowest signal id wins
                    if not is_person_kind(r.type):
                        exact.add(bytes(r.group_id))
        found = []
        for group in groups:
            own = signals.get(bytes(group.group_id))
            if own is not None and bytes(group.group_id) not in exact:
                continue  # person key kinds only
            found.append(
                picture.HitGroupFacts(
                    area=None if own is None else picture.area_value(own.area_kind, own.area_code),
                    branch=None if own is None else own.branch,
                    category=picture.UNKNOWN if own is None else own.category,
                    month=f"{group.first_seen:%Y-%m}",
                )
            )
        return found

    def case_activity(self, first_month: str, last_month: str) -> list[case_core.CaseActivity]:
        """For the cases this node coordinates: one record per case opened and per case
        closed (the month it happened) and per action added (its intervention type, the
        month it was added), within ``first_month``..``last_month`` (``YYYY-MM``)."""
        for name, given in (("first_month", first_month), ("last_month", last_month)):
            if not MONTH.fullmatch(given):
                raise InvalidInput("a month is YYYY-MM", field=name)
        if first_month > last_month:
            raise InvalidInput("the period ends before it starts", field="last_month")

        def within(moment: datetime | None) -> str | None:
            if moment is None:
                return None
            month = moment.astimezone(UTC).strftime("%Y-%m")
            return month if first_month <= month <= last_month else None

        found: list[case_core.CaseActivity] = []
        c, a = case_models.Case, case_models.CaseAction
        with self._read() as conn:
            rows = conn.execute(
                select(c.id, c.opened_at, c.closed_at).where(c.coordinator == self._owner)
            ).all()
            actions = conn.execute(
                select(a.intervention_type, a.added_at)
                .join(c, c.id == a.case_id)
                .where(c.coordinator == self._owner)
            ).all()
        for row in rows:
            if (month := within(row.opened_at)) is not None:
                found.append(case_core.CaseActivity("opened", None, month))
            if (month := within(row.closed_at)) is not None:
                found.append(case_core.CaseActivity("closed", None, month))
        for action in actions:
            if (month := within(action.added_at)) is not None:
                found.append(
                    case_core.CaseActivity("intervention", action.intervention_type, month)
                )
        return sorted(found, key=lambda f: (f.month, f.kind, f.intervention_type or ""))


def _reports(notice: bytes) -> bool:
    """Whether a stored hit notice names this node the group's picture reporter."""
    try:
        body = common_pb2.Signed.FromString(notice).body
        return broker_pb2.HitNotice.FromString(body).picture_reporter
    except DecodeError:
        return False
