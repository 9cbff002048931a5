"""The covenant versions the broker accepted, and the covenant timestamps it verified.

Every public method is one database transaction, and returns only after it committed. A
version is recorded, put in every recipient's mailbox and enforced (the parties it removed
cut off, through :meth:`TokenStore.remove_party_in`) in one transaction, so a crash leaves
either the old version in force or the new one delivered and enforced; in each mailbox the
version comes after the hit notices it caused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import insert, select

from samenloop.broker.database import BrokerDatabase, Tx, check_party, utc
from samenloop.broker.mailbox import ItemKind
from samenloop.broker.mailbox_store import MailboxStore
from samenloop.broker.matching import DEFAULT_VISIBILITY, VisibilityRule
from samenloop.broker.models import CovenantTimestamp, CovenantVersion
from samenloop.broker.notify import COVENANT_CHANNEL
from samenloop.broker.token_rotation import KeyRotation
from samenloop.broker.token_store import RemovalResult, SignNotice, TokenStore
from samenloop.policies.audit import AuditEvent, AuditKind
from samenloop.policies.errors import InvalidInput

# Announces a version accepted to the other broker replicas (see notify), at commit.
_PG_NOTIFY_VERSION: Final = f"SELECT pg_notify('{COVENANT_CHANNEL}', %s)"


@dataclass(frozen=True, slots=True)
class TimestampRecord:
    """A covenant timestamp the broker verified, as it keeps it: the version it vouches
    for, the ``Signed`` bytes as received, and its times."""

    version: int
    signed: bytes
    issued_at: datetime
    expires_at: datetime


class CovenantStore:
    """The accepted covenant versions and the verified covenant timestamps."""

    def __init__(
        self, database: BrokerDatabase, mailboxes: MailboxStore, tokens: TokenStore
    ) -> None:
        self._db = database
        self._mailboxes = mailboxes
        self._tokens = tokens

    def publish_covenant(
        self,
        *,
        version: int,
        signed: bytes,
        recipients: Sequence[str],
        removed: Sequence[str],
        min_parties: int,
        now: datetime,
        sign_notice: SignNotice,
        visibility: VisibilityRule = DEFAULT_VISIBILITY,
        timestamp: TimestampRecord | None = None,
        switch: tuple[int, int] | None = None,
        staged_epoch: int | None = None,
        parties: Sequence[str] = (),
        unstaged: int | None = None,
    ) -> list[RemovalResult]:
        """Record an accepted covenant version, put it in every recipient's mailbox and cut
        off the parties it removed — all in one transaction, so a crash leaves either the
        old version in force or the new one delivered and enforced. The version comes
        after the hit notices it causes (the key switch's, the removals') in each
        mailbox, so a node that holds it has read them. A ``timestamp`` for the new
        version (verified by the caller) is kept and delivered after it.

        ``switch`` (retired epoch, new current epoch): the version makes the staged key
        epoch current; refused (``CovenantRejected``, nothing stored) unless every party
        re-tokenised, else the groups carry over in this transaction
        (:meth:`KeyRotation.switch`). ``staged_epoch``: the version's staged epoch,
        whose groups a removed party's entries leave silently. ``parties``: every party
        the broker counts entries held for (the new version's and the removed).
        ``unstaged``: the staged epoch this version withdraws (or replaces), whose
        entries and groups go in this transaction without notices
        (:meth:`KeyRotation.withdraw_staging`)."""
        now = utc(now)
        for party in (*recipients, *removed):
            check_party(party)
        with self._db.write(matching=True) as tx:
            tx.conn.execute(
                insert(CovenantVersion).values(version=version, signed=signed, accepted_at=now)
            )
            if self._db.postgres:  # the other broker replicas take it once this commits
                self._db.driver(tx).execute(_PG_NOTIFY_VERSION, (str(version),))
            if timestamp is not None and timestamp.version != version:
                raise InvalidInput(
                    "the timestamp is for another version", field="covenant_timestamp"
                )
            self._db.audit(
                tx,
                [
                    AuditEvent(
                        AuditKind.COVENANT_PUBLISHED,
                        self._db.owner,
                        (),
                        {"version": version, "recipients": len(recipients)},
                    )
                ],
                now,
            )
            if unstaged is not None:
                KeyRotation(self._db, self._tokens).withdraw_staging(tx, staged=unstaged, now=now)
            if switch is not None:
                retired, current = switch
                KeyRotation(self._db, self._tokens).switch(
                    tx,
                    retired=retired,
                    current=current,
                    parties=sorted(set(parties) | set(recipients)),
                    min_parties=min_parties,
                    now=now,
                    sign_notice=sign_notice,
                    visibility=visibility,
                )
            removals = [
                self._tokens.remove_party_in(
                    tx,
                    party,
                    min_parties=min_parties,
                    now=now,
                    sign_notice=sign_notice,
                    visibility=visibility,
                    staged_epoch=staged_epoch,
                )
                for party in sorted(removed)
            ]
            # The version goes in the mailboxes after every notice it caused (the switch's,
            # the removals'): a node reads its mailbox in cursor order, so once it holds the
            # new version its hits no longer show a removed party.
            self._mailboxes.put(
                tx,
                {party: [(ItemKind.COVENANT_UPDATE, signed)] for party in recipients},
                now,
                skip_closed=True,
            )
            if timestamp is not None:
                self._put_timestamp(tx, timestamp, recipients, now)
            return removals

    def covenant_versions(self) -> list[bytes]:
        """The signed covenant versions accepted so far (serialized ``SignedCovenant``),
        oldest first."""
        with self._db.read() as conn:
            return list(
                conn.execute(select(CovenantVersion.signed).order_by(CovenantVersion.version))
                .scalars()
                .all()
            )

    def covenant_version(self, version: int) -> bytes | None:
        """A covenant version accepted since the root (serialized ``SignedCovenant``), or
        None if the broker holds no such version in its store."""
        with self._db.read() as conn:
            found = conn.execute(
                select(CovenantVersion.signed).where(CovenantVersion.version == version)
            ).scalar_one_or_none()
        return None if found is None else bytes(found)

    # --- covenant timestamps ------------------------------------------------------------

    def publish_timestamp(
        self, timestamp: TimestampRecord, *, recipients: Sequence[str], now: datetime
    ) -> bool:
        """Keep a verified covenant timestamp if it was issued after the one held for its
        version, and put it in every recipient's mailbox, in one transaction. False, and
        nothing changes, if the broker holds that one or a newer one already."""
        now = utc(now)
        for party in recipients:
            check_party(party)
        with self._db.write() as tx:
            return self._put_timestamp(tx, timestamp, recipients, now)

    def _put_timestamp(
        self, tx: Tx, timestamp: TimestampRecord, recipients: Sequence[str], now: datetime
    ) -> bool:
        # One statement decides, so that replicas starting together with the same
        # timestamp file (or two publishers) cannot both insert: the row is written if the
        # version has none, or replaced if this one was issued later; else nothing is.
        values = {
            "signed": timestamp.signed,
            "issued_at": timestamp.issued_at,
            "expires_at": timestamp.expires_at,
            "accepted_at": now,
        }
        statement = self._db.insert(CovenantTimestamp).values(version=timestamp.version, **values)
        written = tx.conn.execute(
            statement.on_conflict_do_update(
                index_elements=[CovenantTimestamp.version],
                set_=values,
                where=CovenantTimestamp.issued_at < statement.excluded.issued_at,
            ).returning(CovenantTimestamp.version)
        ).first()
        if written is None:
            return False
        if recipients:
            self._mailboxes.put(
                tx,
                {party: [(ItemKind.COVENANT_TIMESTAMP, timestamp.signed)] for party in recipients},
                now,
                skip_closed=True,
            )
        self._db.audit(
            tx,
            [
                AuditEvent(
                    AuditKind.COVENANT_TIMESTAMP,
                    self._db.owner,
                    (),
                    {
                        "version": timestamp.version,
                        "expires_at": timestamp.expires_at.astimezone(UTC).isoformat(),
                        "recipients": len(recipients),
                    },
                )
            ],
            now,
        )
        return True

    def covenant_timestamp(self, version: int) -> TimestampRecord | None:
        """The newest covenant timestamp the broker holds for ``version``, if any."""
        with self._db.read() as conn:
            row = conn.execute(
                select(
                    CovenantTimestamp.signed,
                    CovenantTimestamp.issued_at,
                    CovenantTimestamp.expires_at,
                ).where(CovenantTimestamp.version == version)
            ).one_or_none()
        if row is None:
            return None
        return TimestampRecord(version, bytes(row.signed), row.issued_at, row.expires_at)
