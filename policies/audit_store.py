"""The audit log in a database: the node's and the broker's ``audit_entries`` and
``audit_checkpoints`` tables, and appending to them inside the caller's transaction.

An adapter, like ``database``: it imports SQLAlchemy; :mod:`samenloop.policies.audit`
holds the log's logic. Both stores declare the tables with the mixins below (same
names, same constraints) and their migrations create them; the functions here
address them by name, so the ``audit`` CLI reads either database without
importing the node or the broker.

An entry is appended in the transaction of the change it records, so the two
commit together or not at all. Appenders serialize on the log's head:
SQLite writers already do (``BEGIN IMMEDIATE``); on PostgreSQL :func:`append`
takes a transaction-scoped advisory lock first. Append last in a transaction,
after any other lock, so the lock is held briefly and always taken last.
"""

from __future__ import annotations

import abc
import contextlib
import json
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Connection,
    Engine,
    LargeBinary,
    String,
    Text,
    column,
    insert,
    literal,
    select,
    table,
    text,
)
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from samenloop.policies import audit
from samenloop.policies.audit import (
    AuditEntry,
    AuditEvent,
    AuditKind,
    AuditSummary,
    ChainHead,
    Checkpoint,
    CheckpointSigner,
)
from samenloop.policies.database import UtcDateTime, sqlite_stamp
from samenloop.policies.errors import AuditMismatch, InvalidInput

__all__ = [
    "AUDIT_LOCK",
    "AuditCheckpointColumns",
    "AuditEntryColumns",
    "append",
    "append_many",
    "checkpoint",
    "checkpoints",
    "export_lines",
    "head",
    "read",
    "verify",
]

#: Key of the PostgreSQL advisory lock that serializes appends ("smlaudit").
AUDIT_LOCK: Final = 0x736D6C6175646974
MAX_KIND_CHARS: Final = 32
MAX_SUBJECT_CHARS: Final = audit.MAX_SUBJECT_IDS * (audit.MAX_SUBJECT_ID_CHARS + 1)
MAX_DETAILS_CHARS: Final = 4096
MAX_SIGNED_BYTES: Final = 1024
_COLUMNS: Final = ("seq", "at", "kind", "actor", "subject", "details", "prev_hash", "hash")
# Plain SQL for PostgreSQL, where appends ride along the broker's ingest (constants only).
_PG_LOCK: Final = "SELECT pg_advisory_xact_lock(%s)"
_HEAD: Final = "SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1"
_SQLITE_INSERT: Final = (
    f"INSERT INTO audit_entries ({', '.join(_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join(['?'] * len(_COLUMNS))})"
)
_PG_INSERT: Final = (
    f"INSERT INTO audit_entries ({', '.join(_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join(['%s'] * len(_COLUMNS))})"
)
_PG_ROW: Final = "(%s::bigint, %s::timestamptz, %s, %s, %s, %s, %s::bytea, %s::bytea)"
#: Where each daemon believes its log ends, so that an append on PostgreSQL can be sent
#: in one round trip: inserted only if the log still ends there (see ``_append_postgresql``).
_HEADS: weakref.WeakKeyDictionary[Engine, ChainHead] = weakref.WeakKeyDictionary()


# --- the tables, as both stores declare them ----------------------------------------------


class AuditEntryColumns:
    """Columns and constraints of ``audit_entries``: one row per entry, in ``seq`` order.

    ``subject`` holds the entry's hex ids separated by spaces; ``details`` the
    canonical JSON of its details. ``prev_hash`` is unique as well as ``hash``:
    no entry can have two successors, so the chain cannot fork.
    """

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(MAX_KIND_CHARS))
    actor: Mapped[str] = mapped_column(String(audit.MAX_ACTOR_CHARS))
    subject: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[bytes] = mapped_column(unique=True)
    hash: Mapped[bytes] = mapped_column(unique=True)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:  # noqa: N805 (a class-level directive)
        return (
            CheckConstraint("seq >= 1", name="seq_positive"),
            CheckConstraint("length(kind) >= 1", name="kind_not_empty"),
            CheckConstraint("length(actor) >= 1", name="actor_not_empty"),
            CheckConstraint(f"length(subject) <= {MAX_SUBJECT_CHARS}", name="subject_size"),
            CheckConstraint(
                f"length(details) >= 2 AND length(details) <= {MAX_DETAILS_CHARS}",
                name="details_size",
            ),
            CheckConstraint("length(prev_hash) = 32", name="prev_hash_size"),
            CheckConstraint("length(hash) = 32", name="hash_size"),
        )


class AuditCheckpointColumns:
    """Columns and constraints of ``audit_checkpoints``: the owner's signed heads, by size."""

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    issued_at: Mapped[datetime]
    # A serialized Signed AuditCheckpoint.
    signed: Mapped[bytes]

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:  # noqa: N805 (a class-level directive)
        return (
            CheckConstraint("size >= 1", name="size_positive"),
            CheckConstraint(
                f"length(signed) >= 1 AND length(signed) <= {MAX_SIGNED_BYTES}",
                name="signed_size",
            ),
        )


# The same tables by name, for reading and writing without either store's models.
_ENTRIES = table(
    "audit_entries",
    column("seq", BigInteger()),
    column("at", UtcDateTime()),
    column("kind", String()),
    column("actor", String()),
    column("subject", Text()),
    column("details", Text()),
    column("prev_hash", LargeBinary()),
    column("hash", LargeBinary()),
)
_CHECKPOINTS = table(
    "audit_checkpoints",
    column("size", BigInteger()),
    column("issued_at", UtcDateTime()),
    column("signed", LargeBinary()),
)
_E = _ENTRIES.c
_C = _CHECKPOINTS.c


# --- writing ----------------------------------------------------------------------------------


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})


def head(conn: Connection) -> AuditEntry | None:
    """The newest entry (``None``: the log is empty)."""
    row = conn.execute(select(_ENTRIES).order_by(_E.seq.desc()).limit(1)).first()
    return None if row is None else _entry(row)


def append(
    conn: Connection,
    *,
    kind: AuditKind,
    actor: str,
    subject: Iterable[str] = (),
    details: Mapping[str, object] | None = None,
    now: datetime,
) -> AuditEntry:
    """Append one entry within the caller's transaction; returns it.

    ``subject`` holds opaque hex ids only; ``details`` non-identifying facts
    (see :func:`samenloop.policies.audit.check_details`).
    """
    event = AuditEvent(kind, actor, audit.check_subject(subject), audit.check_details(details))
    return append_many(conn, [event], now=now)[0]


def _locked_head(conn: Connection) -> ChainHead | None:
    """Lock the log (PostgreSQL) and read where it ends: on PostgreSQL in one round trip."""
    driver: Any = conn.connection.driver_connection  # plain SQL: this runs in every batch
    if conn.dialect.name != "postgresql":
        row = driver.execute(_HEAD).fetchone()
    else:
        with driver.pipeline():
            driver.execute(_PG_LOCK, (AUDIT_LOCK,))
            cursor = driver.execute(_HEAD)
        row = cursor.fetchone()
    return None if row is None else ChainHead(row[0], bytes(row[1]))


def append_many(
    conn: Connection, events: Sequence[AuditEvent], *, now: datetime
) -> list[AuditEntry]:
    """Append several entries in order, in one statement, within the caller's transaction.

    On PostgreSQL usually one round trip (see :func:`_append_postgresql`): cheap
    enough to run in every ingest batch.
    """
    if not events:
        return []
    if conn.dialect.name == "postgresql":
        return _append_postgresql(conn, events, now)
    entries = _chain(_locked_head(conn), events, now)
    driver: Any = conn.connection.driver_connection  # plain SQL: this runs in every batch
    driver.executemany(_SQLITE_INSERT, [_row(e, sqlite_stamp) for e in entries])
    return entries


def _chain(
    head: AuditEntry | ChainHead | None, events: Sequence[AuditEvent], now: datetime
) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    last = head
    for event in events:
        last = audit.next_entry(
            last,
            kind=event.kind,
            actor=event.actor,
            subject=event.subject,
            details=event.details,
            now=now,
        )
        entries.append(last)
    return entries


def _row(e: AuditEntry, stamp: Callable[[datetime], object] | None = None) -> tuple[object, ...]:
    """An entry's column values; ``stamp`` converts its time for the driver (SQLite)."""
    return (
        e.seq,
        e.at if stamp is None else stamp(e.at),
        e.kind.value,
        e.actor,
        " ".join(e.subject),
        audit.details_json(e.details),
        e.prev_hash,
        e.hash,
    )


def _append_postgresql(
    conn: Connection, events: Sequence[AuditEvent], now: datetime
) -> list[AuditEntry]:
    """Chain the entries onto the head this process last wrote, and send the lock and an
    insert that takes effect only if the log still ends at that head, in one pipeline.

    Another writer (a second broker replica), a rolled-back transaction or a fresh
    process make the guess wrong: the insert then adds nothing and the entries are
    chained again onto the head read under the lock, which the transaction holds by
    then. Either way the chain is exactly what the single-writer path would write.
    """
    driver: Any = conn.connection.driver_connection
    engine = conn.engine
    guess = _HEADS.get(engine)
    if guess is not None:
        entries = _chain(guess, events, now)
        values = ", ".join([_PG_ROW] * len(entries))
        statement = (
            f"INSERT INTO audit_entries ({', '.join(_COLUMNS)})"  # noqa: S608
            f" SELECT * FROM (VALUES {values}) AS v({', '.join(_COLUMNS)})"
            " WHERE (SELECT hash FROM audit_entries ORDER BY seq DESC LIMIT 1) = %s::bytea"
        )
        params = [value for e in entries for value in _row(e)] + [guess.hash]
        with driver.pipeline():
            driver.execute(_PG_LOCK, (AUDIT_LOCK,))
            cursor = driver.execute(statement, params)
        if cursor.rowcount == len(entries):
            _HEADS[engine] = ChainHead(entries[-1].seq, entries[-1].hash)
            return entries
    entries = _chain(_locked_head(conn), events, now)
    with driver.cursor() as cursor:
        cursor.executemany(_PG_INSERT, [_row(e) for e in entries])
    _HEADS[engine] = ChainHead(entries[-1].seq, entries[-1].hash)
    return entries


def checkpoint(conn: Connection, signer: CheckpointSigner, *, now: datetime) -> Checkpoint | None:
    """Sign and store a checkpoint of the current head, within the caller's transaction.

    Returns ``None`` (and stores nothing) when the log is empty or its head is
    already checkpointed.
    """
    _lock(conn)
    newest = head(conn)
    if newest is None:
        return None
    signed_size = conn.execute(select(_C.size).order_by(_C.size.desc()).limit(1)).scalar()
    if signed_size == newest.seq:
        return None
    signed = audit.sign_checkpoint(signer, size=newest.seq, head_hash=newest.hash, now=now)
    made = audit.parse_checkpoint(signed)
    conn.execute(
        insert(_CHECKPOINTS).values(size=made.size, issued_at=made.issued_at, signed=signed)
    )
    return made


# --- reading ----------------------------------------------------------------------------------


def _entry(row: Any) -> AuditEntry:
    """An entry as stored; a row that cannot even be read was altered, and says so."""
    try:
        details = json.loads(row.details)
        return AuditEntry(
            seq=row.seq,
            at=row.at,
            kind=AuditKind(row.kind),
            actor=row.actor,
            subject=tuple(row.subject.split()),
            details=audit.check_details(details),
            prev_hash=bytes(row.prev_hash),
            hash=bytes(row.hash),
        )
    except (ValueError, TypeError, InvalidInput):
        raise AuditMismatch(
            f"entry {row.seq} was altered: it cannot be read",
            seq=row.seq,
            reason="audit.altered",
        ) from None


def read(
    conn: Connection,
    *,
    kind: AuditKind | None = None,
    actor: str | None = None,
    subject: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int = 0,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Entries in ``seq`` order after ``after``, matching every filter given.

    ``since`` is inclusive, ``until`` exclusive; ``subject`` is one hex id.
    """
    query = select(_ENTRIES).where(_E.seq > after).order_by(_E.seq)
    if kind is not None:
        query = query.where(_E.kind == AuditKind(kind).value)
    if actor is not None:
        query = query.where(_E.actor == actor)
    if subject is not None:
        (subject,) = audit.check_subject([subject])
        padded = literal(" ") + _E.subject + literal(" ")
        query = query.where(padded.like(f"% {subject} %"))
    if since is not None:
        query = query.where(_E.at >= since)
    if until is not None:
        query = query.where(_E.at < until)
    if limit is not None:
        query = query.limit(limit)
    return [_entry(row) for row in conn.execute(query).all()]


def checkpoints(conn: Connection) -> list[bytes]:
    """The stored checkpoints (serialized ``Signed``), smallest first."""
    return [bytes(s) for s in conn.execute(select(_C.signed).order_by(_C.size)).scalars()]


def verify(conn: Connection, owner_public_key: bytes, *, owner: str) -> AuditSummary:
    """Verify the stored log and its checkpoints; :class:`AuditMismatch` at the first fault."""
    return audit.verify_log(read(conn), checkpoints(conn), owner_public_key, owner=owner)


def export_lines(conn: Connection, *, owner: str, now: datetime) -> Iterator[str]:
    """The export of the stored log, line by line (without newlines), read in one transaction
    by the caller: header, entries, checkpoints."""
    yield audit.header_line(owner, now)
    for entry in read(conn):
        yield audit.entry_line(entry)
    for signed in checkpoints(conn):
        yield audit.checkpoint_line(signed)


class AuditLog(abc.ABC):
    """The audit-log methods of a daemon's store, over the store's own transactions.

    The node's and the broker's stores mix this in and say how to open a write
    transaction and a read (:meth:`_audit_write`, :meth:`_audit_read`); ``_owner``
    is the log's owner (a party id, or the broker's id) and the default actor.
    """

    _owner: str

    @abc.abstractmethod
    def _audit_write(self) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction on the store's engine, committed on leaving."""

    @abc.abstractmethod
    def _audit_read(self) -> contextlib.AbstractContextManager[Connection]:
        """A read-only transaction on the store's engine."""

    def append_audit(
        self,
        conn: Connection,
        *,
        kind: AuditKind,
        subject: Iterable[str] = (),
        details: Mapping[str, object] | None = None,
        actor: str | None = None,
        now: datetime,
    ) -> AuditEntry:
        """Append an entry inside a transaction of this store (``conn``), so that it commits
        with the change it records. ``actor`` defaults to the owner; ``subject`` holds
        opaque hex ids only, ``details`` non-identifying facts."""
        return append(
            conn,
            kind=kind,
            actor=self._owner if actor is None else actor,
            subject=subject,
            details=details,
            now=_aware(now),
        )

    def audit_append(
        self,
        *,
        kind: AuditKind,
        subject: Iterable[str] = (),
        details: Mapping[str, object] | None = None,
        actor: str | None = None,
        now: datetime,
    ) -> AuditEntry:
        """Append an entry in a transaction of its own (see :meth:`append_audit`)."""
        with self._audit_write() as conn:
            return self.append_audit(
                conn, kind=kind, subject=subject, details=details, actor=actor, now=now
            )

    def audit_checkpoint(self, signer: CheckpointSigner, *, now: datetime) -> Checkpoint | None:
        """Sign and store a checkpoint of the log's head (``None`` if there is nothing new)."""
        with self._audit_write() as conn:
            return checkpoint(conn, signer, now=_aware(now))

    def audit_entries(
        self,
        *,
        kind: AuditKind | None = None,
        actor: str | None = None,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries in order, filtered (``since`` inclusive, ``until`` exclusive)."""
        with self._audit_read() as conn:
            return read(
                conn,
                kind=kind,
                actor=actor,
                subject=subject,
                since=since,
                until=until,
                limit=limit,
            )

    def audit_checkpoints(self) -> list[bytes]:
        """The stored checkpoints (serialized ``Signed``), smallest first."""
        with self._audit_read() as conn:
            return checkpoints(conn)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must carry a time zone")
    return now.astimezone(UTC)
