"""The broker's durable store: a thin repository around :mod:`matching` and :mod:`mailbox`.

Every public method is one database transaction, and returns only after it
committed: what the broker acknowledges is durable. A submission's entries,
its hit-group changes, the signed notices in the recipients' mailboxes and the
record of its batch id commit together, or not at all.

How it stays incremental: a batch's tokens are looked up by their 64-bit
prefix (see :mod:`models`) in one query per chunk of 1,000 (PostgreSQL: one
``= ANY(array)`` for the whole batch), the full tokens are compared in Python,
and only those tokens' entries and open groups go to :func:`matching.submit`.
The two statements every batch runs (that lookup and the insert of its new
entries) go straight to the driver, the insert as a binary ``COPY`` on
PostgreSQL; everything else is SQLAlchemy Core. On PostgreSQL, ``submit`` sends
the matching lock, its checks and the lookup as one pipeline before it parses
the batch, so that the server works while Python parses.

Matching writes are serialized (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a
transaction-scoped advisory lock), so two batches that meet on one token
cannot both miss the hit. Mailbox reads are not: they run beside writers.

Over 800 lines, for now: the broker's repository is still one class; its split into
repositories per capability (tokens and matching, mailbox, covenant versions) over one
transaction helper, as the node's store was split, is the next step of issue 14.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import structlog
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute

from samenloop.broker import mailbox, matching
from samenloop.broker.mailbox import EnvelopeRules, EnvelopeUsage, ItemKind, MailboxState, SetAside
from samenloop.broker.matching import (
    DEFAULT_VISIBILITY,
    Change,
    Entry,
    EntryKey,
    Group,
    NoticeDraft,
    SubmissionRules,
    TokenState,
    Usage,
    VisibilityRule,
)
from samenloop.broker.models import (
    CovenantTimestamp,
    CovenantVersion,
    HitGroup,
    MailboxHead,
    MailboxItem,
    Party,
    PartyEnvelopeUsage,
    PartyUsage,
    ProcessedBatch,
    RelayedEnvelope,
    SetAsideItem,
    TokenEntry,
)
from samenloop.broker.token_filter import IndexFilter, Prefixes, as_array
from samenloop.policies import audit_store
from samenloop.policies.audit import AuditEvent, AuditKind
from samenloop.policies.database import READ_ONLY, sqlite_stamp
from samenloop.policies.errors import InvalidInput, NotAllowed, Replay

log = structlog.get_logger(__name__)

MIGRATIONS: Final = "samenloop.broker.migrations"
"""The package of the broker's Alembic migrations, for ``policies.database.upgrade``."""

ID_BYTES: Final = 16
DIGEST_BYTES: Final = 32
# Key of the PostgreSQL advisory lock that serializes matching ("samenlop").
_MATCHING_LOCK: Final = 0x73616D656E6C6F70
# Prefixes per SQLite "IN (...)" lookup.
_SQLITE_CHUNK: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EXPIRY_BUCKET_DAYS: Final = 7
_ENTRY_COLUMNS: Final = (
    "token_prefix",
    "party_id",
    "ref_bucket",
    "ref_prefix",
    "token",
    "signal_ref",
    "key_epoch",
    "expires_at",
    "expiry_bucket",
    "sealed_attributes",
)
# PostgreSQL types of _ENTRY_COLUMNS, for binary COPY.
_ENTRY_COPY_TYPES: Final = [
    "int8", "int4", "int2", "int8", "bytea", "bytea", "int8", "timestamptz", "int4", "bytea",
]  # fmt: skip

# Binary COPY of token_entries, built in one buffer: the signature and header
# extension, each row's fixed part (field count, then each field's length and value,
# up to the length of sealed_attributes), and the trailer.
_COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER: Final = b"\xff\xff"
# Rows per write of a COPY (about 30 kB).
_COPY_SLICE: Final = 200
_COPY_ROW: Final = struct.Struct(">hiqiiihiqi32si16siqiqiii")
_MICROSECOND: Final = timedelta(microseconds=1)
_PG_EPOCH_MICROS: Final = 946_684_800 * 1_000_000  # 2000-01-01, PostgreSQL's epoch

# Plain SQL of the PostgreSQL hot path (constants only, never built from input).
_PG_MATCHING_LOCK: Final = (
    f"SELECT pg_advisory_xact_lock({_MATCHING_LOCK}),"
    " set_config('enable_seqscan', 'off', true),"
    " set_config('jit', 'off', true),"
    " set_config('max_parallel_workers_per_gather', '0', true)"
)
# Columns of the token lookups (_load).
_LOOKUP_ENTRY_COLUMNS: Final = (
    "id, party_id, token, signal_ref, key_epoch, expires_at, sealed_attributes"
)
_LOOKUP_GROUP_COLUMNS: Final = "group_id, token, revision, first_seen, last_seen"
_PG_UPDATE_GROUP: Final = (
    "UPDATE hit_groups SET revision = %s, last_seen = %s, is_open = %s WHERE group_id = %s"
)
_PG_INSERT_GROUP: Final = (
    "INSERT INTO hit_groups"
    " (group_id, token_prefix, token, revision, first_seen, last_seen, is_open)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_PG_OPEN_AND_PRIOR: Final = (
    "SELECT h.closed, b.digest, b.stored, b.unchanged, b.accepted_at,"
    " u.day, u.submitted, u.held, u.notice_bytes"
    " FROM mailbox_heads AS h LEFT JOIN processed_batches AS b"
    " ON b.party_id = h.party_id AND b.client_batch_id = %(batch_id)s"
    " LEFT JOIN party_usage AS u ON u.party_id = h.party_id"
    " WHERE h.party_id = %(party_id)s"
)
_SQLITE_OPEN_AND_PRIOR: Final = (
    "SELECT h.closed, b.digest, b.stored, b.unchanged, b.accepted_at,"
    " u.day, u.submitted, u.held, u.notice_bytes"
    " FROM mailbox_heads AS h LEFT JOIN processed_batches AS b"
    " ON b.party_id = h.party_id AND b.client_batch_id = ?"
    " LEFT JOIN party_usage AS u ON u.party_id = h.party_id"
    " WHERE h.party_id = ?"
)
# A submitter's quota counts (see matching.charge), and others' entries held moving.
_PG_CHARGE: Final = (
    "UPDATE party_usage SET day = %s, submitted = %s, held = %s, notice_bytes = %s"
    " WHERE party_id = %s"
)
_SQLITE_CHARGE: Final = (
    "UPDATE party_usage SET day = ?, submitted = ?, held = ?, notice_bytes = ? WHERE party_id = ?"
)
_PG_HOLD: Final = "UPDATE party_usage SET held = held + %s WHERE party_id = %s"
_SQLITE_HOLD: Final = "UPDATE party_usage SET held = held + ? WHERE party_id = ?"
_PG_RECORD_SUBMIT: Final = (
    "INSERT INTO processed_batches"
    " (party_id, client_batch_id, kind, digest, stored, unchanged, accepted_at)"
    " VALUES (%(party_id)s, %(client_batch_id)s, %(kind)s, %(digest)s, %(stored)s,"
    " %(unchanged)s, %(accepted_at)s)"
    # The ids of the entries this batch inserted: all those after the newest one the
    # prefix filter covered (see _filtered). It covers every row up to the last.
    " RETURNING (SELECT min(id) FROM token_entries WHERE id > %(covered)s),"
    " (SELECT max(id) FROM token_entries)"
)
#: Row ids per partition of the token index on PostgreSQL (migration 0004 uses the same).
PARTITION_IDS: Final = 1_000_000
# The token index's partitions, in order: each one's name and the ids it takes (from, to).
_PG_PARTITIONS: Final = (
    "SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid),"
    "                   'FROM \\(''(-?[0-9]+)''\\) TO \\(''(-?[0-9]+)''\\)'))::bigint[]"
    " FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'token_entries'::regclass ORDER BY 2"
)
# The last id handed out, and where the token index's partitions end (constants only).
_PG_PARTITIONS_STATE: Final = (
    "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END"  # noqa: S608
    "        FROM token_entries_id_seq),"
    f" coalesce((SELECT max(bounds[2]) FROM ({_PG_PARTITIONS}) AS p(name, bounds)), 0)"
)
# The prefix filter's view of the index (see _filtered): rows other writers added since
# it last looked, and a full scan to build it.
_PG_NEWER_ENTRIES: Final = (
    "SELECT id, token_prefix FROM token_entries WHERE id > %s ORDER BY id LIMIT %s"
)
_PG_SEQSCAN: Final = "SELECT set_config('enable_seqscan', %s, true)"
_PG_INDEX_EXTENT: Final = "SELECT coalesce(max(id), 0), count(*) FROM token_entries"
# A partition's prefixes, each as 8 big-endian bytes, in one value.
_PG_PACKED_PREFIXES: Final = (
    "SELECT string_agg(int8send(token_prefix), ''::bytea) FROM token_entries_p{}"
)
# Rows the filter takes from the index one by one before it rather scans it again.
_FILTER_CATCH_UP_ROWS: Final = 100_000
_SQLITE_RECORD_SUBMIT: Final = (
    "INSERT INTO processed_batches"
    " (party_id, client_batch_id, kind, digest, stored, unchanged, accepted_at)"
    " VALUES (:party_id, :client_batch_id, :kind, :digest, :stored, :unchanged, :accepted_at)"
)
_SQLITE_HEADS: Final = (
    "SELECT party_id, head_cursor, acked_cursor, closed FROM mailbox_heads"
    " WHERE party_id IN ({}) ORDER BY party_id"
)
_SQLITE_MOVE_HEAD: Final = "UPDATE mailbox_heads SET head_cursor = ? WHERE party_id = ?"
_SQLITE_INSERT_ITEMS: Final = (
    "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
_SQLITE_UPDATE_GROUP: Final = (
    "UPDATE hit_groups SET revision = ?, last_seen = ?, is_open = ? WHERE group_id = ?"
)
_SQLITE_INSERT_GROUP: Final = (
    "INSERT INTO hit_groups"
    " (group_id, token_prefix, token, revision, first_seen, last_seen, is_open)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_PG_LOCK_HEADS: Final = (
    "SELECT party_id, head_cursor, acked_cursor, closed FROM mailbox_heads"
    " WHERE party_id = ANY(%s::bigint[]) ORDER BY party_id FOR UPDATE"
)
_PG_MOVE_HEADS: Final = (
    "UPDATE mailbox_heads AS h SET head_cursor = v.head_cursor"
    " FROM unnest(%s::bigint[], %s::bigint[]) AS v(party_id, head_cursor)"
    " WHERE h.party_id = v.party_id"
)
_PG_INSERT_ITEMS: Final = (
    "INSERT INTO mailbox_items (party_id, cursor, kind, payload, enqueued_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)

# A mailbox's window (see BrokerStore.fetch): each item's size, with the payloads of the
# small ones. Built once: SQLAlchemy would otherwise rebuild it on every fetch.
_MAILBOX_SIZE = func.length(MailboxItem.payload)
_MAILBOX_WINDOW: Final = (
    select(
        MailboxItem.cursor,
        MailboxItem.kind,
        _MAILBOX_SIZE,
        MailboxItem.enqueued_at,
        case((bindparam("small") >= _MAILBOX_SIZE, MailboxItem.payload), else_=None),
    )
    .where(MailboxItem.party_id == bindparam("party_id"), MailboxItem.cursor > bindparam("after"))
    .order_by(MailboxItem.cursor)
    .limit(bindparam("limit"))
)

SignNotice = Callable[[NoticeDraft], bytes]
"""Turns a notice draft into the serialized signed ``HitNotice`` for the mailbox."""


def _same(value: Any) -> Any:
    return value


def prefix64(value: bytes) -> int:
    """The indexed form of a token or signal ref: its first 8 bytes as a signed integer."""
    return int.from_bytes(value[:8], "big", signed=True)


def expiry_bucket(moment: datetime) -> int:
    """The expiry index key: whole weeks since 1970, so inserts land at few places."""
    return (moment - _EPOCH).days // _EXPIRY_BUCKET_DAYS


# --- results ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What ``SubmitTokens`` answers; ``notified`` are the parties with new mailbox items."""

    client_batch_id: bytes
    stored: int
    unchanged: int
    replayed: bool
    accepted_at: datetime
    notified: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WithdrawResult:
    """What ``WithdrawTokens`` answers; ``notified`` are the parties with new mailbox items."""

    client_batch_id: bytes
    withdrawn: int
    unknown: int
    replayed: bool
    accepted_at: datetime
    notified: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RemovalResult:
    """Entries dropped (by expiry or a party's removal) and the parties told about it.

    ``more`` says an expiry sweep stopped at its limit: call it again.
    """

    removed: int
    notified: tuple[str, ...] = ()
    more: bool = False


@dataclass(frozen=True, slots=True)
class StoredItem:
    """A mailbox item as stored: the service wraps it in a ``MailboxItem``."""

    cursor: int
    kind: ItemKind
    payload: bytes
    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class Fetched:
    """A page of a mailbox, with its head and acknowledged cursors."""

    items: tuple[StoredItem, ...]
    head_cursor: int
    acked_cursor: int


@dataclass(frozen=True, slots=True)
class EnvelopeReceipt:
    """Where a relayed envelope went, when it was first accepted, and whether this was a repeat."""

    cursor: int
    accepted_at: datetime
    replayed: bool


# --- the repository -------------------------------------------------------------------


@dataclass
class _Tx:
    """One write transaction, and the party ids it created (cached only after commit)."""

    conn: Connection
    new_parties: dict[str, int] = field(default_factory=dict)
    #: PostgreSQL: where the token index's partitions end, once this transaction commits.
    partitions_end: int | None = None
    #: PostgreSQL submit: the newest entry's id, known under the matching lock (see _filtered).
    newest_id: int | None = None
    #: PostgreSQL submit: the prefixes it inserted, and their first and last row ids, for
    #: the filter once this transaction commits (see _covered).
    inserted: tuple[Prefixes, int, int] | None = None
    #: Submit: the submitting party's quota counts as read under the matching lock.
    usage: matching.Usage | None = None


@dataclass(frozen=True, slots=True)
class TimestampRecord:
    """A covenant timestamp the broker verified, as it keeps it: the version it vouches
    for, the ``Signed`` bytes as received, and its times."""

    version: int
    signed: bytes
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class _Prior:
    """What was recorded of a submission already processed."""

    stored: int | None
    unchanged: int | None
    accepted_at: datetime


@dataclass
class _Loaded:
    """The states of a batch's tokens, and what the store needs to write them back."""

    states: list[TokenState]
    row_ids: dict[EntryKey, int]
    group_ids: set[bytes]


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must carry a time zone")
    return now.astimezone(UTC)


def _check_id(value: bytes, name: str) -> None:
    if len(value) != ID_BYTES:
        raise InvalidInput(f"{name} must be {ID_BYTES} bytes", field=name)


def _check_party(party: str, name: str = "party") -> None:
    if not 0 < len(party.encode("utf-8")) <= matching.MAX_PARTY_ID_BYTES:
        raise InvalidInput(f"party id must be 1..{matching.MAX_PARTY_ID_BYTES} bytes", field=name)


class BrokerStore(audit_store.AuditLog):
    """The broker's token index, hit groups, mailboxes and idempotency records."""

    def __init__(self, engine: Engine, *, owner: str = "broker") -> None:
        """``owner`` is the broker's id: the actor of the audit entries of its own doing."""
        self._engine = engine
        self._owner = owner
        self._postgres = engine.dialect.name == "postgresql"
        # Party ids never change once committed: cache them both ways.
        self._party_ids: dict[str, int] = {}
        self._party_names: dict[int, str] = {}
        # Driver-level SQL for the hot path, and the timestamp type's own converters.
        dialect = engine.dialect
        columns = ", ".join(_ENTRY_COLUMNS)
        marks = ", ".join(["?" if dialect.paramstyle == "qmark" else "%s"] * len(_ENTRY_COLUMNS))
        # Built from constants only, never from input.
        self._insert_sql = f"INSERT INTO token_entries ({columns}) VALUES ({marks})"  # noqa: S608
        self._copy_sql = f"COPY token_entries ({columns}) FROM STDIN (FORMAT BINARY)"
        self._lookups: dict[tuple[str, str, int, str], str] = {}
        timestamp = TokenEntry.__table__.c.expires_at.type.dialect_impl(dialect)
        to_database = timestamp.bind_processor(dialect)
        from_database = timestamp.result_processor(dialect, None)
        self._stamp: Callable[[datetime], Any] = (
            sqlite_stamp if dialect.name == "sqlite" else to_database or _same
        )
        self._read_time: Callable[[Any], Any] = from_database or _same
        # PostgreSQL: which prefixes the index may hold, built at the first submission.
        self._seen: IndexFilter | None = None
        self._seen_lock = threading.Lock()
        # PostgreSQL: the end of the token index's last partition, as last committed.
        self._partitions_end = 0

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- tokens and matching ----------------------------------------------------

    def prepare_index(self) -> int | None:
        """PostgreSQL: build the token index's filter now (see ``_filtered``), at start-up,
        rather than in the first submission (a few seconds at ten million tokens, under
        the matching lock). Answers the prefixes it holds; ``None`` on SQLite."""
        if not self._postgres:
            return None
        with self._write(matching=True) as tx, self._seen_lock:
            self._seen = self._scan(self._driver(tx))
            return self._seen.prefixes.added

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
    ) -> SubmitResult:
        """Store and match a batch; idempotent by ``client_batch_id``.

        The same batch id with the same content is acknowledged again
        (``replayed``); with other content it is a :class:`Replay` error.
        With ``rules`` (the broker always passes the covenant's), the batch's
        expiries are capped and it is counted against the party's quotas, under
        the matching lock: a batch beyond one is refused whole and stores nothing.
        """
        _check_id(client_batch_id, "client_batch_id")
        now = _utc(now)
        # PostgreSQL parses in the transaction, while the server runs its first statements.
        batch = None if self._postgres else matching.parse_batch(party, key_epoch, entries)
        loaded: _Loaded | None = None
        with self._write(matching=True, lock=batch is not None) as tx:
            party_id = self._ids(tx, [party])[party]
            if batch is None:
                batch, prior, loaded = self._parse_meanwhile(
                    tx, party, party_id, client_batch_id, key_epoch, entries
                )
            else:
                checked = (
                    self._driver(tx)
                    .execute(_SQLITE_OPEN_AND_PRIOR, (client_batch_id, party_id))
                    .fetchone()
                )
                prior = self._open_and_prior(tx, party, checked, batch.digest)
            if prior is not None:
                return SubmitResult(
                    client_batch_id,
                    stored=prior.stored or 0,
                    unchanged=prior.unchanged or 0,
                    replayed=True,
                    accepted_at=prior.accepted_at,
                )
            if loaded is None:
                loaded = self._load(tx, batch.tokens)
            outcome = matching.submit(
                batch,
                loaded.states,
                min_parties=min_parties,
                now=now,
                new_group_id=new_group_id,
                visibility=visibility,
                rules=rules,
            )
            held = matching.held_deltas(outcome.change, submitter=party)
            assert tx.usage is not None
            usage = tx.usage
            if rules is not None:
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
            self._apply(
                tx,
                outcome.change,
                loaded,
                # Signing needs no database: do it while the server takes in the COPY.
                meanwhile=lambda: signed.update(_sign(outcome.change.notices, sign_notice)),
                held={p: d for p, d in held.items() if p != party},
            )
            usage = _charge_notices(usage, _notice_bytes(signed, party), rules, "entries")
            charged = (usage.day, usage.submitted, usage.held, usage.notice_bytes, party_id)
            notified = self._deliver_signed(tx, signed, now)
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
            events = [submitted, *self._hit_events(outcome.change)]
            if self._postgres:
                record["covered"] = tx.newest_id or 0
                driver = self._driver(tx)
                with driver.pipeline():  # the record, counts and audit append: one round trip
                    recorded = driver.execute(_PG_RECORD_SUBMIT, record)
                    driver.execute(_PG_CHARGE, charged)
                    self._audit(tx, events, now)
                first, newest = recorded.fetchone()
                if newest is not None:
                    prefixes = _prefixes([e.token for e in outcome.change.inserted])
                    tx.inserted = (prefixes, newest if first is None else first, newest)
            else:
                record["accepted_at"] = self._stamp(now)
                self._driver(tx).execute(_SQLITE_RECORD_SUBMIT, record)
                self._driver(tx).execute(_SQLITE_CHARGE, charged)
                self._audit(tx, events, now)
        return SubmitResult(
            client_batch_id,
            stored=outcome.stored,
            unchanged=outcome.unchanged,
            replayed=False,
            accepted_at=now,
            notified=notified,
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
    ) -> WithdrawResult:
        """Remove the party's entries for the refs; idempotent by ``client_batch_id``.

        With ``rules`` (the broker always passes the covenant's), the refs count against
        the party's entries of the day like submitted entries, and the notices it causes
        against its notice bytes of the day (:func:`matching.charge_notices`): a
        withdrawal beyond either is refused whole and changes nothing.
        """
        _check_id(client_batch_id, "client_batch_id")
        now = _utc(now)
        batch = matching.parse_withdrawal(party, signal_refs)
        with self._write(matching=True) as tx:
            party_id = self._ids(tx, [party])[party]
            self._require_open(tx, party, party_id)
            prior = self._prior(tx, party_id, client_batch_id, batch.digest)
            if prior is not None:
                return WithdrawResult(
                    client_batch_id,
                    withdrawn=prior.withdrawn or 0,
                    unknown=prior.unknown or 0,
                    replayed=True,
                    accepted_at=prior.accepted_at,
                )
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
            tokens = self._tokens_of_refs(tx, party_id, batch.signal_refs)
            loaded = self._load(tx, tokens)
            outcome = matching.withdraw(
                batch, loaded.states, min_parties=min_parties, now=now, visibility=visibility
            )
            self._apply(tx, outcome.change, loaded)
            signed = _sign(outcome.change.notices, sign_notice)
            usage = _charge_notices(usage, _notice_bytes(signed, party), rules, "signal_refs")
            tx.conn.execute(
                update(PartyUsage)
                .where(PartyUsage.party_id == party_id)
                .values(day=usage.day, submitted=usage.submitted, notice_bytes=usage.notice_bytes)
            )
            notified = self._deliver_signed(tx, signed, now)
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
            self._audit(tx, [withdrawn, *self._hit_events(outcome.change)], now)
        return WithdrawResult(
            client_batch_id,
            withdrawn=outcome.withdrawn,
            unknown=outcome.unknown,
            replayed=False,
            accepted_at=now,
            notified=notified,
        )

    def expire(
        self,
        now: datetime,
        *,
        min_parties: int,
        sign_notice: SignNotice,
        visibility: VisibilityRule = DEFAULT_VISIBILITY,
        limit: int = 10_000,
    ) -> RemovalResult:
        """Drop entries whose ``expires_at`` has passed, at most about ``limit`` per call.

        Groups that shrink or close are told, as for a withdrawal. Call again
        while the result says ``more``.
        """
        now = _utc(now)
        with self._write(matching=True) as tx:
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
            loaded = self._load(tx, sorted(set(tokens)))
            change = matching.expire(
                loaded.states, min_parties=min_parties, now=now, visibility=visibility
            )
            self._apply(tx, change, loaded)
            drafts = [(draft, sign_notice(draft)) for draft in change.notices]
            self._charge_swept(tx, matching.swept_notice_bytes(change, drafts), now)
            by_party: dict[str, list[tuple[ItemKind, bytes]]] = {}
            for draft, payload in drafts:
                by_party.setdefault(draft.recipient, []).append((ItemKind.HIT_NOTICE, payload))
            notified = self._deliver_signed(tx, by_party, now)
            expired = AuditEvent(
                AuditKind.TOKEN_EXPIRY, self._owner, (), {"removed": len(change.deleted)}
            )
            self._audit(tx, [expired, *self._hit_events(change)], now)
        return RemovalResult(
            removed=len(change.deleted), notified=notified, more=len(tokens) == limit
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
        _check_party(party)
        now = _utc(now)
        with self._write(matching=True) as tx:
            return self._remove_party(
                tx,
                party,
                min_parties=min_parties,
                now=now,
                sign_notice=sign_notice,
                visibility=visibility,
            )

    def _remove_party(
        self,
        tx: _Tx,
        party: str,
        *,
        min_parties: int,
        now: datetime,
        sign_notice: SignNotice,
        visibility: VisibilityRule,
    ) -> RemovalResult:
        party_id = self._ids(tx, [party])[party]
        self._close(tx, party, party_id)
        tokens = (
            tx.conn.execute(
                select(TokenEntry.token).where(TokenEntry.party_id == party_id).distinct()
            )
            .scalars()
            .all()
        )
        loaded = self._load(tx, sorted(tokens))
        change = matching.remove_party(
            party, loaded.states, min_parties=min_parties, now=now, visibility=visibility
        )
        self._apply(tx, change, loaded)
        notified = self._deliver(tx, change.notices, now, sign_notice)
        removed = AuditEvent(
            AuditKind.PARTY_REMOVED,
            self._owner,
            (),
            {"party": party, "removed": len(change.deleted)},
        )
        self._audit(tx, [removed, *self._hit_events(change)], now)
        return RemovalResult(removed=len(change.deleted), notified=notified)

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
    ) -> list[RemovalResult]:
        """Record an accepted covenant version, put it in every recipient's mailbox and cut
        off the parties it removed — all in one transaction, so a crash leaves either the
        old version in force or the new one delivered and enforced. A ``timestamp`` for
        the new version (verified by the caller) is kept and delivered after it."""
        now = _utc(now)
        for party in (*recipients, *removed):
            _check_party(party)
        with self._write(matching=True) as tx:
            tx.conn.execute(
                insert(CovenantVersion).values(version=version, signed=signed, accepted_at=now)
            )
            self._enqueue(
                tx,
                {party: [(ItemKind.COVENANT_UPDATE, signed)] for party in recipients},
                now,
                skip_closed=True,
            )
            if timestamp is not None:
                if timestamp.version != version:
                    raise InvalidInput(
                        "the timestamp is for another version", field="covenant_timestamp"
                    )
                self._put_timestamp(tx, timestamp, recipients, now)
            self._audit(
                tx,
                [
                    AuditEvent(
                        AuditKind.COVENANT_PUBLISHED,
                        self._owner,
                        (),
                        {"version": version, "recipients": len(recipients)},
                    )
                ],
                now,
            )
            return [
                self._remove_party(
                    tx,
                    party,
                    min_parties=min_parties,
                    now=now,
                    sign_notice=sign_notice,
                    visibility=visibility,
                )
                for party in sorted(removed)
            ]

    def covenant_versions(self) -> list[bytes]:
        """The signed covenant versions accepted so far (serialized ``SignedCovenant``),
        oldest first."""
        with self._read() as conn:
            return list(
                conn.execute(select(CovenantVersion.signed).order_by(CovenantVersion.version))
                .scalars()
                .all()
            )

    def covenant_version(self, version: int) -> bytes | None:
        """A covenant version accepted since the root (serialized ``SignedCovenant``), or
        None if the broker holds no such version in its store."""
        with self._read() as conn:
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
        now = _utc(now)
        for party in recipients:
            _check_party(party)
        with self._write() as tx:
            return self._put_timestamp(tx, timestamp, recipients, now)

    def _put_timestamp(
        self, tx: _Tx, timestamp: TimestampRecord, recipients: Sequence[str], now: datetime
    ) -> bool:
        held = tx.conn.execute(
            select(CovenantTimestamp.issued_at).where(
                CovenantTimestamp.version == timestamp.version
            )
        ).scalar_one_or_none()
        if held is not None and held >= timestamp.issued_at:
            return False
        values = {
            "signed": timestamp.signed,
            "issued_at": timestamp.issued_at,
            "expires_at": timestamp.expires_at,
            "accepted_at": now,
        }
        if held is None:
            tx.conn.execute(insert(CovenantTimestamp).values(version=timestamp.version, **values))
        else:
            tx.conn.execute(
                update(CovenantTimestamp)
                .where(CovenantTimestamp.version == timestamp.version)
                .values(**values)
            )
        if recipients:
            self._enqueue(
                tx,
                {party: [(ItemKind.COVENANT_TIMESTAMP, timestamp.signed)] for party in recipients},
                now,
                skip_closed=True,
            )
        self._audit(
            tx,
            [
                AuditEvent(
                    AuditKind.COVENANT_TIMESTAMP,
                    self._owner,
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
        with self._read() as conn:
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

    # --- mailboxes -------------------------------------------------------------------

    def enqueue(self, party: str, payload: bytes, kind: ItemKind, now: datetime) -> int:
        """Put one item in a party's mailbox; returns its cursor."""
        _check_party(party)
        now = _utc(now)
        with self._write() as tx:
            cursors = self._enqueue(tx, {party: [(kind, payload)]}, now, skip_closed=False)
        return cursors[party][0]

    def fetch(
        self,
        party: str,
        after_cursor: int,
        max_items: int = 0,
        *,
        now: datetime,
        budget: int = mailbox.MAX_MESSAGE_BYTES,
        parses: Callable[[ItemKind, bytes], bool] | None = None,
    ) -> Fetched:
        """Items after a cursor, in cursor order: as many whole items as fit in one message
        of ``budget`` bytes (:func:`mailbox.page`), and at least one if any waits.

        An item that fits in no message, or (given ``parses``: the service passes
        :func:`mailbox.parses`) whose stored bytes do not parse as its kind, is set aside
        first (:meth:`_set_aside`, its own transaction, at ``now``) and its marker comes
        in its place: no item stops a mailbox. One query reads the window's sizes, with the
        payloads of the small items (at most ``budget`` bytes of them in all); the larger
        payloads of the page, if any, come in a second. A page never loads an item it will
        not send.
        """
        _check_party(party)
        now = _utc(now)
        tried: tuple[int, ...] = ()
        while True:
            with self._read() as conn:
                party_id = self._party(conn, party)
                state = self._head(conn, party, party_id)
                window = mailbox.fetch(state, after_cursor, max_items)
                if party_id is None:
                    return Fetched((), state.head_cursor, state.acked_cursor)
                rows = conn.execute(
                    _MAILBOX_WINDOW,
                    {
                        "party_id": party_id,
                        "after": window.after,
                        "small": budget // window.limit,
                        "limit": window.limit,
                    },
                ).all()
                plan = mailbox.page([(row[0], row[2]) for row in rows], budget=budget)
                aside = dict.fromkeys(plan.set_aside, SetAside.TOO_LARGE)
                if not aside:
                    sent = rows[: plan.count]
                    large = [row[0] for row in sent if row[4] is None]
                    payloads = (
                        dict(
                            conn.execute(
                                select(MailboxItem.cursor, MailboxItem.payload).where(
                                    MailboxItem.party_id == party_id, MailboxItem.cursor.in_(large)
                                )
                            ).all()
                        )
                        if large
                        else {}
                    )
                    items = tuple(
                        StoredItem(
                            cursor,
                            ItemKind(kind),
                            payload if payload is not None else payloads[cursor],
                            enqueued_at,
                        )
                        for cursor, kind, _, enqueued_at, payload in sent
                        if payload is not None or cursor in payloads  # unless acknowledged
                    )
                    aside = {
                        item.cursor: SetAside.MALFORMED
                        for item in items
                        if parses is not None and not parses(item.kind, item.payload)
                    }
                    if not aside:
                        return Fetched(items, state.head_cursor, state.acked_cursor)
            if tuple(aside) == tried:  # only a row altered by hand again meanwhile gets here
                raise LookupError(f"cannot set aside mailbox items {tried} of {party}")
            tried = tuple(aside)
            self._set_aside(party, party_id, aside, now)

    def _set_aside(
        self, party: str, party_id: int, cursors: Mapping[int, SetAside], now: datetime
    ) -> None:
        """Move undeliverable items out of a mailbox, durably and in one transaction: each to
        ``set_aside_items`` (kept for the operator), a marker in its place at its cursor,
        an audit entry saying why (``cursors``: too large for any message, or stored bytes
        that do not parse). Items another reader set aside meanwhile, or that were
        acknowledged, are skipped. A marker whose own bytes do not parse is replaced by a
        new one (there is nothing in it to keep)."""
        with self._write() as tx:
            conn = tx.conn
            self._head(conn, party, party_id, lock=True)  # one at a time per mailbox
            rows = conn.execute(
                select(
                    MailboxItem.cursor,
                    MailboxItem.kind,
                    MailboxItem.payload,
                    MailboxItem.enqueued_at,
                ).where(MailboxItem.party_id == party_id, MailboxItem.cursor.in_(list(cursors)))
            ).all()
            events = []
            released = 0
            for cursor, kind, payload, enqueued_at in rows:
                reason = cursors[cursor]
                if kind == ItemKind.SET_ASIDE.value:
                    if mailbox.parses(ItemKind.SET_ASIDE, payload):
                        continue  # another reader set it aside meanwhile
                else:
                    conn.execute(
                        insert(SetAsideItem).values(
                            party_id=party_id,
                            cursor=cursor,
                            kind=kind,
                            payload=payload,
                            enqueued_at=enqueued_at,
                            set_aside_at=now,
                        )
                    )
                if kind == ItemKind.ENVELOPE.value:
                    released += len(payload)
                conn.execute(
                    update(MailboxItem)
                    .where(MailboxItem.party_id == party_id, MailboxItem.cursor == cursor)
                    .values(
                        kind=ItemKind.SET_ASIDE.value,
                        payload=mailbox.marker(ItemKind(kind), len(payload), now),
                    )
                )
                events.append(
                    AuditEvent(
                        AuditKind.MAILBOX_ITEM_SET_ASIDE,
                        self._owner,
                        (),
                        {
                            "party": party,
                            "cursor": cursor,
                            "kind": kind,
                            "bytes": len(payload),
                            "reason": reason.value,
                        },
                    )
                )
                log.warning(
                    "mailbox item set aside",
                    party=party,
                    cursor=cursor,
                    kind=kind,
                    size=len(payload),
                    reason=reason.value,
                )
            if released:
                self._release_envelopes(tx, party_id, released)
            if events:
                self._audit(tx, events, now)

    def ack(self, party: str, cursor: int) -> int:
        """Acknowledge a party's items up to and including ``cursor`` (and delete them);
        returns the acknowledged cursor."""
        _check_party(party)
        with self._write() as tx:
            party_id = self._party(tx.conn, party)
            state = self._head(tx.conn, party, party_id, lock=True)
            acked = mailbox.ack(state, cursor)
            if acked != state and party_id is not None:
                tx.conn.execute(
                    update(MailboxHead)
                    .where(MailboxHead.party_id == party_id)
                    .values(acked_cursor=acked.acked_cursor)
                )
                read = tx.conn.execute(
                    select(func.coalesce(func.sum(_MAILBOX_SIZE), 0)).where(
                        MailboxItem.party_id == party_id,
                        MailboxItem.cursor <= acked.acked_cursor,
                        MailboxItem.kind == ItemKind.ENVELOPE.value,
                    )
                ).scalar_one()
                if read:
                    self._release_envelopes(tx, party_id, int(read))
                tx.conn.execute(
                    delete(MailboxItem).where(
                        MailboxItem.party_id == party_id,
                        MailboxItem.cursor <= acked.acked_cursor,
                    )
                )
        return acked.acked_cursor

    def _charge_swept(self, tx: _Tx, costs: Mapping[str, int], now: datetime) -> None:
        """Count what an expiry sweep's notices cost the others against the day of each party
        whose entries expired (:func:`matching.charge_swept`)."""
        ids = self._ids(tx, costs)
        for party, cost in sorted(costs.items()):
            usage = matching.charge_swept(self._usage(tx, party, ids[party]), cost, now=now)
            tx.conn.execute(
                update(PartyUsage)
                .where(PartyUsage.party_id == ids[party])
                .values(day=usage.day, submitted=usage.submitted, notice_bytes=usage.notice_bytes)
            )

    def _usage(self, tx: _Tx, party: str, party_id: int) -> Usage:
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
        row = self._usage_row(
            party,
            PartyUsage.party_id,
            (PartyUsage.day, PartyUsage.submitted, PartyUsage.held, PartyUsage.notice_bytes),
        )
        return Usage() if row is None else Usage(*row)

    def envelope_usage(self, party: str) -> EnvelopeUsage:
        """A party's envelope quota counts: its last counted UTC day, the envelopes and bytes
        it sent then, the envelope bytes waiting in its mailbox (zeros for a party never
        seen)."""
        row = self._usage_row(
            party,
            PartyEnvelopeUsage.party_id,
            (
                PartyEnvelopeUsage.day,
                PartyEnvelopeUsage.sent,
                PartyEnvelopeUsage.sent_bytes,
                PartyEnvelopeUsage.waiting_bytes,
            ),
        )
        return EnvelopeUsage() if row is None else EnvelopeUsage(*row)

    def _usage_row(self, party: str, key: Any, columns: tuple[Any, ...]) -> Sequence[Any] | None:
        """A party's row of a usage table (``key`` its party column), or None for a party
        never seen or never counted there."""
        _check_party(party)
        with self._read() as conn:
            party_id = self._party(conn, party)
            if party_id is None:
                return None
            return conn.execute(select(*columns).where(key == party_id)).one_or_none()

    def mailbox_state(self, party: str) -> MailboxState:
        """A party's head and acknowledged cursors (zeros for a party never seen)."""
        _check_party(party)
        with self._read() as conn:
            return self._head(conn, party, self._party(conn, party))

    def close_mailbox(self, party: str) -> None:
        """Close a party's mailbox for good and drop what it still held."""
        _check_party(party)
        with self._write() as tx:
            self._close(tx, party, self._ids(tx, [party])[party])

    def relay_envelope(
        self,
        sender: str,
        client_message_id: bytes,
        digest: bytes,
        *,
        recipient: str,
        payload: bytes,
        now: datetime,
        rules: EnvelopeRules | None = None,
    ) -> EnvelopeReceipt:
        """Record a relayed envelope and put it in the recipient's mailbox, atomically.

        Idempotent by (sender, ``client_message_id``): the same digest again is
        acknowledged with the first receipt (``replayed``) and delivered once;
        another digest is a :class:`Replay` error. With ``rules`` (the broker always
        passes the covenant's) a new envelope counts against the sender's daily
        quotas and the recipient's room, in this transaction: one beyond a quota is
        refused (``QuotaExceeded``) and stores nothing. Its bytes wait in the
        recipient's room until it acknowledges them.
        """
        _check_party(sender, "envelope.sender")
        _check_party(recipient, "envelope.recipient")
        _check_id(client_message_id, "client_message_id")
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"envelope digests are {DIGEST_BYTES} bytes")
        now = _utc(now)
        with self._write() as tx:
            ids = self._ids(tx, [sender, recipient])
            self._require_open(tx, sender, ids[sender])
            prior = tx.conn.execute(
                select(
                    RelayedEnvelope.digest, RelayedEnvelope.cursor, RelayedEnvelope.accepted_at
                ).where(
                    RelayedEnvelope.sender_id == ids[sender],
                    RelayedEnvelope.client_message_id == client_message_id,
                )
            ).first()
            if prior is not None:
                if prior.digest != digest:
                    raise Replay(
                        "this message id was used for another envelope",
                        field="client_message_id",
                    )
                return EnvelopeReceipt(prior.cursor, prior.accepted_at, replayed=True)
            if self._head(tx.conn, recipient, ids[recipient], lock=True).closed:
                raise NotAllowed(
                    f"{recipient} no longer takes envelopes",
                    field="envelope.recipient",
                    reason="mailbox.closed",
                )
            usage = self._envelope_usage(tx, [ids[sender], ids[recipient]])
            size = len(payload)
            if rules is not None:
                usage[ids[sender]] = mailbox.charge_sent(
                    usage[ids[sender]], size, rules=rules, now=now
                )
                usage[ids[recipient]] = mailbox.charge_waiting(
                    usage[ids[recipient]], size, rules=rules
                )
            else:
                usage[ids[recipient]] = replace(
                    usage[ids[recipient]], waiting_bytes=usage[ids[recipient]].waiting_bytes + size
                )
            for party_id, counted in usage.items():
                self._store_envelope_usage(tx, party_id, counted)
            cursor = self._enqueue(
                tx, {recipient: [(ItemKind.ENVELOPE, payload)]}, now, skip_closed=False
            )[recipient][0]
            tx.conn.execute(
                insert(RelayedEnvelope).values(
                    sender_id=ids[sender],
                    client_message_id=client_message_id,
                    digest=digest,
                    recipient_id=ids[recipient],
                    cursor=cursor,
                    accepted_at=now,
                )
            )
        return EnvelopeReceipt(cursor, now, replayed=False)

    # --- figures ------------------------------------------------------------------

    def count_tokens(self) -> int:
        """Token entries held (including expired ones not yet swept)."""
        with self._read() as conn:
            return conn.execute(select(func.count()).select_from(TokenEntry)).scalar_one()

    def count_groups(self, *, open_only: bool = True) -> int:
        """Hit groups (open ones, unless ``open_only`` is false)."""
        query = select(func.count()).select_from(HitGroup)
        if open_only:
            query = query.where(HitGroup.is_open)
        with self._read() as conn:
            return conn.execute(query).scalar_one()

    def open_groups(self) -> list[Group]:
        """Every open hit group (for operators and tests; not for the hot path)."""
        with self._read() as conn:
            rows = conn.execute(select(HitGroup).where(HitGroup.is_open)).all()
        return [
            Group(row.group_id, row.token, row.revision, row.first_seen, row.last_seen, True)
            for row in rows
        ]

    # --- the audit log ----------------------------------------------------------------

    @contextlib.contextmanager
    def _audit_write(self) -> Iterator[Connection]:
        with self._write() as tx:
            yield tx.conn

    def _audit_read(self) -> contextlib.AbstractContextManager[Connection]:
        return self._read()

    def _audit(self, tx: _Tx, events: Sequence[AuditEvent], now: datetime) -> None:
        """Record a write's events last in its transaction: one insert for all of them."""
        audit_store.append_many(tx.conn, events, now=now)

    def _hit_events(self, change: Change) -> list[AuditEvent]:
        """One event per hit group a change formed, grew, shrank or closed: its id, revision,
        the kinds of notice issued and to how many recipients."""
        notices: dict[bytes, list[NoticeDraft]] = {}
        for draft in change.notices:
            notices.setdefault(draft.group_id, []).append(draft)
        return [
            AuditEvent(
                AuditKind.HIT_NOTICE,
                self._owner,
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

    # --- transactions and parties -------------------------------------------------

    @contextlib.contextmanager
    def _write(self, *, matching: bool = False, lock: bool = True) -> Iterator[_Tx]:
        """A write transaction; ``matching`` takes the matching lock first, unless ``lock``
        is false because the caller sends it itself (PostgreSQL ``submit``: in its pipeline)."""
        with self._engine.begin() as conn:
            if matching and lock and self._postgres:
                # Matching looks rows up by key, a few thousand at most: never let
                # missing or stale statistics turn a lookup into a full scan, or
                # make one look costly enough to be compiled (JIT) first or to be
                # worth starting parallel workers for (milliseconds, at 10M tokens).
                driver = conn.connection.driver_connection
                assert driver is not None
                driver.execute(_PG_MATCHING_LOCK)
            tx = _Tx(conn)
            try:
                yield tx
            except BaseException:
                # A rolled-back COPY may have taken ids: the next insert asks the database
                # again where the partitions end (see _ensure_partitions).
                self._partitions_end = 0
                raise
        # Reached only after the commit: a rolled-back batch teaches nothing (its new
        # partition, say, is gone with it).
        self._remember(tx.new_parties)
        if tx.partitions_end is not None:
            self._partitions_end = tx.partitions_end
        if tx.inserted is not None:
            self._covered(*tx.inserted)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**READ_ONLY)
            with conn.begin():
                yield conn

    def _remember(self, parties: dict[str, int]) -> None:
        for name, party_id in parties.items():
            self._party_ids[name] = party_id
            self._party_names[party_id] = name

    def _insert(self, model: type[Any]) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(model)

    def _party(self, conn: Connection, party: str) -> int | None:
        """A party's id if it exists (committed), creating nothing."""
        cached = self._party_ids.get(party)
        if cached is not None:
            return cached
        found = conn.execute(select(Party.id).where(Party.name == party)).scalar_one_or_none()
        return found

    def _ids(self, tx: _Tx, names: Iterable[str]) -> dict[str, int]:
        """Party ids by name, creating parties (and their mailboxes) not seen before."""
        wanted = set(names)
        found = {name: self._party_ids[name] for name in wanted if name in self._party_ids}
        found.update({name: tx.new_parties[name] for name in wanted if name in tx.new_parties})
        missing = sorted(wanted - found.keys())
        if not missing:
            return found
        query = select(Party.name, Party.id).where(Party.name.in_(missing))
        known = {name: party_id for name, party_id in tx.conn.execute(query)}
        absent = [name for name in missing if name not in known]
        if absent:
            for name in absent:
                _check_party(name)
            tx.conn.execute(
                self._insert(Party).on_conflict_do_nothing(index_elements=["name"]),
                [{"name": name} for name in absent],
            )
            known = {name: party_id for name, party_id in tx.conn.execute(query)}
            tx.conn.execute(
                self._insert(MailboxHead).on_conflict_do_nothing(index_elements=["party_id"]),
                [
                    {"party_id": known[name], "head_cursor": 0, "acked_cursor": 0, "closed": False}
                    for name in absent
                ],
            )
            tx.conn.execute(
                self._insert(PartyUsage).on_conflict_do_nothing(index_elements=["party_id"]),
                [
                    {"party_id": known[name], "day": 0, "submitted": 0, "held": 0}
                    | {"notice_bytes": 0}
                    for name in absent
                ],
            )
            tx.conn.execute(
                self._insert(PartyEnvelopeUsage).on_conflict_do_nothing(
                    index_elements=["party_id"]
                ),
                [
                    {"party_id": known[name], "day": 0, "sent": 0, "sent_bytes": 0}
                    | {"waiting_bytes": 0}
                    for name in absent
                ],
            )
        tx.new_parties.update(known)
        found.update(known)
        return found

    def _names(self, tx: _Tx, party_ids: Iterable[int]) -> dict[int, str]:
        wanted = set(party_ids)
        names = {i: self._party_names[i] for i in wanted if i in self._party_names}
        names.update({i: n for n, i in tx.new_parties.items() if i in wanted})
        missing = wanted - names.keys()
        if missing:
            rows = tx.conn.execute(select(Party.id, Party.name).where(Party.id.in_(missing)))
            for party_id, name in rows:
                names[party_id] = name
                tx.new_parties[name] = party_id
        return names

    def _head(
        self, conn: Connection, party: str, party_id: int | None, *, lock: bool = False
    ) -> MailboxState:
        if party_id is None:
            return MailboxState(party)
        query = select(MailboxHead.head_cursor, MailboxHead.acked_cursor, MailboxHead.closed).where(
            MailboxHead.party_id == party_id
        )
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).one()
        return MailboxState(party, row.head_cursor, row.acked_cursor, row.closed)

    def _require_open(self, tx: _Tx, party: str, party_id: int) -> None:
        if self._head(tx.conn, party, party_id).closed:
            raise NotAllowed(f"{party} was removed from the covenant", reason="party.removed")

    def _close(self, tx: _Tx, party: str, party_id: int) -> None:
        closed = mailbox.close(self._head(tx.conn, party, party_id, lock=True))
        tx.conn.execute(
            update(MailboxHead).where(MailboxHead.party_id == party_id).values(closed=closed.closed)
        )
        tx.conn.execute(delete(MailboxItem).where(MailboxItem.party_id == party_id))
        tx.conn.execute(
            update(PartyEnvelopeUsage)
            .where(PartyEnvelopeUsage.party_id == party_id)
            .values(waiting_bytes=0)
        )

    def _envelope_usage(self, tx: _Tx, party_ids: Collection[int]) -> dict[int, EnvelopeUsage]:
        """The envelope quota counts of these parties, locked (PostgreSQL) in party id order:
        always after the mailbox head, so that these locks cannot deadlock."""
        rows = tx.conn.execute(
            select(
                PartyEnvelopeUsage.party_id,
                PartyEnvelopeUsage.day,
                PartyEnvelopeUsage.sent,
                PartyEnvelopeUsage.sent_bytes,
                PartyEnvelopeUsage.waiting_bytes,
            )
            .where(PartyEnvelopeUsage.party_id.in_(sorted(set(party_ids))))
            .order_by(PartyEnvelopeUsage.party_id)
            .with_for_update()
        ).all()
        found = {row[0]: EnvelopeUsage(*row[1:]) for row in rows}
        if len(found) != len(set(party_ids)):
            raise LookupError("envelope quota counts are missing")
        return found

    def _store_envelope_usage(self, tx: _Tx, party_id: int, usage: EnvelopeUsage) -> None:
        tx.conn.execute(
            update(PartyEnvelopeUsage)
            .where(PartyEnvelopeUsage.party_id == party_id)
            .values(
                day=usage.day,
                sent=usage.sent,
                sent_bytes=usage.sent_bytes,
                waiting_bytes=usage.waiting_bytes,
            )
        )

    def _release_envelopes(self, tx: _Tx, party_id: int, size: int) -> None:
        """Envelopes of ``size`` bytes left a party's mailbox: give their room back."""
        usage = self._envelope_usage(tx, [party_id])[party_id]
        self._store_envelope_usage(tx, party_id, mailbox.released(usage, size))

    def _prior(self, tx: _Tx, party_id: int, client_batch_id: bytes, digest: bytes) -> Any | None:
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

    def _driver(self, tx: _Tx) -> Any:
        """The transaction's driver connection (psycopg or sqlite3), for the hot path's
        plain SQL: SQLAlchemy's own work per statement would cost as much as SQLite's."""
        driver = tx.conn.connection.driver_connection
        assert driver is not None
        return driver

    def _parse_meanwhile(
        self,
        tx: _Tx,
        party: str,
        party_id: int,
        client_batch_id: bytes,
        key_epoch: int,
        entries: Sequence[Entry],
    ) -> tuple[matching.Batch, _Prior | None, _Loaded]:
        """PostgreSQL ``submit``: parse the batch while the server runs its first statements,
        the lookups among them.

        One pipeline goes out before parsing, so that its round trip and the server's
        work overlap with the parse: the matching lock, ``_require_open`` with
        ``_prior``, the entries other writers added since the filter last looked, and
        ``_load``'s two lookups for the prefixes the filter held then (see
        :meth:`_filtered`). Once the lock is held, the filter takes those newer entries,
        and the batch's tokens among them are looked up too (none, unless another thread
        or broker process committed entries in between).
        """
        driver = self._driver(tx)
        early: dict[int, list[int]] | None = None
        with self._seen_lock:
            seen = self._seen
            last_id = None if seen is None else seen.last_id
            if seen is not None and not seen.wants_rebuild:
                with contextlib.suppress(ValueError):  # a malformed token: parsing says which
                    early = seen.candidates(np.unique(_prefixes([e.token for e in entries])))
        with driver.pipeline():
            driver.execute(_PG_MATCHING_LOCK)
            checked = driver.execute(
                _PG_OPEN_AND_PRIOR, {"party_id": party_id, "batch_id": client_batch_id}
            )
            newer = (
                None
                if last_id is None
                else driver.execute(_PG_NEWER_ENTRIES, (last_id, _FILTER_CATCH_UP_ROWS + 1))
            )
            found = None if not early else self._send_partition_lookups(driver, early)
            batch = matching.parse_batch(party, key_epoch, entries)
        prior = self._open_and_prior(tx, party, checked.fetchone(), batch.digest)
        wanted = {entry.token for entry in batch.entries}
        if prior is not None:
            return batch, prior, _Loaded([], {}, set())
        entry_rows: list[Any] = [] if found is None else found[0].fetchall()
        group_rows: list[Any] = [] if found is None else found[1].fetchall()
        newer_rows = None if newer is None else newer.fetchall()
        candidates = self._filtered(driver, newer_rows, wanted, early)
        tx.newest_id = None if self._seen is None else self._seen.last_id
        if candidates:
            with driver.pipeline():  # both lookups in one round trip
                more = self._send_partition_lookups(driver, candidates)
            # A token's rows may come twice (looked up before and after catching up).
            entry_rows = list({row[0]: row for row in entry_rows + more[0].fetchall()}.values())
            group_rows = list({row[0]: row for row in group_rows + more[1].fetchall()}.values())
        return batch, prior, self._loaded(tx, wanted, entry_rows, group_rows)

    def _filtered(
        self,
        driver: Any,
        newer: list[Any] | None,
        tokens: Collection[bytes],
        early: Mapping[int, Sequence[int]] | None,
    ) -> dict[int, list[int]]:
        """Under the matching lock: the prefixes of ``tokens`` the index may hold and that
        are still to be looked up, by the partition (its first row id) that may hold
        them. ``early`` were looked up already, for the filter as it was before the lock.

        The filter holds the prefix and partition of every entry up to its ``last_id``:
        those it was built from (a scan), those this store inserted, and those of
        ``newer``, the entries other writers (another thread or broker process)
        inserted since, which it takes in now. Every insert runs under the matching
        lock, so ids are committed in order and nothing below ``last_id`` can appear
        later: after ``early``, only ``newer`` may hold more. A filter that would take
        too many rows one by one, or that has grown too full, is built anew. An open
        group always has entries on its token, so its prefix is covered too.
        """
        if early is not None and not newer:  # the common case: nothing more to look up
            return {}
        wanted = np.unique(_prefixes(tokens))
        with self._seen_lock:
            seen = self._seen
            if seen is None or newer is None or len(newer) > _FILTER_CATCH_UP_ROWS:
                seen = self._seen = self._scan(driver)
                latest = seen.candidates(wanted)
            else:
                ids, held = as_array(r[0] for r in newer), as_array(r[1] for r in newer)
                latest = seen.catch_up(ids, held, wanted)
                if seen.wants_rebuild:
                    seen = self._seen = self._scan(driver)
                    latest = seen.candidates(wanted)
                elif early is None:  # nothing looked up yet
                    latest = seen.candidates(wanted)
        missing: dict[int, list[int]] = {}
        for start, found in latest.items():
            done = set((early or {}).get(start, ()))
            rest = sorted({p for p in found if p not in done})
            if rest:
                missing[start] = rest
        return missing

    def _scan(self, driver: Any) -> IndexFilter:
        """A filter of the whole index, read partition by partition: each one's prefixes
        in one value, packed by the server (a row per prefix would cost a second of
        this process's time per million).

        Lookups name a candidate's partition by arithmetic (see
        ``_send_partition_lookups``): a partition laid out otherwise is an error here,
        not a hit missed later.
        """
        # Matching turned sequential scans off for its lookups; these read everything.
        driver.execute(_PG_SEQSCAN, ("on",))
        last_id, rows = driver.execute(_PG_INDEX_EXTENT).fetchone()
        # Sized by rows, not ids: expired ones leave gaps.
        built = IndexFilter(int(rows), PARTITION_IDS, int(last_id))
        for name, (start, end) in driver.execute(_PG_PARTITIONS).fetchall():
            if (name, end) != (f"token_entries_p{start}", start + PARTITION_IDS) or (
                start % PARTITION_IDS
            ):
                raise ValueError(
                    f"partition {name} of the token index takes ids from {start} to {end},"
                    f" not a range of {PARTITION_IDS} from a multiple of it"
                )
            if not rows or start > last_id:  # nothing there (yet)
                continue
            # Built from the catalog's integers only, never from input.
            with driver.cursor(binary=True) as cursor:
                packed = cursor.execute(_PG_PACKED_PREFIXES.format(start)).fetchone()[0]
            if packed is None:  # an empty partition
                continue
            if len(packed) % 8:
                raise ValueError(f"unexpected prefixes of partition {name}")
            prefixes = np.frombuffer(packed, dtype=">i8").astype(np.int64)
            built.prefixes.add(prefixes)
            built.partitions.add(start, prefixes)
        driver.execute(_PG_SEQSCAN, ("off",))
        return built

    def _covered(self, prefixes: Prefixes, first: int, newest: int) -> None:
        """PostgreSQL, once a submission that inserted entries with ``prefixes`` and ids
        from ``first`` to ``newest`` committed: the filter now covers them, and every
        entry up to ``newest`` (unless another thread caught up on them already)."""
        with self._seen_lock:
            if self._seen is not None:
                self._seen.add_inserted(prefixes, first, newest)

    def _open_and_prior(self, tx: _Tx, party: str, row: Any, digest: bytes) -> _Prior | None:
        """``_require_open`` and ``_prior`` of a submission in one query, and the party's
        quota counts (into ``tx.usage``): from the row of ``_PG_OPEN_AND_PRIOR`` or
        ``_SQLITE_OPEN_AND_PRIOR``."""
        if row is None:
            raise LookupError(f"no mailbox head for {party}")
        closed, prior_digest, stored, unchanged, accepted_at, day, submitted, held, notices = row
        if day is None:
            raise LookupError(f"no quota counts for {party}")
        tx.usage = matching.Usage(day, submitted, held, notices)
        if closed:
            raise NotAllowed(f"{party} was removed from the covenant", reason="party.removed")
        if prior_digest is None:
            return None
        if bytes(prior_digest) != digest:
            raise Replay("this batch id was used for another batch", field="client_batch_id")
        return _Prior(stored, unchanged, self._read_time(accepted_at))

    # --- the token index -------------------------------------------------------------

    def _chunks(self, values: Sequence[int]) -> Iterator[Sequence[int]]:
        if self._postgres:
            yield values
            return
        for start in range(0, len(values), _SQLITE_CHUNK):
            yield values[start : start + _SQLITE_CHUNK]

    def _among(
        self, column: InstrumentedAttribute[int], values: Sequence[int]
    ) -> ColumnElement[bool]:
        if self._postgres:
            array = bindparam(None, list(values), type_=postgresql.ARRAY(BigInteger))
            return column == any_(array)
        return column.in_(values)

    def _lookup(self, table: str, columns: str, size: int, where: str = "") -> str:
        """A driver-level query for rows whose ``token_prefix`` is among ``size`` values."""
        key = (table, columns, size if not self._postgres else 0, where)
        sql = self._lookups.get(key)
        if sql is None:
            among = (
                "= ANY(%s::text::bigint[])" if self._postgres else f"IN ({', '.join('?' * size)})"
            )
            # Built from the constants of _load only, never from input.
            sql = f"SELECT {columns} FROM {table} WHERE token_prefix {among}{where}"  # noqa: S608
            self._lookups[key] = sql
        return sql

    def _load(self, tx: _Tx, tokens: Sequence[bytes]) -> _Loaded:
        """The states of the given tokens: their entries and open groups.

        The hot path of every batch: one query per chunk and table, straight to the
        driver, with the column types' own converters for the timestamps.
        """
        wanted = set(tokens)
        # prefix64, inlined: this runs per token.
        prefixes = list({int.from_bytes(token[:8], "big", signed=True) for token in wanted})
        driver = self._driver(tx)
        if self._postgres:
            with driver.pipeline():  # both lookups in one round trip
                found = self._send_lookups(driver, _array(prefixes))
            return self._loaded(tx, wanted, found[0].fetchall(), found[1].fetchall())
        entry_rows: list[Any] = []
        for chunk in self._chunks(prefixes):
            entry_rows += driver.execute(
                self._lookup("token_entries", _LOOKUP_ENTRY_COLUMNS, len(chunk)), chunk
            ).fetchall()
        # An open group has entries on its token (entries go only through matching,
        # which closes a group whose parties fall below the minimum), so SQLite, where
        # each lookup costs this process's CPU, looks groups up only where entries are.
        held = list({int.from_bytes(row[2][:8], "big", signed=True) for row in entry_rows})
        group_rows: list[Any] = []
        for chunk in self._chunks(held):
            group_rows += driver.execute(
                self._lookup("hit_groups", _LOOKUP_GROUP_COLUMNS, len(chunk), " AND is_open = 1"),
                chunk,
            ).fetchall()
        return self._loaded(tx, wanted, entry_rows, group_rows)

    def _send_lookups(self, driver: Any, prefixes: str) -> tuple[Any, Any]:
        """PostgreSQL, in a pipeline: ``_load``'s two lookups, by ``prefixes``, an array
        literal (one text parameter, not an array dumped element by element).

        Answers the cursors, to be read once the pipeline is done.
        """
        params = (prefixes,)
        return (
            driver.execute(self._lookup("token_entries", _LOOKUP_ENTRY_COLUMNS, 0), params),
            driver.execute(
                self._lookup("hit_groups", _LOOKUP_GROUP_COLUMNS, 0, " AND is_open"), params
            ),
        )

    def _send_partition_lookups(
        self, driver: Any, by_partition: Mapping[int, Sequence[int]]
    ) -> tuple[Any, Any]:
        """PostgreSQL, in a pipeline: ``_load``'s two lookups, the entries' only in the
        partitions that may hold them (each named by its first row id, as migration
        0004 and ``_ensure_partitions`` name them); see ``_send_lookups``."""
        # Built from the constants of _load and integers only, never from input.
        entries = " UNION ALL ".join(
            f"SELECT {_LOOKUP_ENTRY_COLUMNS} FROM token_entries_p{int(start)}"  # noqa: S608
            " WHERE token_prefix = ANY(%s::text::bigint[])"
            for start in by_partition
        )
        everything = sorted({p for prefixes in by_partition.values() for p in prefixes})
        return (
            driver.execute(entries, [_array(prefixes) for prefixes in by_partition.values()]),
            driver.execute(
                self._lookup("hit_groups", _LOOKUP_GROUP_COLUMNS, 0, " AND is_open"),
                (_array(everything),),
            ),
        )

    def _loaded(
        self, tx: _Tx, wanted: set[bytes], entry_rows: Sequence[Any], group_rows: Sequence[Any]
    ) -> _Loaded:
        """The states of the ``wanted`` tokens from the lookups' rows, without the rows of
        other tokens that share a prefix."""
        names = self._names(tx, {row[1] for row in entry_rows})
        read_time = self._read_time
        entries: dict[bytes, list[Entry]] = {}
        row_ids: dict[EntryKey, int] = {}
        for row_id, party_id, token, ref, key_epoch, expires_at, sealed in entry_rows:
            token = bytes(token)
            if token not in wanted:  # a prefix collision
                continue
            entry = Entry(
                names[party_id],
                token,
                bytes(ref),
                key_epoch,
                read_time(expires_at),
                None if sealed is None else bytes(sealed),
            )
            entries.setdefault(token, []).append(entry)
            row_ids[entry.key] = row_id
        groups: dict[bytes, Group] = {}
        for group_id, token, revision, first_seen, last_seen in group_rows:
            if bytes(token) in wanted:
                groups[bytes(token)] = Group(
                    bytes(group_id),
                    bytes(token),
                    revision,
                    read_time(first_seen),
                    read_time(last_seen),
                    True,
                )
        states = [
            TokenState(token, tuple(entries.get(token, ())), groups.get(token))
            for token in sorted(entries.keys() | groups.keys())
        ]
        return _Loaded(states, row_ids, {g.group_id for g in groups.values()})

    def _tokens_of_refs(self, tx: _Tx, party_id: int, refs: Sequence[bytes]) -> list[bytes]:
        """The tokens on which a party holds entries for the given refs.

        First the ids, from the ref index alone (each ref's run of its party's
        bucket); then those rows. Withdrawals are rare: they pay for cheap inserts.
        """
        wanted = set(refs)
        prefixes = sorted({prefix64(ref) for ref in wanted})
        ids: list[int] = []
        for chunk in self._chunks(prefixes):
            buckets = sorted({(prefix >> 56) & 0xFF for prefix in chunk})
            ids += tx.conn.execute(
                select(TokenEntry.id).where(
                    TokenEntry.party_id == party_id,
                    self._among(TokenEntry.ref_bucket, buckets),
                    self._among(TokenEntry.ref_prefix, chunk),
                )
            ).scalars()
        tokens: set[bytes] = set()
        for chunk in self._chunks(ids):
            rows = tx.conn.execute(
                select(TokenEntry.token, TokenEntry.signal_ref).where(
                    self._among(TokenEntry.id, chunk)
                )
            )
            tokens.update(token for token, ref in rows if ref in wanted)
        return sorted(tokens)

    def _apply(
        self,
        tx: _Tx,
        change: Change,
        loaded: _Loaded,
        meanwhile: Callable[[], object] | None = None,
        held: Mapping[str, int] | None = None,
    ) -> None:
        """Write a change: entries deleted, updated and inserted; groups updated and inserted;
        the parties' counts of entries held moved with them (``held``: the moves, when the
        caller counted them itself — a submission counts its own party's apart).

        ``meanwhile`` (work that needs no database) runs once, while the server takes in
        the inserted entries if there are any.
        """
        conn = tx.conn
        moves = matching.held_deltas(change) if held is None else held
        if moves:
            ids = self._ids(tx, moves)
            counts = [(delta, ids[party]) for party, delta in sorted(moves.items())]
            if self._postgres:
                with self._driver(tx).cursor() as cursor:
                    cursor.executemany(_PG_HOLD, counts)
            else:
                self._driver(tx).executemany(_SQLITE_HOLD, counts)
        doomed = [loaded.row_ids[entry.key] for entry in change.deleted]
        for start in range(0, len(doomed), _SQLITE_CHUNK):
            conn.execute(
                delete(TokenEntry).where(TokenEntry.id.in_(doomed[start : start + _SQLITE_CHUNK]))
            )
        parties = self._ids(tx, {e.party for e in change.inserted + change.updated})
        if change.updated:
            conn.execute(
                update(TokenEntry)
                .where(TokenEntry.id == bindparam("row_id"))
                .values(
                    key_epoch=bindparam("new_key_epoch"),
                    expires_at=bindparam("new_expires_at"),
                    expiry_bucket=bindparam("new_expiry_bucket"),
                    sealed_attributes=bindparam("new_sealed_attributes"),
                ),
                [
                    {
                        "row_id": loaded.row_ids[entry.key],
                        "new_key_epoch": entry.key_epoch,
                        "new_expires_at": entry.expires_at,
                        "new_expiry_bucket": expiry_bucket(entry.expires_at),
                        "new_sealed_attributes": entry.sealed_attributes,
                    }
                    for entry in change.updated
                ],
            )
        if change.inserted:
            self._insert_entries(tx, change.inserted, parties, meanwhile)
        elif meanwhile is not None:
            meanwhile()
        changed = [g for g in change.groups if g.group_id in loaded.group_ids]
        formed = [g for g in change.groups if g.group_id not in loaded.group_ids]
        if not (changed or formed):
            return
        stamp = self._stamp
        updates = [(g.revision, stamp(g.last_seen), g.open, g.group_id) for g in changed]
        inserts = [
            (
                g.group_id,
                prefix64(g.token),
                g.token,
                g.revision,
                stamp(g.first_seen),
                stamp(g.last_seen),
                g.open,
            )
            for g in formed
        ]
        if not self._postgres:
            if updates:
                self._driver(tx).executemany(_SQLITE_UPDATE_GROUP, updates)
            if inserts:
                self._driver(tx).executemany(_SQLITE_INSERT_GROUP, inserts)
            return
        driver = self._driver(tx)
        with driver.pipeline(), driver.cursor() as cursor:  # one round trip for both
            if updates:
                cursor.executemany(_PG_UPDATE_GROUP, updates)
            if inserts:
                cursor.executemany(_PG_INSERT_GROUP, inserts)

    def _insert_entries(
        self,
        tx: _Tx,
        entries: Sequence[Entry],
        parties: dict[str, int],
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        """The hot path of every batch: straight to the driver (PostgreSQL: binary COPY).

        ``meanwhile`` runs after the rows went out, before the end of the COPY is awaited.
        PostgreSQL: the rows are packed and sent in slices, so that the server inserts
        the first while the next are packed.
        """
        if not self._postgres:
            # prefix64, sqlite_stamp and expiry_bucket, inlined: this runs per row.
            stamp = self._stamp
            epoch = _EPOCH
            rows: list[tuple[Any, ...]] = []
            append = rows.append
            for entry in entries:
                token = entry.token
                ref = entry.signal_ref
                expires_at = entry.expires_at
                append(
                    (
                        int.from_bytes(token[:8], "big", signed=True),
                        parties[entry.party],
                        ref[0],
                        int.from_bytes(ref[:8], "big", signed=True),
                        token,
                        ref,
                        entry.key_epoch,
                        stamp(expires_at),
                        (expires_at - epoch).days // _EXPIRY_BUCKET_DAYS,
                        entry.sealed_attributes,
                    )
                )
            self._driver(tx).executemany(self._insert_sql, rows)
            if meanwhile is not None:
                meanwhile()
            return
        self._ensure_partitions(tx, len(entries))
        with self._driver(tx).cursor() as cursor, cursor.copy(self._copy_sql) as copy:
            copy.write(_COPY_SIGNATURE)
            for start in range(0, len(entries), _COPY_SLICE):
                copy.write(b"".join(_copy_rows(entries[start : start + _COPY_SLICE], parties)))
            copy.write(_COPY_TRAILER)
            if meanwhile is not None:
                meanwhile()

    def _ensure_partitions(self, tx: _Tx, rows: int) -> None:
        """PostgreSQL: make sure partitions of the token index take the next ``rows`` ids
        and half a partition more (migration 0004), creating them under the matching lock.

        Submissions know the newest id from the prefix filter, so that in the common case
        this costs no statement; near the end, or for other callers, the id sequence and
        the catalog say where things stand.
        """
        margin = rows + PARTITION_IDS // 2
        if tx.newest_id is not None and tx.newest_id + margin < self._partitions_end:
            return
        driver = self._driver(tx)
        issued, end = driver.execute(_PG_PARTITIONS_STATE).fetchone()
        if int(end) % PARTITION_IDS:
            # The prefix filter finds a row's partition by arithmetic (see _filtered).
            raise ValueError(
                f"the token index's partitions end at {end}, not at a multiple of {PARTITION_IDS}"
            )
        while int(issued) + margin >= int(end):
            start = int(end)
            # Built from integers only, never from input.
            driver.execute(
                f"CREATE TABLE IF NOT EXISTS token_entries_p{start} PARTITION OF token_entries"
                f" FOR VALUES FROM ({start}) TO ({start + PARTITION_IDS})"
            )
            end = start + PARTITION_IDS
        tx.partitions_end = int(end)

    # --- delivering to mailboxes ----------------------------------------------------

    def _deliver(
        self,
        tx: _Tx,
        notices: Sequence[NoticeDraft],
        now: datetime,
        sign_notice: SignNotice,
    ) -> tuple[str, ...]:
        """Sign the notices and put them in their recipients' mailboxes; closed ones are skipped."""
        return self._deliver_signed(tx, _sign(notices, sign_notice), now)

    def _deliver_signed(
        self, tx: _Tx, by_party: dict[str, list[tuple[ItemKind, bytes]]], now: datetime
    ) -> tuple[str, ...]:
        """Put signed notices in their recipients' mailboxes; closed ones are skipped."""
        if not by_party:
            return ()
        return tuple(sorted(self._enqueue(tx, by_party, now, skip_closed=True)))

    def _enqueue(
        self,
        tx: _Tx,
        items: dict[str, list[tuple[ItemKind, bytes]]],
        now: datetime,
        *,
        skip_closed: bool,
    ) -> dict[str, list[int]]:
        """Hand out cursors and store the items, in four statements whatever the number
        of parties; the heads are read (PostgreSQL: locked) in one statement, in party id
        order: a fixed order, so that row locks cannot deadlock."""
        ids = self._ids(tx, items)
        names = {ids[party]: party for party in items}
        wanted = sorted(names)
        driver = self._driver(tx)
        if self._postgres:
            heads = driver.execute(_PG_LOCK_HEADS, (wanted,)).fetchall()
        else:
            marks = ", ".join(["?"] * len(wanted))
            heads = driver.execute(_SQLITE_HEADS.format(marks), wanted).fetchall()
        if len(heads) != len(names):
            raise LookupError("a mailbox head is missing")
        enqueued_at = self._stamp(now)
        rows: list[tuple[Any, ...]] = []
        cursors: dict[str, list[int]] = {}
        moved: list[tuple[int, int]] = []
        for party_id, head_cursor, acked_cursor, closed in heads:
            party = names[party_id]
            state = MailboxState(party, head_cursor, acked_cursor, bool(closed))
            if state.closed and skip_closed:
                continue
            state, handed_out = mailbox.enqueue(state, len(items[party]))
            moved.append((party_id, state.head_cursor))
            cursors[party] = list(handed_out)
            rows.extend(
                (party_id, cursor, kind.value, payload, enqueued_at)
                for cursor, (kind, payload) in zip(handed_out, items[party], strict=True)
            )
        if not moved:  # else rows too: each party moved gets items
            return cursors
        if self._postgres:
            with driver.pipeline(), driver.cursor() as cursor:  # one round trip for both
                cursor.execute(
                    _PG_MOVE_HEADS, ([party_id for party_id, _ in moved], [h for _, h in moved])
                )
                cursor.executemany(_PG_INSERT_ITEMS, rows)
        else:
            driver.executemany(_SQLITE_MOVE_HEAD, [(h, party_id) for party_id, h in moved])
            driver.executemany(_SQLITE_INSERT_ITEMS, rows)
        return cursors


def _prefixes(tokens: Collection[bytes]) -> Prefixes:
    """``prefix64`` of each token, as an array: one buffer read by numpy rather than an
    integer built per token. A token shorter than a prefix is a ``ValueError``."""
    heads = b"".join(token[:8] for token in tokens)
    if len(heads) != 8 * len(tokens):
        raise ValueError("a token is shorter than its prefix")
    return np.frombuffer(heads, dtype=">i8").astype(np.int64)


def _array(values: Iterable[int]) -> str:
    """Integers as a PostgreSQL array literal: one text parameter, rather than an array
    the driver dumps element by element."""
    return f"{{{','.join(map(str, values))}}}"


def _copy_rows(entries: Sequence[Entry], parties: Mapping[str, int]) -> list[bytes]:
    """Each of ``entries`` as a row of a binary ``COPY`` (without the stream's signature and
    trailer), in the column order and types of ``_ENTRY_COLUMNS`` and ``_ENTRY_COPY_TYPES``."""
    pack = _COPY_ROW.pack
    epoch = _EPOCH
    rows: list[bytes] = []
    append = rows.append
    for entry in entries:
        token = entry.token
        ref = entry.signal_ref
        if len(token) != matching.TOKEN_BYTES or len(ref) != matching.REF_BYTES:
            raise ValueError("token entries hold 32-byte tokens and 16-byte refs")
        since = entry.expires_at - epoch  # aware datetimes only
        micros = since // _MICROSECOND
        sealed = entry.sealed_attributes
        row = pack(
            10,
            8, int.from_bytes(token[:8], "big", signed=True),
            4, parties[entry.party],
            2, ref[0],
            8, int.from_bytes(ref[:8], "big", signed=True),
            32, token,
            16, ref,
            8, entry.key_epoch,
            8, micros - _PG_EPOCH_MICROS,
            4, since.days // _EXPIRY_BUCKET_DAYS,
            -1 if sealed is None else len(sealed),
        )  # fmt: skip
        append(row if sealed is None else row + sealed)
    return rows


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
