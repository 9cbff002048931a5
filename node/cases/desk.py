"""Where a node's cases change: the core's transitions, kept in the store and sealed out.

A thin adapter between :mod:`samenloop.node.cases.machine` (the sans-IO machine), the
node's store and its keys. The local API changes cases through it (open,
invite, add and update actions, remove members, close); the uplink hands it
every relayed envelope whose signed context is ``case-message``
(:meth:`CaseDesk.receive`). Every change, local or relayed, goes through the
same :func:`~samenloop.node.cases.machine.apply` and is stored in one transaction with
its log row, its envelopes (sealed to each member) and, when relayed, the
mailbox cursor. Changes to the cases of one node are serialized by a lock, so
an author's sequence numbers never collide.

Log lines carry kinds, reasons and counts: never a title, a measure, a note,
an outcome or an officer's identity.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog

from samenloop.node.cases import machine as case_core
from samenloop.node.cases.machine import Applied, Case, CaseChange, Refused
from samenloop.node.cases.store import CaseStore
from samenloop.node.daemon.database import SealedEnvelope
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import (
    CovenantStale,
    InvalidInput,
    NotAllowed,
    NotFound,
    Replay,
    SamenloopError,
)
from samenloop.v1 import common_pb2

__all__ = ["CaseDesk"]

log = structlog.get_logger(__name__)

ID_BYTES = case_core.ID_BYTES


def _case_id(case_id: bytes) -> bytes:
    if len(case_id) != ID_BYTES:
        raise InvalidInput(f"a case id is {ID_BYTES} bytes", field="case_id")
    return case_id


class CaseDesk:
    """This node's side of every case it coordinates or is a member of."""

    def __init__(
        self,
        *,
        keys: PartyKeys,
        covenant: Callable[[], Covenant],
        store: CaseStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        wake: Callable[[], None] = lambda: None,
        stale: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``wake`` tells the uplink that the envelope outbox has something to send;
        ``stale`` says why the node is stale (no unexpired covenant timestamp), None while
        it is fresh: a stale node seals no case message (a member may have been removed
        by a version the broker withholds)."""
        self._keys = keys
        self._me = keys.party
        self._covenant = covenant
        self._store = store
        self._clock = clock
        self._random = random_bytes
        self.wake = wake
        self._stale = stale
        self._lock = threading.Lock()

    @property
    def party(self) -> str:
        return self._me

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _id(self) -> bytes:
        return self._random(ID_BYTES)

    # --- reading ---------------------------------------------------------------------------

    def case(self, case_id: bytes, *, history: bool = False) -> Case:
        """One case this node holds; ``NotFound`` (field ``case_id``) otherwise."""
        found = self._store.case(_case_id(case_id), history=history)
        if found is None:
            raise NotFound("no case with this id", field="case_id")
        return found

    def cases(self, state: case_core.CaseState | None = None) -> list[Case]:
        return self._store.cases(state)

    def board(self, *, overdue_only: bool = False) -> list[case_core.BoardEntry]:
        """The coordinator's board: open actions of the open cases this node coordinates."""
        held = self._store.cases(case_core.CaseState.OPEN, coordinator=self._me)
        return case_core.board(held, self._me, self._now(), overdue_only=overdue_only)

    # --- changing, as an author ----------------------------------------------------------------

    def _signed_notice(self, hit_group_id: bytes) -> common_pb2.Signed:
        if len(hit_group_id) != ID_BYTES:
            raise InvalidInput(f"a hit group id is {ID_BYTES} bytes", field="hit_group_id")
        stored = self._store.hit_notice(hit_group_id)
        if stored is None:
            raise NotFound("this node holds no hit with this group id", field="hit_group_id")
        return common_pb2.Signed.FromString(stored)

    def _change(self, case_id: bytes, build: Callable[[Covenant, Case | None], CaseChange]) -> Case:
        """Build a change of a case this node holds from the covenant in force and the case
        as stored, apply it, and commit it with its envelopes — one at a time."""
        with self._lock:
            covenant = self._covenant()
            before = self._store.case(_case_id(case_id))
            return self._commit(before, build(covenant, before), covenant)

    def _commit(self, before: Case | None, change: CaseChange, covenant: Covenant) -> Case:
        stale = self._stale()
        if stale is not None:
            raise CovenantStale(stale, field="covenant")
        result = case_core.apply(covenant, self._me, before, change, now=self._now())
        if isinstance(result, Refused):
            raise NotAllowed(result.message, field="case_id", reason=f"case.{result.reason.value}")
        envelopes = case_core.seal(self._keys, covenant, before, result, self._id)
        self._store.record_case_change(
            before, result, [SealedEnvelope.of(e) for e in envelopes], now=self._now()
        )
        self.wake()
        log.info(
            "case changed",
            kind=change.kind.value,
            members=len(result.case.members),
            sent=len(envelopes),
        )
        return self.case(change.case_id)

    def open(
        self,
        *,
        hit_group_id: bytes,
        title: str,
        invite: Sequence[str],
        officer: str,
        linked_hit_group_ids: Sequence[bytes] = (),
    ) -> Case:
        """Open a case on a hit this node holds and invite parties of that hit; with
        ``linked_hit_group_ids`` (the other hits of a component of the subject network),
        on the component: parties of any of its hits may be invited."""
        with self._lock:
            covenant = self._covenant()
            change = case_core.open_case(
                covenant,
                self._me,
                self._signed_notice(hit_group_id),
                linked_notices=[self._signed_notice(g) for g in linked_hit_group_ids],
                case_id=self._id(),
                message_id=self._id(),
                title=title,
                invite=list(invite),
                officer=officer,
                now=self._now(),
            )
            return self._commit(None, change, covenant)

    def invite(self, case_id: bytes, parties: Sequence[str], *, officer: str) -> Case:
        """Invite further parties of the case's hit (with the node's latest notice of it)."""

        def build(covenant: Covenant, before: Case | None) -> CaseChange:
            notice = self._signed_notice(before.hit_group_id) if before is not None else None
            held = () if before is None else before.linked_group_ids
            linked = [self._signed_notice(g) for g in held]
            return case_core.invite(
                covenant,
                self._me,
                before,
                list(parties),
                message_id=self._id(),
                officer=officer,
                now=self._now(),
                signed_notice=notice or common_pb2.Signed(),
                linked_notices=linked,
            )

        return self._change(case_id, build)

    def add_action(
        self,
        case_id: bytes,
        *,
        owner: str,
        intervention_type: case_core.InterventionType | str,
        measure: str,
        description: str = "",
        deadline: datetime,
        officer: str,
    ) -> Case:
        """Add a planned action, owned by a member, to the plan."""
        try:
            kind = case_core.InterventionType(intervention_type)
        except ValueError:
            raise InvalidInput(
                f"one of: {', '.join(t.value for t in case_core.InterventionType)}",
                field="action.intervention_type",
            ) from None

        def build(covenant: Covenant, before: Case | None) -> CaseChange:
            return case_core.add_action(
                covenant,
                self._me,
                before,
                message_id=self._id(),
                action_id=self._id(),
                owner=owner,
                intervention_type=kind,
                measure=measure,
                description=description,
                deadline=deadline,
                officer=officer,
                now=self._now(),
            )

        return self._change(case_id, build)

    def update_action(
        self,
        case_id: bytes,
        action_id: bytes,
        *,
        status: case_core.ActionStatus | str | None = None,
        deadline: datetime | None = None,
        note: str = "",
        officer: str,
    ) -> Case:
        """Update an action this node owns (or, as coordinator, any action)."""
        try:
            new_status = None if status is None else case_core.ActionStatus(status)
        except ValueError:
            raise InvalidInput(
                f"one of: {', '.join(s.value for s in case_core.ActionStatus)}", field="status"
            ) from None

        def build(covenant: Covenant, before: Case | None) -> CaseChange:
            return case_core.update_action(
                covenant,
                self._me,
                before,
                action_id,
                message_id=self._id(),
                status=new_status,
                deadline=deadline,
                note=note,
                officer=officer,
                now=self._now(),
            )

        return self._change(case_id, build)

    def remove(self, case_id: bytes, parties: Sequence[str], *, officer: str) -> Case:
        """Remove members: they get this last message and nothing further."""

        def build(covenant: Covenant, before: Case | None) -> CaseChange:
            return case_core.remove_members(
                covenant,
                self._me,
                before,
                list(parties),
                message_id=self._id(),
                officer=officer,
                now=self._now(),
            )

        return self._change(case_id, build)

    def close(self, case_id: bytes, *, outcome: str, officer: str) -> Case:
        """Close the case with its outcome."""

        def build(covenant: Covenant, before: Case | None) -> CaseChange:
            return case_core.close_case(
                covenant,
                self._me,
                before,
                outcome=outcome,
                message_id=self._id(),
                officer=officer,
                now=self._now(),
            )

        return self._change(case_id, build)

    # --- what the broker relays ---------------------------------------------------------

    def receive(self, cursor: int, sender: str, body: bytes, covenant: Covenant) -> None:
        """Apply a verified case message from ``sender`` and record it with the mailbox
        cursor; a malformed, refused or repeated one is audited and skipped."""
        now = self._now()
        try:
            change = case_core.parse_change(body, sender=sender)
        except SamenloopError as error:
            log.warning("case message dropped", reason="malformed", field=error.field)
            self._store.refuse_case_message(
                cursor, case_id=None, kind="unknown", reason="malformed", author=sender, now=now
            )
            return
        with self._lock:
            before = self._store.case(change.case_id)
            seen = self._store.case_message_seen(change.message_id)
            result = case_core.apply(covenant, self._me, before, change, now=now, seen=seen)
            if isinstance(result, Applied):
                try:
                    self._store.record_case_change(before, result, (), cursor=cursor, now=now)
                except Replay:
                    result = Refused(case_core.CaseRefusal.REPLAY, "stored already")
            if isinstance(result, Refused):
                log.info("case message refused", kind=change.kind.value, reason=result.reason.value)
                self._store.refuse_case_message(
                    cursor,
                    case_id=change.case_id,
                    kind=change.kind.value,
                    reason=result.reason.value,
                    author=sender,
                    now=now,
                )
                return
        log.info(
            "case message applied",
            kind=change.kind.value,
            gap=result.gap,
            access=result.case.access.value,
        )
