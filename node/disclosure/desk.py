"""Where a node's disclosure requests come and go: the core's decisions, kept in the store.

A thin adapter between :mod:`samenloop.node.disclosure.protocol` (the sans-IO rules),
the node's store and its keys. The local API asks and decides through it
(:meth:`DisclosureDesk.ask`, :meth:`~DisclosureDesk.approve`,
:meth:`~DisclosureDesk.deny`); the uplink hands it every relayed envelope
(:meth:`DisclosureDesk.receive`). Every outcome is stored in one transaction
with what it causes: a request with its envelope in the outbox, an incoming
request with its answer and the mailbox cursor, an officer's decision with its
answer. The uplink sends the envelope outbox to the broker.

Decisions as owner (the automatic one on a relayed request, an officer's
approval or denial) are serialized by one desk lock: a rule's period quota is
counted and the grant written before the next decision counts, so concurrent
approvals and the mailbox thread cannot together release more than the
covenant allows.

Nothing a relayed envelope holds can stop the mailbox: whatever its content
makes fail (malformed, too large, out of range, refused by the rules; for any
kind, also those the registered handlers take) is recorded as skipped, with the
field and reason, and the mailbox moves on.

Log lines carry outcomes, reasons and counts: never a party's identifier, a
detail value, a decrypted field, a justification or an officer's identity.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from google.protobuf.message import DecodeError

from samenloop.node.daemon.database import SealedEnvelope
from samenloop.node.daemon.envelopes import Envelope
from samenloop.node.disclosure import protocol as disclosure
from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
from samenloop.node.disclosure.protocol import Outcome, PendingRequest, Verdict
from samenloop.node.disclosure.store import DisclosureRecord, DisclosureStore, NewDisclosure
from samenloop.node.identifiers.person_hits import signal_score
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    CovenantStale,
    InvalidInput,
    NotAllowed,
    NotFound,
    SamenloopError,
    Unavailable,
)
from samenloop.policies.rules import Refusal
from samenloop.v1 import broker_pb2, common_pb2

__all__ = ["DisclosureDesk", "EnvelopeHandler"]

#: Handles one verified relayed message: (mailbox cursor, sender, signed body, covenant).
EnvelopeHandler = Callable[[int, str, bytes, Covenant], None]

log = structlog.get_logger(__name__)

ID_BYTES = disclosure.ID_BYTES


class DisclosureDesk:
    """This node's side of every disclosure request, as requester and as owner."""

    def __init__(
        self,
        *,
        keys: PartyKeys,
        covenant: Callable[[], Covenant],
        store: DisclosureStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        wake: Callable[[], None] = lambda: None,
        stale: Callable[[], str | None] = lambda: None,
        min_person_score: float = 0.0,
    ) -> None:
        """``wake`` tells the uplink that the envelope outbox has something to send;
        ``stale`` says why the node is stale (no unexpired covenant timestamp), None while
        it is fresh: a stale node asks nothing, refuses what it receives
        (``covenant_stale``) and lets no officer approve, since a party in the request may
        have been removed by a version the broker withholds."""
        self._stale = stale
        #: node.toml's ``min_disclosure_score``: as owner, the least score of a probable
        #: person hit it answers on (the covenant's ``disclosure_score`` if higher).
        self._min_person_score = min_person_score
        self._keys = keys
        self._me = keys.party
        self._covenant = covenant
        self._store = store
        self._clock = clock
        self._random = random_bytes
        self.wake = wake
        #: Other kinds of relayed message, by signed context (cases, pictures): each
        #: handler records the cursor itself, also when it refuses the message.
        self.handlers: dict[SignatureContext, EnvelopeHandler] = {}
        #: Serializes this node's decisions as owner (see the module's docstring).
        self._lock = threading.Lock()

    def _person_score(
        self, notice: broker_pb2.HitNotice, owner: str, covenant: Covenant
    ) -> float | None:
        """This node's score of the probable person hit with ``owner`` that the hit is part
        of (its own refs in it are person keys), for the request to say so; else None."""
        for ref in sorted(notice.own_signal_refs):
            evidence = self._store.person_kinds(bytes(ref), owner)
            if evidence is not None:
                agreeing, own = evidence
                return signal_score(agreeing, own, covenant.policy.person_matching)
        return None

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _require_fresh(self) -> None:
        stale = self._stale()
        if stale is not None:
            raise CovenantStale(stale, field="covenant")

    # --- as requester -----------------------------------------------------------------

    def ask(
        self,
        *,
        hit_group_id: bytes,
        owner: str,
        signal_ref: bytes,
        purpose: str,
        fields: Sequence[str],
        officer: str,
        justification: str,
    ) -> DisclosureRecord:
        """Ask ``owner`` for details of one of its signals in a hit this node holds.

        Bad input is refused here, naming the field, and nothing is stored; a
        valid request is stored (state ``sent``) with its sealed envelope. The
        request carries the hit proof of one of this node's own signals in the
        hit: a node with none there cannot ask (``disclosure.no_own_signal``).
        """
        if len(hit_group_id) != ID_BYTES:
            raise InvalidInput(f"a hit group id is {ID_BYTES} bytes", field="hit_group_id")
        self._require_fresh()
        stored = self._store.hit_notice(hit_group_id)
        if stored is None:
            raise NotFound("no hit with this group id", field="hit_group_id")
        signed = common_pb2.Signed.FromString(stored)
        notice = broker_pb2.HitNotice.FromString(signed.body)
        covenant = self._covenant()
        proof_key = disclosure.check_request(
            covenant,
            self._me,
            notice,
            owner=owner,
            signal_ref=signal_ref,
            purpose=purpose,
            fields=fields,
            officer=officer,
            justification=justification,
            proof_keys=self._store.hit_proof_key,
        )
        now = self._now()
        request_id = self._random(ID_BYTES)
        score = self._person_score(notice, owner, covenant)
        _request, envelope = disclosure.build_request(
            self._keys,
            covenant,
            signed,
            request_id=request_id,
            owner=owner,
            signal_ref=signal_ref,
            purpose=purpose,
            fields=fields,
            officer=officer,
            justification=justification,
            proof_key=proof_key,
            now=now,
            person_score=score,
        )
        record = self._store.record_outgoing(
            NewDisclosure(
                request_id=request_id,
                requester=self._me,
                owner=owner,
                hit_group_id=hit_group_id,
                signal_ref=signal_ref,
                purpose=purpose,
                fields=tuple(fields),
                officer=officer,
                justification=justification,
                covenant_version=covenant.version,
                requested_at=now,
                person_score=score,
            ),
            SealedEnvelope.of(envelope),
            now=now,
        )
        self.wake()
        log.info("disclosure requested", purpose=purpose, fields=len(fields))
        return record

    # --- what the broker relays ---------------------------------------------------------

    def receive(self, cursor: int, sealed: common_pb2.Sealed) -> None:
        """Handle one relayed envelope and record it with the mailbox cursor.

        A forged or malformed envelope is dropped without an answer (nothing
        can be answered safely) and recorded; a kind this version does not
        handle (no handler registered for its context) is recorded and skipped.
        Whatever its content makes fail, here or in a handler, is recorded as
        skipped with the field and reason: one bad envelope never blocks the
        mailbox. Only ``Unavailable`` (try again later) passes.
        """
        covenant = self._covenant()
        now = self._now()
        try:
            context, body = disclosure.open_envelope(self._keys, covenant, sealed)
        except (SamenloopError, ValueError, OverflowError) as error:
            if isinstance(error, Unavailable):
                raise
            self._skip(cursor, "forged", error, now)
            return
        try:
            if context is SignatureContext.DISCLOSURE_REQUEST:
                with self._lock:
                    self._request(cursor, sealed.sender, body, covenant, now)
            elif context is SignatureContext.DISCLOSURE_RESPONSE:
                self._response(cursor, sealed.sender, body, now)
            elif (handler := self.handlers.get(context)) is not None:
                handler(cursor, sealed.sender, body, covenant)
            else:
                log.info("envelope kind not handled by this version", context=context.value)
                self._store.skip_envelope(cursor, what=f"unhandled {context.value}", now=now)
        except (SamenloopError, DecodeError, ValueError, OverflowError) as error:
            if isinstance(error, Unavailable):
                raise
            self._skip(cursor, "malformed", error, now)

    def _skip(self, cursor: int, what: str, error: Exception, now: datetime) -> None:
        """Record an envelope dropped for ``error`` (its field and reason, never its text)."""
        if isinstance(error, SamenloopError):
            where, reason = error.field, error.reason
        else:
            where, reason = None, type(error).__name__
        log.warning(
            "envelope dropped",
            cursor=cursor,
            what=what,
            error=type(error).__name__,
            field=where,
            reason=reason,
        )
        self._store.skip_envelope(cursor, what=what, field=where, reason=reason, now=now)

    def _request(
        self, cursor: int, sender: str, body: bytes, covenant: Covenant, now: datetime
    ) -> None:
        incoming = disclosure.parse_request(body, sender=sender, me=self._me)
        verdict = disclosure.decide(
            covenant,
            self._me,
            incoming,
            self._store,
            now=now,
            stale=self._stale(),
            min_person_score=self._min_person_score,
        )
        answer: Envelope | None = None
        if verdict.reason is Refusal.REPLAY:
            # Recorded (audited), not answered: an answer would reach the requester's
            # request, which may still be waiting for the real one.
            pass
        elif not covenant.is_party(incoming.requester):
            verdict = disclosure.no_longer_a_party()
        else:
            answer = disclosure.respond(
                self._keys,
                covenant,
                request_id=incoming.request_id,
                requester=incoming.requester,
                verdict=verdict,
                approved_by_second_officer=False,
                message_id=self._random(ID_BYTES),
                now=now,
            )
        self._store.receive_request(
            cursor,
            NewDisclosure(
                request_id=incoming.request_id,
                requester=incoming.requester,
                owner=self._me,
                hit_group_id=incoming.hit_group_id,
                signal_ref=incoming.signal_ref,
                purpose=incoming.purpose,
                fields=incoming.fields,
                officer=incoming.officer,
                justification=incoming.justification,
                covenant_version=covenant.version,
                requested_at=incoming.issued_at,
                person_score=incoming.person_score,
            ),
            verdict,
            None if answer is None else SealedEnvelope.of(answer),
            now=now,
        )
        if answer is not None:
            self.wake()
        _log_verdict("disclosure request decided", verdict)

    def _response(self, cursor: int, sender: str, body: bytes, now: datetime) -> None:
        update = disclosure.parse_response(body, sender=sender, me=self._me)
        if update.reason is Refusal.REPLAY:
            # A replay refusal answers a copy of a request, not the request: it never
            # changes the request (which may still wait for the owner's real answer).
            log.info("replay refusal ignored", cursor=cursor)
            self._store.skip_envelope(cursor, what="replay refusal", reason="replay", now=now)
            return
        changed = self._store.apply_response(cursor, update, now=now)
        log.info(
            "disclosure answer received",
            outcome=update.outcome.value,
            reason=None if update.reason is None else update.reason.value,
            applied=changed,
        )

    # --- as owner: four eyes ---------------------------------------------------------------

    def _pending(self, request_id: bytes) -> PendingRequest:
        if len(request_id) != ID_BYTES:
            raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
        record = self._store.disclosure(request_id)
        if record is None:
            raise NotFound("no disclosure request with this id", field="request_id")
        if (
            record.direction is not DisclosureDirection.INCOMING
            or record.state is not DisclosureState.PENDING_APPROVAL
        ):
            raise NotAllowed(
                "not an incoming request waiting for approval",
                field="request_id",
                reason="disclosure.not_pending",
            )
        return PendingRequest(
            request_id=record.request_id,
            requester=record.requester,
            signal_ref=record.signal_ref,
            hit_group_id=record.hit_group_id,
            purpose=record.purpose,
            fields=record.requested_fields,
            requester_officer=record.requester_officer,
            decided_by=record.decided_by,
        )

    def approve(self, request_id: bytes, *, officer: str, note: str = "") -> DisclosureRecord:
        """A second officer of this node approves a pending request: decided again under the
        covenant of now, then granted (or refused, if the rules no longer allow it)."""
        if len(note.encode("utf-8")) > disclosure.MAX_TEXT_BYTES:
            raise InvalidInput(f"at most {disclosure.MAX_TEXT_BYTES} bytes", field="note")
        with self._lock:
            pending = self._pending(request_id)
            self._require_fresh()  # it stays pending: approve again once the node is fresh
            covenant = self._covenant()
            now = self._now()
            verdict = disclosure.approve(
                covenant, pending, officer, self._store, me=self._me, now=now
            )
            return self._decided(pending, officer, True, note, verdict, covenant, now)

    def deny(self, request_id: bytes, *, officer: str, reason: str) -> DisclosureRecord:
        """A second officer of this node denies a pending request; the reason goes to the
        requester with the refusal."""
        with self._lock:
            pending = self._pending(request_id)
            verdict = disclosure.deny(pending, officer, reason)
            covenant, now = self._covenant(), self._now()
            return self._decided(pending, officer, False, reason, verdict, covenant, now)

    def _decided(
        self,
        pending: PendingRequest,
        officer: str,
        approved: bool,
        note: str,
        verdict: Verdict,
        covenant: Covenant,
        now: datetime,
    ) -> DisclosureRecord:
        """Store an officer's decision with its answer; a requester a covenant version removed
        is refused (``not_allowed``) and not answered: there is no key to seal to."""
        answer: Envelope | None = None
        if not covenant.is_party(pending.requester):
            verdict = disclosure.no_longer_a_party()
        else:
            answer = disclosure.respond(
                self._keys,
                covenant,
                request_id=pending.request_id,
                requester=pending.requester,
                verdict=verdict,
                approved_by_second_officer=verdict.outcome is Outcome.GRANTED,
                message_id=self._random(ID_BYTES),
                now=now,
            )
        record = self._store.decide_pending(
            pending.request_id,
            officer=officer,
            approved=approved,
            note=note,
            verdict=verdict,
            answer=None if answer is None else SealedEnvelope.of(answer),
            now=now,
        )
        if answer is not None:
            self.wake()
        _log_verdict("pending disclosure decided", verdict)
        return record


def _log_verdict(event: str, verdict: Verdict) -> None:
    log.info(
        event,
        outcome=verdict.outcome.value,
        reason=None if verdict.reason is None else verdict.reason.value,
        released=len(verdict.values or {}),
        withheld=len(verdict.withheld),
    )
