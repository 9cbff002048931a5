"""Tokens and matching: submissions, withdrawals, the expiry sweep and the removal of a
party, over the token index (:mod:`token_index`) and the sans-IO rules of :mod:`matching`.

Every public method is one database transaction, and returns only after it committed:
what the broker acknowledges is durable. A submission's entries, its hit-group changes,
the signed notices in the recipients' mailboxes (:meth:`MailboxStore.deliver`, in this
transaction) and the record of its batch id commit together, or not at all.

Matching writes are serialized (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a
transaction-scoped advisory lock), so two batches that meet on one token cannot both
miss the hit. On PostgreSQL, ``submit`` sends the matching lock, its checks and the
lookup as one pipeline before it parses the batch, so that the server works while
Python parses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any, Final

from sqlalchemy import func, insert, select, update

from samenloop.broker import matching
from samenloop.broker.database import (
    PG_MATCHING_LOCK,
    BrokerDatabase,
    Tx,
    check_id,
    check_party,
    utc,
)
from samenloop.broker.mailbox import ItemKind
from samenloop.broker.mailbox_store import MailboxStore
from samenloop.broker.matching import (
    DEFAULT_VISIBILITY,
    Change,
    Entry,
    Group,
    NoticeDraft,
    SubmissionRules,
    Usage,
    VisibilityRule,
)
from samenloop.broker.models import (
    HitGroup,
    Party,
    PartyUsage,
    ProcessedBatch,
    TokenEntry,
)
from samenloop.broker.staged_epoch import TokenLanes, check_restated, check_version, newest_version
from samenloop.broker.token_index import Loaded, TokenIndex, expiry_bucket, token_prefixes
from samenloop.policies.audit import AuditEvent, AuditKind
from samenloop.policies.errors import NotAllowed, Replay

# Plain SQL of the hot path (constants only, never built from input).
_PG_OPEN_AND_PRIOR: Final = (
    "SELECT h.closed, b.digest, b.stored, b.unchanged, b.accepted_at,"
    " u.day, u.submitted, u.held, u.notice_bytes,"
    " (SELECT max(version) FROM covenant_versions)"
    " FROM mailbox_heads AS h LEFT JOIN processed_batches AS b"
    " ON b.party_id = h.party_id AND b.client_batch_id = %(batch_id)s"
    " LEFT JOIN party_usage AS u ON u.party_id = h.party_id"
    " WHERE h.party_id = %(party_id)s"
)
_SQLITE_OPEN_AND_PRIOR: Final = (
    "SELECT h.closed, b.digest, b.stored, b.unchanged, b.accepted_at,"
    " u.day, u.submitted, u.held, u.notice_bytes,"
    " (SELECT max(version) FROM covenant_versions)"
    " FROM mailbox_heads AS h LEFT JOIN processed_batches AS b"
    " ON b.party_id = h.party_id AND b.client_batch_id = ?"
    " LEFT JOIN party_usage AS u ON u.party_id = h.party_id"
    " WHERE h.party_id = ?"
)
# A submitter's quota counts (see matching.charge).
_PG_CHARGE: Final = (
    "UPDATE party_usage SET day = %s, submitted = %s, held = %s, notice_bytes = %s"
    " WHERE party_id = %s"
)
_SQLITE_CHARGE: Final = (
    "UPDATE party_usage SET day = ?, submitted = ?, held = ?, notice_bytes = ? WHERE party_id = ?"
)
_PG_RECORD_SUBMIT: Final = (
    "INSERT INTO processed_batches"
    " (party_id, client_batch_id, kind, digest, stored, unchanged, accepted_at)"
    " VALUES (%(party_id)s, %(client_batch_id)s, %(kind)s, %(digest)s, %(stored)s,"
    " %(unchanged)s, %(accepted_at)s)"
    # The ids of the entries this batch inserted: all those after the newest one the
    # prefix filter covered (see TokenIndex.filtered). It covers every row up to the last.
    " RETURNING (SELECT min(id) FROM token_entries WHERE id > %(covered)s),"
    " (SELECT max(id) FROM token_entries)"
)
_SQLITE_RECORD_SUBMIT: Final = (
    "INSERT INTO processed_batches"
    " (party_id, client_batch_id, kind, digest, stored, unchanged, accepted_at)"
    " VALUES (:party_id, :client_batch_id, :kind, :digest, :stored, :unchanged, :accepted_at)"
)

SignNotice = Callable[[NoticeDraft], bytes]
"""Turns a notice draft into the serialized signed ``HitNotice`` for the mailbox."""


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What ``SubmitTokens`` answers; ``notified`` are the parties with new mailbox items."""

    client_batch_id: bytes
    stored: int
    unchanged: int
    replayed: bool
    accepted_at: datetime
    notified: tuple[str, ...] = ()
    #: Hit notices the batch put in mailboxes (the metrics count them).
    notices: int = 0


@dataclass(frozen=True, slots=True)
class WithdrawResult:
    """What ``WithdrawTokens`` answers; ``notified`` are the parties with new mailbox items."""

    client_batch_id: bytes
    withdrawn: int
    unknown: int
    replayed: bool
    accepted_at: datetime
    notified: tuple[str, ...] = ()
    #: Hit notices the withdrawal put in mailboxes (the metrics count them).
    notices: int = 0


@dataclass(frozen=True, slots=True)
class RemovalResult:
    """Entries dropped (by expiry or a party's removal) and the parties told about it.

    ``more`` says an expiry sweep stopped at its limit: call it again.
    """

    removed: int
    notified: tuple[str, ...] = ()
    more: bool = False
    #: Hit notices the removal put in mailboxes (the metrics count them).
    notices: int = 0


@dataclass(frozen=True, slots=True)
class _Prior:
    """What was recorded of a submission already processed."""

    stored: int | None
    unchanged: int | None
    accepted_at: datetime


class TokenStore:
    """The broker's token index, hit groups, submission quotas and idempotency records."""

    def __init__(self, database: BrokerDatabase, mailboxes: MailboxStore) -> None:
        self._db = database
        self._mailboxes = mailboxes
        self.index: Final = TokenIndex(database)
        self.lanes: Final = TokenLanes(database)

    def prepare_index(self) -> int | None:
        """PostgreSQL: build the token index's filter now (see ``TokenIndex.filtered``), at
        start-up, rather than in the first submission (a few seconds at ten million tokens,
        under the matching lock). Answers the prefixes it holds; ``None`` on SQLite."""
        if not self._db.postgres:
            return None
        with self._db.write(matching=True) as tx:
            return self.index.prepare(tx)

    def submit(
        self,
        party: str,
        client_batch_id: bytes,
        key_epoch: int,
        entries: Sequence[Entry],
        *,
        min_parties: int,
        now: datetime,
        new_group_id: Callable[[], bytes],
        sign_notice: SignNotice,
        visibility: VisibilityRule = DEFAULT_VISIBILITY,
        rules: SubmissionRules | None = None,
        staged_epoch: int | None = None,
        covenant_version: int | None = None,
    ) -> SubmitResult:
        """Store and match a batch; idempotent by ``client_batch_id``.

        A batch of the ``staged_epoch`` of a rotation re-states entries the party holds
        under the current epoch: each of its refs must be one the party holds (else
        ``InvalidInput`` naming the entry's ``signal_ref``), its first re-statement of a
        ref counts against neither quota of entries (another counts against the day), and
        its groups are kept without notices.

        ``covenant_version``: the version the caller checked the batch against (its key
        epoch, its staged epoch); if a newer one was published meanwhile (the switch of
        a key epoch, by this or another broker replica), ``Unavailable`` and nothing
        stored: try again (see :func:`staged_epoch.check_version`).

        The same batch id with the same content is acknowledged again
        (``replayed``); with other content it is a :class:`Replay` error.
        With ``rules`` (the broker always passes the covenant's), the batch's
        expiries are capped and it is counted against the party's quotas, under
        the matching lock: a batch beyond one is refused whole and stores nothing.
        """
        check_id(client_batch_id, "client_batch_id")
        now = utc(now)
        # PostgreSQL parses in the transaction, while the server runs its first statements.
        batch = None if self._db.postgres else matching.parse_batch(party, key_epoch, entries)
        loaded: Loaded | None = None
        newest_id: int | None = None
        with self._db.write(matching=True, lock=batch is not None) as tx:
            party_id = self._db.ids(tx, [party])[party]
            if batch is None:
                batch, prior, usage, loaded, newest_id = self._parse_meanwhile(
                    tx, party, party_id, client_batch_id, key_epoch, entries, covenant_version
                )
            else:
                checked = (
                    self._db.driver(tx)
                    .execute(_SQLITE_OPEN_AND_PRIOR, (client_batch_id, party_id))
                    .fetchone()
                )
                prior, usage = self._open_and_prior(party, checked, batch.digest, covenant_version)
            if prior is not None:
                return SubmitResult(
                    client_batch_id,
                    stored=prior.stored or 0,
                    unchanged=prior.unchanged or 0,
                    replayed=True,
                    accepted_at=prior.accepted_at,
                )
            staged = staged_epoch is not None and batch.key_epoch == staged_epoch
            silent = frozenset() if staged_epoch is None else frozenset({staged_epoch})
            if staged:
                batch = check_restated(self.index, tx, batch, party_id, now)
            if loaded is None:
                loaded = self.index.load(tx, batch.tokens)
            outcome = matching.submit(
                batch,
                loaded.states,
                min_parties=min_parties,
                now=now,
                new_group_id=new_group_id,
                visibility=visibility,
                rules=rules,
                silent_epochs=silent,
            )
            held = matching.held_deltas(outcome.change, submitter=party, uncounted=silent)
            if staged:
                # A ref's first re-statement is free (neither submitted nor held anew); an
                # entry that re-states it again counts against the day, as any entry sent.
                again = len(batch.entries) - len(outcome.change.inserted)
                if rules is not None and again:
                    usage = matching.charge(usage, submitted=again, added=0, rules=rules, now=now)
            elif rules is not None:
                usage = matching.charge(
                    usage,
                    submitted=len(batch.entries),
                    added=held.get(party, 0),
                    rules=rules,
                    now=now,
                )
            else:
                usage = replace(usage, held=usage.held + held.get(party, 0))
            signed: dict[str, list[tuple[ItemKind, bytes]]] = {}
            self.index.apply(
                tx,
                outcome.change,
                loaded,
                # Signing needs no database: do it while the server takes in the COPY.
                meanwhile=lambda: signed.update(_sign(outcome.change.notices, sign_notice)),
                held={p: d for p, d in held.items() if p != party},
                newest_id=newest_id,
            )
            usage = _charge_notices(usage, _notice_bytes(signed, party), rules, "entries")
            charged = (usage.day, usage.submitted, usage.held, usage.notice_bytes, party_id)
            notified = self._mailboxes.deliver(tx, signed, now, outcome.change.notices)
            record = {
                "party_id": party_id,
                "client_batch_id": client_batch_id,
                "kind": "submit",
                "digest": batch.digest,
                "stored": outcome.stored,
                "unchanged": outcome.unchanged,
                "accepted_at": now,
            }
            submitted = AuditEvent(
                AuditKind.TOKEN_SUBMISSION,
                party,
                (client_batch_id.hex(),),
                {"stored": outcome.stored, "unchanged": outcome.unchanged, "key_epoch": key_epoch},
            )
            events = [submitted, *self.hit_events(outcome.change)]
            if self._db.postgres:
                record["covered"] = newest_id or 0
                driver = self._db.driver(tx)
                with driver.pipeline():  # the record, counts and audit append: one round trip
                    recorded = driver.execute(_PG_RECORD_SUBMIT, record)
                    driver.execute(_PG_CHARGE, charged)
                    self._db.audit(tx, events, now)
                first, newest = recorded.fetchone()
                if newest is not None:
                    prefixes = token_prefixes([e.token for e in outcome.change.inserted])
                    tx.after_commit(
                        partial(
                            self.index.covered, prefixes, newest if first is None else first, newest
                        )
                    )
            else:
                record["accepted_at"] = self._db.stamp(now)
                self._db.driver(tx).execute(_SQLITE_RECORD_SUBMIT, record)
                self._db.driver(tx).execute(_SQLITE_CHARGE, charged)
                self._db.audit(tx, events, now)
        return SubmitResult(
            client_batch_id,
            stored=outcome.stored,
            unchanged=outcome.unchanged,
            replayed=False,
            accepted_at=now,
            notified=notified,
            notices=_count(signed),
        )

    def withdraw(
        self,
        party: str,
        client_batch_id: bytes,
        signal_refs: Sequence[bytes],
        *,
        min_parties: int,
        now: datetime,
        sign_notice: SignNotice,
        visibility: VisibilityRule = DEFAULT_VISIBILITY,
        rules: SubmissionRules | None = None,
        staged_epoch: int | None = None,
        covenant_version: int | None = None,
    ) -> WithdrawResult:
        """Remove the party's entries for the refs; idempotent by ``client_batch_id``.

        With ``rules`` (the broker always passes the covenant's), the refs count against
        the party's entries of the day like submitted entries, and the notices it causes
        against its notice bytes of the day (:func:`matching.charge_notices`): a
        withdrawal beyond either is refused whole and changes nothing.
        ``covenant_version``: as for :meth:`submit` (a withdrawal checked against a
        staged epoch that has become current would change its groups silently).
        """
        check_id(client_batch_id, "client_batch_id")
        now = utc(now)
        batch = matching.parse_withdrawal(party, signal_refs)
        with self._db.write(matching=True) as tx:
            party_id = self._db.ids(tx, [party])[party]
            self._mailboxes.require_open(tx, party, party_id)
            prior = self._prior(tx, party_id, client_batch_id, batch.digest)
            if prior is not None:
                return WithdrawResult(
                    client_batch_id,
                    withdrawn=prior.withdrawn or 0,
                    unknown=prior.unknown or 0,
                    replayed=True,
                    accepted_at=prior.accepted_at,
                )
            check_version(covenant_version, newest_version(tx))
            usage = self._usage(tx, party, party_id)
            if rules is not None:
                usage = matching.charge(
                    usage,
                    submitted=len(batch.signal_refs),
                    added=0,
                    rules=rules,
                    now=now,
                    field="signal_refs",
                )
            tokens = self.index.tokens_of_refs(tx, party_id, batch.signal_refs)
            loaded = self.index.load(tx, tokens)
            silent = frozenset() if staged_epoch is None else frozenset({staged_epoch})
            outcome = matching.withdraw(
                batch,
                loaded.states,
                min_parties=min_parties,
                now=now,
                visibility=visibility,
                silent_epochs=silent,
            )
            self.index.apply(tx, outcome.change, loaded, uncounted=silent)
            signed = _sign(outcome.change.notices, sign_notice)
            usage = _charge_notices(usage, _notice_bytes(signed, party), rules, "signal_refs")
            tx.conn.execute(
                update(PartyUsage)
                .where(PartyUsage.party_id == party_id)
                .values(day=usage.day, submitted=usage.submitted, notice_bytes=usage.notice_bytes)
            )
            notified = self._mailboxes.deliver(tx, signed, now, outcome.change.notices)
            tx.conn.execute(
                insert(ProcessedBatch).values(
                    party_id=party_id,
                    client_batch_id=client_batch_id,
                    kind="withdraw",
                    digest=batch.digest,
                    withdrawn=outcome.withdrawn,
                    unknown=outcome.unknown,
                    accepted_at=now,
                )
            )
            withdrawn = AuditEvent(
                AuditKind.TOKEN_WITHDRAWAL,
                party,
                (client_batch_id.hex(),),
                {"withdrawn": outcome.withdrawn, "unknown": outcome.unknown},
            )
            self._db.audit(tx, [withdrawn, *self.hit_events(outcome.change)], now)
        return WithdrawResult(
            client_batch_id,
            withdrawn=outcome.withdrawn,
            unknown=outcome.unknown,
            replayed=False,
            accepted_at=now,
            notified=notified,
            notices=_count(signed),
        )

    def expire(
        self,
        now: datetime,
        *,
        min_parties: int,
        sign_notice: SignNotice,
        visibility: VisibilityRule = DEFAULT_VISIBILITY,
        limit: int = 10_000,
        staged_epoch: int | None = None,
        covenant_version: int | None = None,
    ) -> RemovalResult:
        """Drop entries whose ``expires_at`` has passed, at most about ``limit`` per call.

        Groups that shrink or close are told, as for a withdrawal. Call again
        while the result says ``more``. ``covenant_version``: as for :meth:`submit`, but
        a sweep behind a newer version does nothing (the next one, after this replica
        took the version, does it).
        """
        now = utc(now)
        with self._db.write(matching=True) as tx:
            newest = newest_version(tx)
            if covenant_version is not None and newest is not None and newest > covenant_version:
                return RemovalResult(removed=0)
            tokens = (
                tx.conn.execute(
                    select(TokenEntry.token)
                    .where(
                        TokenEntry.expiry_bucket <= expiry_bucket(now),
                        TokenEntry.expires_at <= now,
                    )
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            if not tokens:
                return RemovalResult(removed=0)
            loaded = self.index.load(tx, sorted(set(tokens)))
            silent = frozenset() if staged_epoch is None else frozenset({staged_epoch})
            change = matching.expire(
                loaded.states,
                min_parties=min_parties,
                now=now,
                visibility=visibility,
                silent_epochs=silent,
            )
            self.index.apply(tx, change, loaded, uncounted=silent)
            drafts = [(draft, sign_notice(draft)) for draft in change.notices]
            self._charge_swept(tx, matching.swept_notice_bytes(change, drafts), now)
            by_party: dict[str, list[tuple[ItemKind, bytes]]] = {}
            for draft, payload in drafts:
                by_party.setdefault(draft.recipient, []).append((ItemKind.HIT_NOTICE, payload))
            notified = self._mailboxes.deliver(tx, by_party, now, change.notices)
            expired = AuditEvent(
                AuditKind.TOKEN_EXPIRY, self._db.owner, (), {"removed": len(change.deleted)}
            )
            self._db.audit(tx, [expired, *self.hit_events(change)], now)
        return RemovalResult(
            removed=len(change.deleted),
            notified=notified,
            more=len(tokens) == limit,
            notices=len(drafts),
        )

    def remove_party(
        self,
        party: str,
        *,
        min_parties: int,
        now: datetime,
        sign_notice: SignNotice,
        visibility: VisibilityRule = DEFAULT_VISIBILITY,
    ) -> RemovalResult:
        """Cut a party off: drop all its entries (telling the other members) and close
        its mailbox, in one transaction."""
        check_party(party)
        now = utc(now)
        with self._db.write(matching=True) as tx:
            return self.remove_party_in(
                tx,
                party,
                min_parties=min_parties,
                now=now,
                sign_notice=sign_notice,
                visibility=visibility,
            )

    def remove_party_in(
        self,
        tx: Tx,
        party: str,
        *,
        min_parties: int,
        now: datetime,
        sign_notice: SignNotice,
        visibility: VisibilityRule,
        staged_epoch: int | None = None,
    ) -> RemovalResult:
        """``remove_party`` inside a matching transaction the caller holds (a covenant
        version that removes parties: ``CovenantStore.publish_covenant``)."""
        party_id = self._db.ids(tx, [party])[party]
        self._mailboxes.close(tx, party, party_id)
        tokens = (
            tx.conn.execute(
                select(TokenEntry.token).where(TokenEntry.party_id == party_id).distinct()
            )
            .scalars()
            .all()
        )
        loaded = self.index.load(tx, sorted(tokens))
        silent = frozenset() if staged_epoch is None else frozenset({staged_epoch})
        change = matching.remove_party(
            party,
            loaded.states,
            min_parties=min_parties,
            now=now,
            visibility=visibility,
            silent_epochs=silent,
        )
        self.index.apply(tx, change, loaded, uncounted=silent)
        notified = self.deliver(tx, change.notices, now, sign_notice)
        removed = AuditEvent(
            AuditKind.PARTY_REMOVED,
            self._db.owner,
            (),
            {"party": party, "removed": len(change.deleted)},
        )
        self._db.audit(tx, [removed, *self.hit_events(change)], now)
        return RemovalResult(
            removed=len(change.deleted), notified=notified, notices=len(change.notices)
        )

    def _charge_swept(self, tx: Tx, costs: Mapping[str, int], now: datetime) -> None:
        """Count what an expiry sweep's notices cost the others against the day of each party
        whose entries expired (:func:`matching.charge_swept`)."""
        ids = self._db.ids(tx, costs)
        for party, cost in sorted(costs.items()):
            usage = matching.charge_swept(self._usage(tx, party, ids[party]), cost, now=now)
            tx.conn.execute(
                update(PartyUsage)
                .where(PartyUsage.party_id == ids[party])
                .values(day=usage.day, submitted=usage.submitted, notice_bytes=usage.notice_bytes)
            )

    def _usage(self, tx: Tx, party: str, party_id: int) -> Usage:
        """A party's quota counts, read under the matching lock (which every writer of them
        holds)."""
        row = tx.conn.execute(
            select(
                PartyUsage.day, PartyUsage.submitted, PartyUsage.held, PartyUsage.notice_bytes
            ).where(PartyUsage.party_id == party_id)
        ).one_or_none()
        if row is None:
            raise LookupError(f"no quota counts for {party}")
        return Usage(*row)

    def usage(self, party: str) -> Usage:
        """A party's quota counts: its last counted UTC day, what it submitted then, what it
        holds (zeros for a party never seen)."""
        row = self._db.party_row(
            party,
            PartyUsage.party_id,
            (PartyUsage.day, PartyUsage.submitted, PartyUsage.held, PartyUsage.notice_bytes),
        )
        return Usage() if row is None else Usage(*row)

    # --- figures ------------------------------------------------------------------

    def count_tokens(self) -> int:
        """Token entries held (including expired ones not yet swept)."""
        with self._db.read() as conn:
            return conn.execute(select(func.count()).select_from(TokenEntry)).scalar_one()

    def usages(self) -> dict[str, Usage]:
        """Every party's quota counts, as ``usage`` (for the metrics, at scrape time)."""
        usage = PartyUsage
        query = select(Party.name, usage.day, usage.submitted, usage.held, usage.notice_bytes).join(
            Party, Party.id == usage.party_id
        )
        with self._db.read() as conn:
            return {name: Usage(*counts) for name, *counts in conn.execute(query)}

    def count_groups(self, *, open_only: bool = True) -> int:
        """Hit groups (open ones, unless ``open_only`` is false)."""
        query = select(func.count()).select_from(HitGroup)
        if open_only:
            query = query.where(HitGroup.is_open)
        with self._db.read() as conn:
            return conn.execute(query).scalar_one()

    def open_groups(self) -> list[Group]:
        """Every open hit group (for operators and tests; not for the hot path)."""
        with self._db.read() as conn:
            rows = conn.execute(select(HitGroup).where(HitGroup.is_open)).all()
        return [
            Group(row.group_id, row.token, row.revision, row.first_seen, row.last_seen, True)
            for row in rows
        ]

    def hit_events(self, change: Change) -> list[AuditEvent]:
        """One event per hit group a change formed, grew, shrank or closed: its id, revision,
        the kinds of notice issued and to how many recipients."""
        notices: dict[bytes, list[NoticeDraft]] = {}
        for draft in change.notices:
            notices.setdefault(draft.group_id, []).append(draft)
        return [
            AuditEvent(
                AuditKind.HIT_NOTICE,
                self._db.owner,
                (group.group_id.hex(),),
                {
                    "revision": group.revision,
                    "open": group.open,
                    "recipients": len(notices.get(group.group_id, ())),
                    "kinds": ",".join(
                        sorted({d.kind.name.lower() for d in notices.get(group.group_id, ())})
                    ),
                },
            )
            for group in change.groups
        ]

    def _prior(self, tx: Tx, party_id: int, client_batch_id: bytes, digest: bytes) -> Any | None:
        """The recorded batch with this id, if its content is the same; Replay if not."""
        prior = tx.conn.execute(
            select(
                ProcessedBatch.digest,
                ProcessedBatch.stored,
                ProcessedBatch.unchanged,
                ProcessedBatch.withdrawn,
                ProcessedBatch.unknown,
                ProcessedBatch.accepted_at,
            ).where(
                ProcessedBatch.party_id == party_id,
                ProcessedBatch.client_batch_id == client_batch_id,
            )
        ).first()
        if prior is not None and prior.digest != digest:
            raise Replay("this batch id was used for another batch", field="client_batch_id")
        return prior

    def _parse_meanwhile(
        self,
        tx: Tx,
        party: str,
        party_id: int,
        client_batch_id: bytes,
        key_epoch: int,
        entries: Sequence[Entry],
        covenant_version: int | None,
    ) -> tuple[matching.Batch, _Prior | None, Usage, Loaded, int | None]:
        """PostgreSQL ``submit``: parse the batch while the server runs its first statements,
        the lookups among them. Answers the batch, its prior record if any, the party's
        quota counts, the states of its tokens and the newest entry's id (the filter's,
        under the matching lock).

        One pipeline goes out before parsing, so that its round trip and the server's
        work overlap with the parse: the matching lock, ``require_open`` with
        ``_prior``, the entries other writers added since the filter last looked, and
        ``load``'s two lookups for the prefixes the filter held then (see
        :meth:`TokenIndex.filtered`). Once the lock is held, the filter takes those newer
        entries, and the batch's tokens among them are looked up too (none, unless another
        thread or broker process committed entries in between).
        """
        driver = self._db.driver(tx)
        last_id, early = self.index.early(entries)
        with driver.pipeline():
            driver.execute(PG_MATCHING_LOCK)
            checked = driver.execute(
                _PG_OPEN_AND_PRIOR, {"party_id": party_id, "batch_id": client_batch_id}
            )
            newer = self.index.send_newer(driver, last_id)
            found = None if not early else self.index.send_partition_lookups(driver, early)
            batch = matching.parse_batch(party, key_epoch, entries)
        prior, usage = self._open_and_prior(
            party, checked.fetchone(), batch.digest, covenant_version
        )
        wanted = {entry.token for entry in batch.entries}
        if prior is not None:
            return batch, prior, usage, Loaded([], {}, set()), None
        entry_rows: list[Any] = [] if found is None else found[0].fetchall()
        group_rows: list[Any] = [] if found is None else found[1].fetchall()
        newer_rows = None if newer is None else newer.fetchall()
        candidates = self.index.filtered(driver, newer_rows, wanted, early)
        newest_id = self.index.newest_id
        if candidates:
            with driver.pipeline():  # both lookups in one round trip
                more = self.index.send_partition_lookups(driver, candidates)
            # A token's rows may come twice (looked up before and after catching up).
            entry_rows = list({row[0]: row for row in entry_rows + more[0].fetchall()}.values())
            group_rows = list({row[0]: row for row in group_rows + more[1].fetchall()}.values())
        return batch, prior, usage, self.index.loaded(tx, wanted, entry_rows, group_rows), newest_id

    def _open_and_prior(
        self, party: str, row: Any, digest: bytes, covenant_version: int | None = None
    ) -> tuple[_Prior | None, Usage]:
        """``require_open`` and ``_prior`` of a submission in one query, the party's
        quota counts (read under the matching lock) and ``check_version``: from the row
        of ``_PG_OPEN_AND_PRIOR`` or ``_SQLITE_OPEN_AND_PRIOR``."""
        if row is None:
            raise LookupError(f"no mailbox head for {party}")
        closed, prior_digest, stored, unchanged, accepted_at, day, submitted, held, notices = row[
            :9
        ]
        if day is None:
            raise LookupError(f"no quota counts for {party}")
        usage = matching.Usage(day, submitted, held, notices)
        if closed:
            raise NotAllowed(f"{party} was removed from the covenant", reason="party.removed")
        if prior_digest is None:
            check_version(covenant_version, row[9])
            return None, usage
        if bytes(prior_digest) != digest:
            raise Replay("this batch id was used for another batch", field="client_batch_id")
        return _Prior(stored, unchanged, self._db.read_time(accepted_at)), usage

    def deliver(
        self,
        tx: Tx,
        notices: Sequence[NoticeDraft],
        now: datetime,
        sign_notice: SignNotice,
    ) -> tuple[str, ...]:
        """Sign the notices and put them in their recipients' mailboxes; closed ones are skipped."""
        return self._mailboxes.deliver(tx, _sign(notices, sign_notice), now, notices)


def _count(signed: Mapping[str, Sequence[tuple[ItemKind, bytes]]]) -> int:
    return sum(len(items) for items in signed.values())


def _notice_bytes(signed: Mapping[str, Sequence[tuple[ItemKind, bytes]]], party: str) -> int:
    """The bytes of the signed notices that go to parties other than ``party``: what its
    batch costs the others' mailboxes."""
    return sum(
        len(payload)
        for recipient, items in signed.items()
        if recipient != party
        for _, payload in items
    )


def _charge_notices(
    usage: Usage, notice_bytes: int, rules: SubmissionRules | None, field: str
) -> Usage:
    """:func:`matching.charge_notices`, or (without rules: tests) just the count."""
    if rules is None:
        return replace(usage, notice_bytes=usage.notice_bytes + notice_bytes)
    return matching.charge_notices(usage, notice_bytes, rules=rules, field=field)


def _sign(
    notices: Sequence[NoticeDraft], sign_notice: SignNotice
) -> dict[str, list[tuple[ItemKind, bytes]]]:
    """The signed notices by recipient, in the order of the drafts."""
    by_party: dict[str, list[tuple[ItemKind, bytes]]] = {}
    for draft in notices:
        by_party.setdefault(draft.recipient, []).append((ItemKind.HIT_NOTICE, sign_notice(draft)))
    return by_party
