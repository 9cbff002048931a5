"""The covenant's repository: the versions the node accepted and the newest timestamp.

A version from the mailbox is kept with the cursor advance in one transaction; the
versions are replayed over the root at start
(:func:`samenloop.node.daemon.process.replay_covenant`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import select

from samenloop.node.daemon import models
from samenloop.node.daemon.database import Database, utc
from samenloop.policies.audit import AuditKind, DetailValue

__all__ = [
    "CovenantStore",
]

#: The one row of the covenant timestamp held.
_TIMESTAMP_ROW: Final = 1


class CovenantStore(Database):
    """Accepted covenant versions, the newest verified timestamp, freshness changes."""

    # --- covenant versions -------------------------------------------------------------

    def covenant_versions(self) -> list[bytes]:
        """The accepted covenant versions (serialized ``SignedCovenant``), oldest first."""
        cv = models.CovenantVersion
        with self._read() as conn:
            return list(conn.execute(select(cv.signatures).order_by(cv.version)).scalars())

    def accept_covenant(
        self, cursor: int | None, version: int, body: bytes, signed: bytes, *, now: datetime
    ) -> None:
        """Keep a covenant version the node accepted, from its mailbox with the cursor
        advance, or fetched from the broker (``cursor`` None)."""
        now = utc(now)
        with self._write() as conn:
            stored_cursor, last_feed_seq = self._lock_inbox(conn)
            conn.execute(
                self._insert(models.CovenantVersion)
                .values(version=version, body=body, signatures=signed, accepted_at=now)
                .on_conflict_do_nothing(index_elements=["version"])
            )
            if cursor is not None and cursor > stored_cursor:
                self._save_inbox(conn, cursor, last_feed_seq)
            self.append_audit(
                conn, kind=AuditKind.COVENANT_ACCEPTED, details={"version": version}, now=now
            )

    def reject_covenant(self, cursor: int, reason: str, *, now: datetime) -> None:
        """Record a covenant update the node refused and advance past it."""
        now = utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(
                conn, kind=AuditKind.COVENANT_REJECTED, details={"reason": reason}, now=now
            )

    # --- covenant timestamps -----------------------------------------------------------

    def covenant_timestamp(self) -> bytes | None:
        """The newest covenant timestamp the node verified (a serialized ``Signed``), if any."""
        ct = models.CovenantTimestamp
        with self._read() as conn:
            found = conn.execute(
                select(ct.signed).where(ct.id == _TIMESTAMP_ROW)
            ).scalar_one_or_none()
        return None if found is None else bytes(found)

    def keep_timestamp(
        self,
        signed: bytes,
        *,
        version: int,
        issued_at: datetime,
        expires_at: datetime,
        cursor: int | None,
        now: datetime,
    ) -> None:
        """Keep the newest covenant timestamp (verified by the caller) in place of the one
        held, with the mailbox cursor advance when it came from the mailbox: one
        transaction."""
        now = utc(now)
        values = {
            "version": version,
            "signed": signed,
            "issued_at": issued_at,
            "expires_at": expires_at,
            "received_at": now,
        }
        with self._write() as conn:
            if cursor is not None:
                self._advance_inbox(conn, cursor)
            conn.execute(
                self._insert(models.CovenantTimestamp)
                .values(id=_TIMESTAMP_ROW, **values)
                .on_conflict_do_update(index_elements=["id"], set_=values)
            )

    def note_freshness(
        self, *, fresh: bool, version: int, until: datetime | None, now: datetime
    ) -> None:
        """Record that the node went stale (it stops sealing and releasing) or is fresh
        again, for its covenant version: one audit entry per change."""
        now = utc(now)
        details: dict[str, DetailValue] = {"fresh": fresh, "version": version}
        if until is not None:
            details["until"] = until.astimezone(UTC).isoformat()
        with self._write() as conn:
            self.append_audit(conn, kind=AuditKind.COVENANT_FRESHNESS, details=details, now=now)
