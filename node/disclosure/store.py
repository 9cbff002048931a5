"""The disclosure repository: requests in both directions, their verdicts and answers.

Each method is one transaction: a request sent is stored with its envelope; a mailbox
item is processed with the cursor advance (and the answer it causes, in the envelope
outbox); an officer's decision is stored with its answer. It also answers what the
disclosure core asks of the node's own data
(:class:`~samenloop.node.disclosure.protocol.OwnerFacts`): those queries read the
signals' and hits' tables, and are kept here, named for what the core asks, so that the
desk depends on this repository alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from google.protobuf.message import DecodeError
from sqlalchemy import Connection, func, insert, select, update

from samenloop.node.daemon.database import (
    DEFAULT_PAGE,
    ID_BYTES,
    Database,
    SealedEnvelope,
    audit_names,
    check_bytes,
    details_json,
    utc,
)
from samenloop.node.disclosure import models
from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
from samenloop.node.disclosure.protocol import Outcome, ResponseUpdate, SignalFacts, Verdict
from samenloop.node.identifiers.person_hits import is_person_kind, person_kind
from samenloop.node.identifiers.person_keys import PersonKeyKind
from samenloop.node.signals import models as signal_models
from samenloop.node.signals.models import HitState, IdentifierState, SignalState
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import InvalidInput, NotAllowed
from samenloop.policies.policy import MAX_PERSON_SCORE
from samenloop.policies.rules import Refusal
from samenloop.v1 import broker_pb2, common_pb2

__all__ = [
    "DisclosureRecord",
    "DisclosureStore",
    "NewDisclosure",
]


@dataclass(frozen=True, slots=True, repr=False)
class NewDisclosure:
    """A disclosure request to record: what was asked, by whom, of whom, about which ref."""

    request_id: bytes
    requester: str
    owner: str
    hit_group_id: bytes | None
    signal_ref: bytes
    purpose: str
    fields: tuple[str, ...]
    officer: str
    justification: str
    covenant_version: int
    requested_at: datetime
    #: On a probable person hit: the requester's score of it (bits).
    person_score: float | None = None

    def __repr__(self) -> str:
        return f"NewDisclosure(requester={self.requester!r}, owner={self.owner!r})"


@dataclass(frozen=True, slots=True, repr=False)
class DisclosureRecord:
    """A stored disclosure request. ``released`` holds, for an outgoing request, the
    details received; for an incoming one, the names of the fields released, each
    mapped to ``""`` (the node keeps no copy of what it released)."""

    id: int
    request_id: bytes
    direction: DisclosureDirection
    state: DisclosureState
    requester: str
    owner: str
    hit_group_id: bytes | None
    signal_ref: bytes
    signal_id: int | None
    purpose: str
    requested_fields: tuple[str, ...]
    requester_officer: str
    justification: str
    covenant_version: int
    released: Mapping[str, str]
    withheld: tuple[str, ...]
    rule_category: str | None
    refusal_reason: str | None
    refusal_message: str | None
    decided_by: str | None
    decision_approved: bool | None
    decision_note: str | None
    decided_at: datetime | None
    requested_at: datetime
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: On a probable person hit: the requester's score of it (bits), as it said.
    person_score: float | None = None

    def __repr__(self) -> str:
        return (
            f"DisclosureRecord(id={self.id}, direction={self.direction.value}, "
            f"state={self.state.value})"
        )


_FINAL: Final = frozenset({DisclosureState.GRANTED.value, DisclosureState.REFUSED.value})


class DisclosureStore(Database):
    """Disclosure requests, their verdicts, and the facts the disclosure core reads."""

    def record_outgoing(
        self, request: NewDisclosure, envelope: SealedEnvelope, *, now: datetime
    ) -> DisclosureRecord:
        """Store a request this node sends (state ``sent``) and its envelope, together."""
        now = utc(now)
        with self._write() as conn:
            conn.execute(
                insert(models.Disclosure).values(
                    **self._disclosure_values(request, DisclosureDirection.OUTGOING, now),
                    state=DisclosureState.SENT.value,
                )
            )
            self._queue_envelope(conn, envelope, now)
            self.append_audit(
                conn,
                kind=AuditKind.DISCLOSURE_REQUESTED,
                subject=[request.request_id.hex()],
                details={
                    "owner": request.owner,
                    "purpose": request.purpose,
                    "fields": len(request.fields),
                },
                now=now,
            )
            return self._disclosure_by(conn, request.request_id)

    def receive_request(
        self,
        cursor: int,
        request: NewDisclosure,
        verdict: Verdict,
        answer: SealedEnvelope | None,
        *,
        now: datetime,
    ) -> bool:
        """Record an incoming request with the owner's verdict, queue the answer and advance
        the mailbox cursor, in one transaction. A replay (a request id already stored)
        stores nothing of the request; returns whether it was stored. A pending request
        is stored with its hit group (approval checks the group of now), so one without
        a group is refused (``InvalidInput``, field ``hit_group_id``)."""
        now = utc(now)
        if verdict.outcome is Outcome.PENDING and request.hit_group_id is None:
            raise InvalidInput("a pending request needs its hit group", field="hit_group_id")
        with self._write() as conn:
            stored_cursor, last_feed_seq = self._lock_inbox(conn)
            stored = False
            if verdict.reason is not Refusal.REPLAY:
                values = self._disclosure_values(request, DisclosureDirection.INCOMING, now)
                values.update(self._verdict_values(verdict, now))
                result = conn.execute(
                    self._insert(models.Disclosure)
                    .values(**values, signal_id=verdict.signal_id)
                    .on_conflict_do_nothing(index_elements=["request_id"])
                    # An INSERT's rowcount is not kept on PostgreSQL (SQLAlchemy 2.1, psycopg).
                    .returning(models.Disclosure.request_id)
                )
                stored = result.first() is not None
            if answer is not None:
                self._queue_envelope(conn, answer, now)
            if cursor > stored_cursor:
                self._save_inbox(conn, cursor, last_feed_seq)
            self.append_audit(
                conn,
                kind=AuditKind.DISCLOSURE_DECISION,
                actor=request.requester,
                subject=[request.request_id.hex()],
                details=self._verdict_audit(verdict, request.purpose),
                now=now,
            )
        return stored

    def decide_pending(
        self,
        request_id: bytes,
        *,
        officer: str,
        approved: bool,
        note: str,
        verdict: Verdict,
        answer: SealedEnvelope | None,
        now: datetime,
    ) -> DisclosureRecord:
        """Store a second officer's decision on a pending incoming request, with the final
        verdict and its answer (None: not answered, as for a requester no longer in the
        covenant). ``NotAllowed`` (field ``request_id``) unless the request is pending, so
        two officers deciding at once cannot both win."""
        now = utc(now)
        if verdict.outcome is Outcome.PENDING:
            raise ValueError("an officer's decision is final")
        d = models.Disclosure
        with self._write() as conn:
            result = conn.execute(
                update(d)
                .where(
                    d.request_id == request_id,
                    d.direction == DisclosureDirection.INCOMING.value,
                    d.state == DisclosureState.PENDING_APPROVAL.value,
                )
                .values(
                    **self._verdict_values(verdict, now),
                    decided_by=officer,
                    decision_approved=approved,
                    decision_note=note,
                    decided_at=now,
                )
            )
            if result.rowcount != 1:
                raise NotAllowed(
                    "not an incoming request waiting for approval",
                    field="request_id",
                    reason="disclosure.not_pending",
                )
            if answer is not None:
                self._queue_envelope(conn, answer, now)
            record = self._disclosure_by(conn, request_id)
            self.append_audit(
                conn,
                kind=AuditKind.DISCLOSURE_APPROVED if approved else AuditKind.DISCLOSURE_DENIED,
                actor=officer,
                subject=[request_id.hex()],
                details=self._verdict_audit(verdict, record.purpose),
                now=now,
            )
            return record

    def apply_response(self, cursor: int, update_: ResponseUpdate, *, now: datetime) -> bool:
        """Apply an owner's answer to an outgoing request and advance the mailbox cursor, in
        one transaction. An answer to an unknown request, from another owner, or after a
        final one changes nothing but the cursor. Granted details are kept only for the
        fields asked for. Returns whether the request changed."""
        now = utc(now)
        d = models.Disclosure
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            row = conn.execute(
                select(d.state, d.requested_fields).where(
                    d.request_id == update_.request_id,
                    d.direction == DisclosureDirection.OUTGOING.value,
                    d.owner == update_.owner,
                )
            ).one_or_none()
            if row is None or row.state in _FINAL:
                return False
            values: dict[str, Any] = {"updated_at": now}
            if update_.outcome is Outcome.PENDING:
                values["state"] = DisclosureState.PENDING_APPROVAL.value
            elif update_.outcome is Outcome.GRANTED:
                asked = set(json.loads(row.requested_fields))
                received = {k: v for k, v in (update_.values or {}).items() if k in asked}
                values.update(
                    state=DisclosureState.GRANTED.value,
                    released_fields=details_json(received),
                    withheld_fields=json.dumps(sorted(set(update_.withheld) & asked)),
                    finished_at=now,
                )
            else:
                assert update_.reason is not None
                values.update(
                    state=DisclosureState.REFUSED.value,
                    refusal_reason=update_.reason.value,
                    refusal_message=update_.message,
                    finished_at=now,
                )
            conn.execute(update(d).where(d.request_id == update_.request_id).values(**values))
            if update_.outcome is not Outcome.PENDING:
                self.append_audit(
                    conn,
                    kind=AuditKind.DISCLOSURE_RELEASED
                    if update_.outcome is Outcome.GRANTED
                    else AuditKind.DISCLOSURE_REFUSED,
                    actor=update_.owner,
                    subject=[update_.request_id.hex()],
                    details={
                        "outcome": update_.outcome.value,
                        "reason": "" if update_.reason is None else update_.reason.value,
                        "released": len(update_.values or {}),
                    },
                    now=now,
                )
        return True

    def skip_envelope(
        self,
        cursor: int,
        *,
        what: str,
        now: datetime,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Record a mailbox envelope that is dropped unanswered (forged, malformed or of a
        kind this version does not handle) and advance past it, in one transaction.
        ``field`` and ``reason`` say what was wrong with it (names and codes, never values)."""
        now = utc(now)
        details: dict[str, object] = {"dropped": what, "cursor": cursor}
        if field is not None:
            details["field"] = field
        if reason is not None:
            details["reason"] = reason
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(conn, kind=AuditKind.DISCLOSURE_RECEIVED, details=details, now=now)

    # --- what the core asks (OwnerFacts) ----------------------------------------------

    def disclosure_seen(self, request_id: bytes, /) -> bool:
        """Whether a request with this id is stored (either direction)."""
        with self._read() as conn:
            return (
                conn.execute(
                    select(models.Disclosure.id).where(models.Disclosure.request_id == request_id)
                ).first()
                is not None
            )

    def signal_facts(self, signal_ref: bytes, /) -> SignalFacts | None:
        """The signal behind one of this node's refs, for deciding a disclosure."""
        si, sg = signal_models.SignalIdentifier, signal_models.Signal
        with self._read() as conn:
            row = conn.execute(
                select(sg.id, sg.category, sg.state, sg.details)
                .join(si, si.signal_id == sg.id)
                .where(si.signal_ref == signal_ref)
            ).one_or_none()
        if row is None:
            return None
        return SignalFacts(
            signal_id=row.id,
            category=row.category,
            active=row.state == SignalState.ACTIVE.value,
            details=MappingProxyType(json.loads(row.details)),
        )

    def hit_proof_key(self, signal_ref: bytes, /) -> bytes | None:
        """The hit proof key of this node's identifier with this ref; None if it has no such
        ref, or the identifier has no token now or got it before hit proofs existed."""
        si, hk = signal_models.SignalIdentifier, signal_models.HitProofKey
        with self._read() as conn:
            found = conn.execute(
                select(hk.proof_key)
                .join(si, si.id == hk.identifier_id)
                .where(si.signal_ref == signal_ref)
            ).scalar_one_or_none()
        return None if found is None else bytes(found)

    def hit_own_refs(self, group_id: bytes, /) -> frozenset[bytes]:
        """This node's own refs that its latest notice of the group lists (empty if it holds
        no notice of the group)."""
        hr = signal_models.HitRef
        with self._read() as conn:
            refs = conn.execute(select(hr.signal_ref).where(hr.group_id == group_id)).scalars()
            return frozenset(bytes(ref) for ref in refs)

    def hit_closed(self, group_id: bytes, /) -> bool:
        """Whether this node's latest notice of the group closed it."""
        with self._read() as conn:
            state = conn.execute(
                select(signal_models.Hit.state).where(signal_models.Hit.group_id == group_id)
            ).scalar_one_or_none()
        return state == HitState.CLOSED.value

    def hit_members(self, group_id: bytes, /) -> frozenset[str] | None:
        """The parties this node's latest notice of the group shows as members; None if it
        holds no notice of the group or its notice does not show members by party."""
        stored = self.hit_notice(group_id)
        if stored is None:
            return None
        try:
            notice = broker_pb2.HitNotice.FromString(common_pb2.Signed.FromString(stored).body)
        except DecodeError:
            return None
        if not notice.visibility.parties:
            return None
        return frozenset(m.party for m in notice.members if m.party)

    def person_kinds(
        self, signal_ref: bytes, party: str, /
    ) -> tuple[frozenset[PersonKeyKind], frozenset[PersonKeyKind]] | None:
        """For a ref of one of this node's person keys: the kinds on which ``party`` (by its
        party id in this node's notices) shares an open hit with that key's signal, and
        the kinds that signal has (withdrawn keys left out); None for a ref of any other
        identifier (or none)."""
        si, hr, hp, hit = (
            signal_models.SignalIdentifier,
            signal_models.HitRef,
            signal_models.HitParty,
            signal_models.Hit,
        )
        with self._read() as conn:
            row = conn.execute(
                select(si.signal_id, si.type).where(si.signal_ref == signal_ref)
            ).one_or_none()
            if row is None or not is_person_kind(row.type):
                return None
            types = conn.execute(
                select(si.type)
                .join(hr, hr.identifier_id == si.id)
                .join(hit, hit.group_id == hr.group_id)
                .join(hp, hp.group_id == hr.group_id)
                .where(
                    si.signal_id == row.signal_id,
                    hit.state == HitState.OPEN.value,
                    hp.party == party,
                )
            ).scalars()
            agreeing = frozenset(person_kind(t) for t in types if is_person_kind(t))
            own = conn.execute(
                select(si.type).where(
                    si.signal_id == row.signal_id,
                    si.type.like("person.%"),
                    si.state != IdentifierState.WITHDRAWN.value,
                )
            ).scalars()
            return agreeing, frozenset(person_kind(t) for t in own if is_person_kind(t))

    def requests_since(self, requester: str, since: datetime, /) -> int:
        """Incoming requests stored from ``requester`` at or after ``since``."""
        d = models.Disclosure
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        d.requester == requester,
                        d.direction == DisclosureDirection.INCOMING.value,
                        d.created_at >= utc(since, "since"),
                    )
                ).scalar_one()
            )

    def grants_since(
        self, requester: str, purpose: str, rule_category: str, since: datetime, /
    ) -> int:
        """Incoming requests granted to ``requester`` under one rule at or after ``since``."""
        d = models.Disclosure
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        d.requester == requester,
                        d.direction == DisclosureDirection.INCOMING.value,
                        d.state == DisclosureState.GRANTED.value,
                        d.purpose == purpose,
                        d.rule_category == rule_category,
                        d.finished_at >= utc(since, "since"),
                    )
                ).scalar_one()
            )

    # --- reading -----------------------------------------------------------------------

    def disclosure(self, request_id: bytes) -> DisclosureRecord | None:
        """The request with this id, if any."""
        with self._read() as conn:
            found = conn.execute(
                select(models.Disclosure.__table__).where(
                    models.Disclosure.request_id == request_id
                )
            ).one_or_none()
        return None if found is None else _disclosure_record(found)

    def disclosures(
        self,
        direction: DisclosureDirection | None = None,
        state: DisclosureState | None = None,
        *,
        limit: int = DEFAULT_PAGE,
        before_id: int | None = None,
    ) -> list[DisclosureRecord]:
        """Requests newest first, filtered; ``before_id`` continues a page."""
        d = models.Disclosure
        query = select(d.__table__)
        if direction is not None:
            query = query.where(d.direction == DisclosureDirection(direction).value)
        if state is not None:
            query = query.where(d.state == DisclosureState(state).value)
        if before_id is not None:
            query = query.where(d.id < before_id)
        with self._read() as conn:
            rows = conn.execute(query.order_by(d.id.desc()).limit(limit)).all()
        return [_disclosure_record(row) for row in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """Disclosure requests by direction and state (for the metrics, at scrape time)."""
        d = models.Disclosure
        query = select(d.direction, d.state, func.count()).group_by(d.direction, d.state)
        with self._read() as conn:
            return {(direction, state): int(n) for direction, state, n in conn.execute(query)}

    def pending_approvals(self) -> int:
        """Incoming requests waiting for a second officer."""
        d = models.Disclosure
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        d.direction == DisclosureDirection.INCOMING.value,
                        d.state == DisclosureState.PENDING_APPROVAL.value,
                    )
                ).scalar_one()
            )

    @staticmethod
    def _disclosure_values(
        request: NewDisclosure, direction: DisclosureDirection, now: datetime
    ) -> dict[str, Any]:
        check_bytes(request.request_id, ID_BYTES, "request_id")
        check_bytes(request.signal_ref, ID_BYTES, "signal_ref")
        return {
            "request_id": request.request_id,
            "direction": direction.value,
            "requester": request.requester,
            "owner": request.owner,
            "hit_group_id": request.hit_group_id,
            "signal_ref": request.signal_ref,
            "purpose": request.purpose,
            "requested_fields": json.dumps(list(request.fields)),
            "requester_officer": request.officer,
            "justification": request.justification,
            "covenant_version": request.covenant_version,
            "requested_at": utc(request.requested_at, "requested_at"),
            "person_score": _score(request.person_score),
            "created_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _verdict_values(verdict: Verdict, now: datetime) -> dict[str, Any]:
        if verdict.outcome is Outcome.GRANTED:
            return {
                "state": DisclosureState.GRANTED.value,
                "released_fields": json.dumps(sorted(verdict.values or {})),
                "withheld_fields": json.dumps(list(verdict.withheld)),
                "rule_category": verdict.rule_category,
                "finished_at": now,
                "updated_at": now,
            }
        if verdict.outcome is Outcome.PENDING:
            return {"state": DisclosureState.PENDING_APPROVAL.value, "updated_at": now}
        assert verdict.reason is not None
        return {
            "state": DisclosureState.REFUSED.value,
            "refusal_reason": verdict.reason.value,
            "refusal_message": verdict.message,
            "finished_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _verdict_audit(verdict: Verdict, purpose: str) -> dict[str, object]:
        """Outcome, purpose and field names (never values), as the audit log takes them."""
        return {
            "outcome": verdict.outcome.value,
            "purpose": purpose,
            "released": audit_names(sorted(verdict.values or {})),
            "withheld": audit_names(verdict.withheld),
            "reason": "" if verdict.reason is None else verdict.reason.value,
        }

    def _disclosure_by(self, conn: Connection, request_id: bytes) -> DisclosureRecord:
        row = conn.execute(
            select(models.Disclosure.__table__).where(models.Disclosure.request_id == request_id)
        ).one()
        return _disclosure_record(row)


def _disclosure_record(row: Any) -> DisclosureRecord:
    released: dict[str, str] = {}
    if row.released_fields is not None:
        value = json.loads(row.released_fields)
        released = dict.fromkeys(value, "") if isinstance(value, list) else dict(value)
    return DisclosureRecord(
        id=row.id,
        request_id=row.request_id,
        direction=DisclosureDirection(row.direction),
        state=DisclosureState(row.state),
        requester=row.requester,
        owner=row.owner,
        hit_group_id=row.hit_group_id,
        signal_ref=row.signal_ref,
        signal_id=row.signal_id,
        purpose=row.purpose,
        requested_fields=tuple(json.loads(row.requested_fields)),
        requester_officer=row.requester_officer,
        justification=row.justification,
        covenant_version=row.covenant_version,
        released=MappingProxyType(released),
        withheld=tuple(json.loads(row.withheld_fields or "[]")),
        rule_category=row.rule_category,
        refusal_reason=row.refusal_reason,
        refusal_message=row.refusal_message,
        decided_by=row.decided_by,
        decision_approved=row.decision_approved,
        decision_note=row.decision_note,
        decided_at=row.decided_at,
        requested_at=row.requested_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        person_score=row.person_score,
    )


def _score(value: float | None) -> float | None:
    """A score as stored: finite, 0 to 1000 bits (another party's claim: bounded)."""
    if value is None:
        return None
    if not 0 <= value <= MAX_PERSON_SCORE:  # also refuses NaN
        raise InvalidInput(f"a score is 0 to {MAX_PERSON_SCORE:g} bits", field="person_score")
    return float(value)
