"""Retention of closed hit groups: the broker forgets groups that closed long ago, with
the latest notice it kept of each for ``ResyncHits``, so that neither table grows with every
group that ever closed.

A closed group never opens again (a token that reaches the minimum anew forms a new group),
so its row serves only a node restored from a backup taken while the group was open. Once a
group has been closed for longer than the covenant's longest entry lifetime, a backup that
old holds nothing its node would still keep, and nobody needs the closing notice any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from samenloop.broker.database import BrokerDatabase, utc
from samenloop.broker.mailbox_store import MailboxStore
from samenloop.broker.models import HitGroup
from samenloop.policies.audit import AuditEvent, AuditKind


@dataclass(frozen=True, slots=True)
class PruneResult:
    """Closed groups forgotten by :meth:`GroupRetention.prune_closed_groups`, and the latest
    notices kept of them; ``more``: the call stopped at its limit."""

    groups: int
    notices: int
    more: bool = False


class GroupRetention:
    """Forgets closed hit groups and their kept notices (the broker's retention sweep)."""

    def __init__(self, db: BrokerDatabase, mailboxes: MailboxStore) -> None:
        self._db = db
        self._mailboxes = mailboxes

    def prune_closed_groups(
        self, now: datetime, *, keep: timedelta, limit: int = 10_000
    ) -> PruneResult:
        """Forget groups that closed (last changed) more than ``keep`` ago, at most ``limit``
        per call, with the latest notice kept of each for ``ResyncHits``.

        A closed group never opens again (a token that reaches the minimum anew forms a
        new group), so its row serves only a node restored from a backup taken while it
        was open. The caller keeps them the covenant's longest entry lifetime: a backup
        that old holds nothing the node would still keep, so nobody needs the CLOSED
        notice any more. Call again while the result says ``more``.
        """
        now = utc(now)
        before = now - keep
        with self._db.write() as tx:
            groups = list(
                tx.conn.execute(
                    select(HitGroup.group_id)
                    .where(~HitGroup.is_open, HitGroup.last_seen < before)
                    .limit(limit)
                ).scalars()
            )
            if not groups:
                return PruneResult(groups=0, notices=0)
            notices = self._mailboxes.forget_groups(tx, groups)
            tx.conn.execute(
                delete(HitGroup).where(HitGroup.group_id.in_(groups), ~HitGroup.is_open)
            )
            pruned = AuditEvent(
                AuditKind.TOKEN_EXPIRY,
                self._db.owner,
                (),
                {"closed_groups_pruned": len(groups), "latest_notices_pruned": notices},
            )
            self._db.audit(tx, [pruned], now)
        return PruneResult(groups=len(groups), notices=notices, more=len(groups) == limit)
