"""The cases' repository: cases as :mod:`samenloop.node.cases.machine` folded them.

Each change is stored in one transaction with its message log row, the envelopes it
causes and, for a relayed message, the mailbox cursor; a refused one is audited with the
cursor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from samenloop.node.cases import machine as case_core
from samenloop.node.cases import models
from samenloop.node.daemon.database import ID_BYTES, Database, SealedEnvelope, chunks, utc
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import Replay

__all__ = [
    "CaseStore",
]

# An officer's identity goes into the audit details only in the shape they accept.
_PRINTABLE_OFFICER: Final = re.compile(r"[\x20-\x7e]{1,64}")


def _split_ids(joined: bytes | None) -> tuple[bytes, ...]:
    """Ids of 16 bytes each, stored one after the other."""
    if not joined:
        return ()
    return tuple(joined[i : i + 16] for i in range(0, len(joined), 16))


class CaseStore(Database):
    """Cases, their members, actions and message log."""

    def case(self, case_id: bytes, *, history: bool = False) -> case_core.Case | None:
        """The case with this id as this node holds it (with its history if asked)."""
        with self._read() as conn:
            row = conn.execute(
                select(models.Case.__table__).where(models.Case.case_id == case_id)
            ).one_or_none()
            if row is None:
                return None
            return self._load_cases(conn, [row], history=history)[0]

    def cases(
        self, state: case_core.CaseState | None = None, *, coordinator: str | None = None
    ) -> list[case_core.Case]:
        """Cases held here, newest first; only one state or one coordinator's if given."""
        c = models.Case
        query = select(c.__table__)
        if state is not None:
            query = query.where(c.state == case_core.CaseState(state).value)
        if coordinator is not None:
            query = query.where(c.coordinator == coordinator)
        with self._read() as conn:
            rows = conn.execute(query.order_by(c.id.desc())).all()
            return self._load_cases(conn, rows, history=False)

    def case_message_seen(self, message_id: bytes) -> bool:
        """Whether a case message with this id was applied here."""
        with self._read() as conn:
            return (
                conn.execute(
                    select(models.CaseMessage.id).where(models.CaseMessage.message_id == message_id)
                ).first()
                is not None
            )

    def record_case_change(
        self,
        before: case_core.Case | None,
        applied: case_core.Applied,
        envelopes: Sequence[SealedEnvelope],
        *,
        cursor: int | None = None,
        now: datetime,
    ) -> None:
        """Store an applied change: the case, its members and actions as they are after it,
        the message log row, the envelopes to the members and (for a relayed message) the
        mailbox cursor, with an audit entry, in one transaction. A message id or author
        sequence already stored raises ``Replay`` and stores nothing."""
        now = utc(now)
        after, change = applied.case, applied.change
        c = models.Case
        values: dict[str, Any] = {
            "title": after.title,
            "state": after.state.value,
            "access": after.access.value,
            "hit_notice": after.hit_notice,
            "linked_group_ids": b"".join(after.linked_group_ids) or None,
            "closed_at": after.closed_at,
            "outcome": after.outcome,
            "updated_at": now,
        }
        try:
            with self._write() as conn:
                if cursor is not None:
                    stored_cursor, last_feed_seq = self._lock_inbox(conn)
                    if cursor > stored_cursor:
                        self._save_inbox(conn, cursor, last_feed_seq)
                if before is None:
                    key = conn.execute(
                        insert(c)
                        .values(
                            case_id=after.case_id,
                            coordinator=after.coordinator,
                            hit_group_id=after.hit_group_id,
                            opened_at=after.opened_at,
                            created_at=now,
                            **values,
                        )
                        .returning(c.id)
                    ).scalar_one()
                else:
                    key = conn.execute(
                        update(c).where(c.case_id == after.case_id).values(**values).returning(c.id)
                    ).scalar_one()
                if change.members:
                    conn.execute(delete(models.CaseMember).where(models.CaseMember.case_id == key))
                    conn.execute(
                        insert(models.CaseMember),
                        [{"case_id": key, "party": party} for party in after.members],
                    )
                self._store_actions(conn, key, before, applied)
                conn.execute(
                    insert(models.CaseMessage).values(
                        case_id=key,
                        message_id=change.message_id,
                        author=change.author,
                        author_officer=change.author_officer,
                        author_sequence=change.author_sequence,
                        kind=change.kind.value,
                        issued_at=change.issued_at,
                        received_at=now,
                        summary=applied.summary,
                    )
                )
                for envelope in envelopes:
                    self._queue_envelope(conn, envelope, now)
                details: dict[str, object] = {
                    "kind": change.kind.value,
                    "members": len(after.members),
                    "state": after.state.value,
                    "access": after.access.value,
                    "sequence": change.author_sequence,
                    "gap": applied.gap,
                    "sent_to": len(envelopes),
                    "received": cursor is not None,
                }
                subject = [after.case_id.hex()]
                if change.action is not None:
                    subject.append(change.action.action_id.hex())
                    action = after.action(change.action.action_id)
                    if action is not None:
                        details["status"] = action.status.value
                        details["intervention"] = action.intervention_type.value
                # This node's own change names its officer as the actor (as given); a change
                # received names the author party, and its officer where the id is plain ASCII.
                own = cursor is None
                if not own and _PRINTABLE_OFFICER.fullmatch(change.author_officer):
                    details["officer"] = change.author_officer
                self.append_audit(
                    conn,
                    kind=AuditKind.CASE_EVENT,
                    actor=change.author_officer if own else change.author,
                    subject=subject,
                    details=details,
                    now=now,
                )
        except IntegrityError as error:
            raise Replay(
                "this case change is stored already", field="message_id", reason="case.replay"
            ) from error

    def _store_actions(
        self, conn: Connection, key: int, before: case_core.Case | None, applied: case_core.Applied
    ) -> None:
        a = models.CaseAction
        change, after = applied.change, applied.case
        if change.kind is case_core.ChangeKind.INVITE and (
            before is None or before.access is case_core.Access.REMOVED
        ):
            replaced = after.actions  # a late member takes the whole plan
            conn.execute(delete(a).where(a.case_id == key))
        elif change.kind is case_core.ChangeKind.ACTION_ADD and change.action is not None:
            replaced = tuple(x for x in after.actions if x.action_id == change.action.action_id)
        elif change.kind is case_core.ChangeKind.ACTION_UPDATE and change.action is not None:
            action = after.action(change.action.action_id)
            assert action is not None
            conn.execute(
                update(a)
                .where(a.case_id == key, a.action_id == action.action_id)
                .values(
                    status=action.status.value,
                    deadline=action.deadline,
                    note=action.note,
                    updated_at=action.updated_at,
                    updated_by=action.updated_by,
                )
            )
            return
        else:
            return
        if replaced:
            conn.execute(
                insert(a),
                [
                    {
                        "case_id": key,
                        "action_id": x.action_id,
                        "owner": x.owner,
                        "intervention_type": x.intervention_type.value,
                        "measure": x.measure,
                        "description": x.description,
                        "deadline": x.deadline,
                        "status": x.status.value,
                        "note": x.note,
                        "added_at": x.added_at,
                        "updated_at": x.updated_at,
                        "updated_by": x.updated_by,
                    }
                    for x in replaced
                ],
            )

    def refuse_case_message(
        self,
        cursor: int,
        *,
        case_id: bytes | None,
        kind: str,
        reason: str,
        author: str | None = None,
        now: datetime,
    ) -> None:
        """Record a relayed case message that is not applied (refused, malformed, a replay)
        and advance past it, in one transaction. Nothing of the message is stored."""
        now = utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(
                conn,
                kind=AuditKind.CASE_EVENT,
                actor=author,
                subject=[] if case_id is None or len(case_id) != ID_BYTES else [case_id.hex()],
                details={"kind": kind, "refused": reason, "cursor": cursor, "received": True},
                now=now,
            )

    def _load_cases(
        self, conn: Connection, rows: Sequence[Any], *, history: bool
    ) -> list[case_core.Case]:
        keys = [row.id for row in rows]
        members: dict[int, list[str]] = {k: [] for k in keys}
        actions: dict[int, list[case_core.Action]] = {k: [] for k in keys}
        sequences: dict[int, dict[str, int]] = {k: {} for k in keys}
        entries: dict[int, list[case_core.HistoryEntry]] = {k: [] for k in keys}
        m, a, g = models.CaseMember, models.CaseAction, models.CaseMessage
        for chunk in chunks(keys):
            for member in conn.execute(
                select(m.case_id, m.party).where(self._among(m.case_id, chunk)).order_by(m.party)
            ):
                members[member.case_id].append(member.party)
            for x in conn.execute(
                select(a.__table__).where(self._among(a.case_id, chunk)).order_by(a.id)
            ):
                actions[x.case_id].append(
                    case_core.Action(
                        action_id=x.action_id,
                        owner=x.owner,
                        intervention_type=case_core.InterventionType(x.intervention_type),
                        measure=x.measure,
                        description=x.description,
                        deadline=x.deadline,
                        status=case_core.ActionStatus(x.status),
                        note=x.note,
                        updated_at=x.updated_at,
                        updated_by=x.updated_by,
                        added_at=x.added_at,
                    )
                )
            for s in conn.execute(
                select(g.case_id, g.author, func.max(g.author_sequence).label("last"))
                .where(self._among(g.case_id, chunk))
                .group_by(g.case_id, g.author)
            ):
                sequences[s.case_id][s.author] = int(s.last)
            if history:
                for h in conn.execute(
                    select(g.__table__).where(self._among(g.case_id, chunk)).order_by(g.id)
                ):
                    entries[h.case_id].append(
                        case_core.HistoryEntry(
                            h.issued_at,
                            h.author,
                            h.author_officer,
                            case_core.ChangeKind(h.kind),
                            h.summary,
                        )
                    )
        return [
            case_core.Case(
                case_id=row.case_id,
                coordinator=row.coordinator,
                title=row.title,
                hit_group_id=row.hit_group_id,
                state=case_core.CaseState(row.state),
                access=case_core.Access(row.access),
                members=tuple(members[row.id]),
                actions=tuple(actions[row.id]),
                opened_at=row.opened_at,
                closed_at=row.closed_at,
                outcome=row.outcome,
                sequences=MappingProxyType(sequences[row.id]),
                hit_notice=row.hit_notice,
                history=tuple(entries[row.id]),
                linked_group_ids=_split_ids(row.linked_group_ids),
            )
            for row in rows
        ]
