"""The key holder's repository: its daily usage counters and its replay cache.

The key share itself stays in its own 0600 file. A served evaluation is counted with its
replay-cache entry in one transaction, before the reply leaves (see
:func:`samenloop.node.daemon.uplink.record_answer`); refusals are summed and written at
most once a minute per requester and outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, delete, func, select

from samenloop.node.daemon import models as daemon_models
from samenloop.node.daemon.database import Database, check_text, utc
from samenloop.node.tokens import models
from samenloop.node.tokens.holder import ANSWERED_AGAIN, AnsweredRequest, HolderEvent
from samenloop.policies import crypto
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import InvalidInput, Replay

__all__ = [
    "HolderTotals",
    "TokenStore",
]


@dataclass(frozen=True, slots=True)
class HolderTotals:
    """The key-holder counters summed over parties and days."""

    requests_served: int
    elements_evaluated: int
    requests_refused: int


class TokenStore(Database):
    """Key-holder usage by party and day, and the answered requests (replay cache)."""

    def _count_usage(
        self,
        conn: Connection,
        party: str,
        day: date,
        *,
        served: int,
        elements: int,
        refused: int,
        key_epoch: int = 0,
    ) -> None:
        usage = models.HolderUsage
        statement = self._insert(usage).values(
            party=party,
            day=day,
            key_epoch=key_epoch,
            requests_served=served,
            elements_evaluated=elements,
            requests_refused=refused,
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["party", "day", "key_epoch"],
                set_={
                    "requests_served": usage.requests_served + statement.excluded.requests_served,
                    "elements_evaluated": usage.elements_evaluated
                    + statement.excluded.elements_evaluated,
                    "requests_refused": usage.requests_refused
                    + statement.excluded.requests_refused,
                },
            )
        )

    def count_evaluation(
        self,
        party: str,
        *,
        now: datetime,
        elements: int,
        answered: AnsweredRequest | None = None,
        key_epoch: int = 0,
    ) -> None:
        """Count one key-holder request of ``party`` served on ``now``'s UTC day under
        ``key_epoch``, with the number of elements evaluated, and audit it.

        ``answered`` is the replay-cache entry of the request: stored in the
        same transaction, so a count is never kept without it nor it without the
        count. An entry already stored is a :class:`Replay` and nothing is
        counted. Entries past their ``keep_until`` are deleted here too.
        Refusals are not counted here, one by one, but summed
        (:meth:`count_holder_events`).
        """
        check_text(party, "party", daemon_models.MAX_PARTY_CHARS)
        if elements < 0:
            raise InvalidInput("a count is not negative", field="elements")
        if answered is not None and answered.requester != party:
            raise InvalidInput("the answered request is not this party's", field="answered")
        digest = answered.digest if answered is not None else None
        if digest is not None and len(digest) != crypto.DIGEST_BYTES:
            raise InvalidInput(
                f"a request digest is {crypto.DIGEST_BYTES} bytes", field="answered.digest"
            )
        now = utc(now)
        with self._write() as conn:
            if answered is not None:
                answers = models.HolderAnswer
                conn.execute(delete(answers).where(answers.keep_until < now))
                stored = conn.execute(
                    self._insert(answers)
                    .values(
                        requester=answered.requester,
                        request_id=answered.request_id,
                        holder_index=answered.holder_index,
                        keep_until=utc(answered.keep_until),
                        request_digest=answered.digest,
                    )
                    .on_conflict_do_nothing(
                        index_elements=["requester", "request_id", "holder_index"]
                    )
                    .returning(answers.holder_index)
                ).first()
                if stored is None:
                    raise Replay(
                        "this request was already answered",
                        field="request_id",
                        reason="oprf.replay",
                    )
            self._count_usage(
                conn,
                party,
                now.date(),
                served=1,
                elements=elements,
                refused=0,
                key_epoch=key_epoch,
            )
            self.append_audit(
                conn,
                kind=AuditKind.OPRF_EVALUATION,
                actor=party,
                subject=[answered.request_id.hex()] if answered is not None else (),
                details={"elements": elements, "refused": False},
                now=now,
            )

    def count_holder_events(self, events: Mapping[HolderEvent, int], *, now: datetime) -> None:
        """Record summed key-holder events in one transaction: per (requester, outcome,
        day) one audit entry with the number of requests, and refusals also in that
        day's ``requests_refused``. What a ``Tally`` of the holder loop writes.

        ``requester`` is a party the holder verified, or ``holder.UNVERIFIED``.
        """
        now = utc(now)
        checked = []
        for event, count in sorted(events.items()):
            check_text(event.requester, "requester", daemon_models.MAX_PARTY_CHARS)
            if count < 1:
                raise InvalidInput("a summed count is positive", field="count")
            checked.append((event, count))
        with self._write() as conn:
            for event, count in checked:
                again = event.outcome == ANSWERED_AGAIN
                if not again:
                    self._count_usage(
                        conn, event.requester, event.day, served=0, elements=0, refused=count
                    )
                details: dict[str, str | int | bool] = {
                    "elements": 0,
                    "refused": not again,
                    "requests": count,
                    "day": event.day.isoformat(),
                }
                if again:
                    details["answered_again"] = True
                else:
                    details["reason"] = event.outcome
                self.append_audit(
                    conn,
                    kind=AuditKind.OPRF_EVALUATION,
                    actor=event.requester,
                    details=details,
                    now=now,
                )

    def answered_requests(self, *, now: datetime) -> list[AnsweredRequest]:
        """The key holder's replay cache: answered requests that could still be fresh at ``now``."""
        answers = models.HolderAnswer
        with self._read() as conn:
            rows = conn.execute(
                select(answers.__table__).where(answers.keep_until >= utc(now))
            ).all()
        return [
            AnsweredRequest(
                row.requester, row.request_id, row.holder_index, row.keep_until, row.request_digest
            )
            for row in rows
        ]

    def evaluations_on(self, party: str, day: date, key_epoch: int | None = None) -> int:
        """Elements evaluated for ``party`` on a UTC day, under every epoch or ``key_epoch``."""
        usage = models.HolderUsage
        query = select(func.coalesce(func.sum(usage.elements_evaluated), 0)).where(
            usage.party == party, usage.day == day
        )
        if key_epoch is not None:
            query = query.where(usage.key_epoch == key_epoch)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def evaluations_by_epoch(self, party: str, day: date, current: int) -> dict[int, int]:
        """Elements evaluated for ``party`` on a UTC day per key epoch; the rows of epoch 0
        (from before epochs were kept) count towards ``current``."""
        usage = models.HolderUsage
        query = (
            select(usage.key_epoch, func.sum(usage.elements_evaluated))
            .where(usage.party == party, usage.day == day)
            .group_by(usage.key_epoch)
        )
        counts: dict[int, int] = {}
        with self._read() as conn:
            for epoch, elements in conn.execute(query):
                number = current if epoch == 0 else int(epoch)
                counts[number] = counts.get(number, 0) + int(elements)
        return counts

    def evaluations_by_party(self, day: date) -> dict[str, int]:
        """Elements evaluated for each requester on a UTC day (for the metrics)."""
        usage = models.HolderUsage
        query = (
            select(usage.party, func.sum(usage.elements_evaluated))
            .where(usage.day == day)
            .group_by(usage.party)
        )
        with self._read() as conn:
            return {party: int(elements) for party, elements in conn.execute(query)}

    def holder_totals(self) -> HolderTotals:
        """The key-holder counters since the store was created, for ``GetStatus``."""
        usage = models.HolderUsage
        with self._read() as conn:
            row = conn.execute(
                select(
                    func.coalesce(func.sum(usage.requests_served), 0),
                    func.coalesce(func.sum(usage.elements_evaluated), 0),
                    func.coalesce(func.sum(usage.requests_refused), 0),
                )
            ).one()
        return HolderTotals(int(row[0]), int(row[1]), int(row[2]))
