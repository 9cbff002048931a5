"""What every repository of the node shares: one engine, one transaction helper.

Each capability keeps its own repository beside its desk (``signals/store.py``,
``tokens/store.py``, ``disclosure/store.py``, ``picture/store.py``, ``cases/store.py``,
``daemon/covenants.py``); each extends :class:`Database`, which holds what several of them
need *inside their own transactions*, so that a change spanning two capabilities is still
one transaction:

* the transaction helpers (``_write``, ``_read``) and the dialect helpers (``_insert``,
  ``_among``) over the one engine;
* the mailbox cursor: every mailbox item, whatever it carries (a hit notice, a
  disclosure, a picture share, a case change, a covenant), is stored with the cursor
  advance in the transaction that handles it (``_lock_inbox``, ``_advance_inbox``);
* the envelope outbox, which disclosure, the picture and cases queue sealed envelopes in
  (``_queue_envelope``) and the uplink sends from;
* the audit log (:class:`~samenloop.policies.audit_store.AuditLog`), which every
  transaction appends to;
* the value checks every repository uses, naming the offending field.

Every public method is one database transaction and returns only after it committed, so a
crash at any point loses nothing acknowledged and duplicates nothing. Randomness (signal
refs, batch ids) is injectable, time is always an argument.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    String,
    any_,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from samenloop.node.daemon import models
from samenloop.node.daemon.envelopes import Envelope
from samenloop.node.signals import models as signal_models
from samenloop.policies import audit_store
from samenloop.policies.audit import AuditKind
from samenloop.policies.database import READ_ONLY
from samenloop.policies.errors import InvalidInput
from samenloop.v1 import common_pb2

__all__ = [
    "CHUNK",
    "DEFAULT_PAGE",
    "ID_BYTES",
    "INBOX_ROW",
    "MAX_TEXT_BYTES",
    "MIGRATIONS",
    "MONTH",
    "Database",
    "PendingEnvelope",
    "SealedEnvelope",
    "audit_names",
    "check_bytes",
    "check_text",
    "chunks",
    "details_json",
    "month_bounds",
    "utc",
]

MIGRATIONS: Final = "samenloop.node.daemon.migrations"
"""The package of the node's Alembic migrations, for ``policies.database.upgrade``."""

ID_BYTES: Final[int] = common_pb2.LIMITS_ID_BYTES
MAX_TEXT_BYTES: Final[int] = common_pb2.LIMITS_MAX_TEXT_BYTES
DEFAULT_PAGE: Final = 100
#: Values per "IN (...)": well under SQLite's bound-parameter limit.
CHUNK: Final = 1000
#: The one row of the inbox: the mailbox cursor and the hit feed's last sequence.
INBOX_ROW: Final = 1
#: A month as the picture and the case activity write it.
MONTH: Final = re.compile(r"\d{4}-(0[1-9]|1[0-2])")

# Key of the PostgreSQL advisory lock that serializes outbox writes ("smlpnode"), so
# that batches commit in the order of their ids, the order they are sent in.
_OUTBOX_LOCK: Final = 0x736D6C706E6F6465
# Element types of the PostgreSQL arrays that ``_among`` binds, by column type.
_ARRAY_TYPES: Final[dict[type[Any], Any]] = {
    BigInteger: BigInteger(),
    Integer: BigInteger(),
    String: String(),
    LargeBinary: LargeBinary(),
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True, repr=False)
class SealedEnvelope:
    """A serialized ``Sealed`` for the envelope outbox, with its idempotency id."""

    message_id: bytes
    recipient: str
    sealed: bytes

    def __repr__(self) -> str:
        return f"SealedEnvelope(recipient={self.recipient!r}, bytes={len(self.sealed)})"

    @classmethod
    def of(cls, envelope: Envelope) -> SealedEnvelope:
        """An envelope as the outbox keeps it."""
        return cls(envelope.message_id, envelope.recipient, envelope.sealed.SerializeToString())


@dataclass(frozen=True, slots=True)
class PendingEnvelope:
    """An envelope in the outbox, waiting for the broker's acknowledgement."""

    message_id: bytes
    recipient: str
    sealed: bytes


# --- value checks every repository uses --------------------------------------------


def utc(moment: datetime, name: str = "now") -> datetime:
    """``moment`` in UTC; a naive time is a programming error, not bad input."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone")
    return moment.astimezone(UTC)


def check_text(value: object, name: str, limit: int, *, empty_ok: bool = False) -> str:
    """``value`` if it is text of at most ``limit`` characters, else ``InvalidInput``."""
    if not isinstance(value, str):
        raise InvalidInput("must be text", field=name)
    if not value and not empty_ok:
        raise InvalidInput("must not be empty", field=name)
    if len(value) > limit:
        raise InvalidInput(f"at most {limit} characters", field=name)
    return value


def check_bytes(value: object, size: int, name: str) -> bytes:
    """``value`` if it is exactly ``size`` bytes, else ``InvalidInput`` naming ``name``."""
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidInput(f"must be {size} bytes", field=name)
    return value


def details_json(details: Mapping[str, str]) -> str:
    """Details as stored: canonical JSON, so equal details are equal text."""
    return json.dumps(dict(details), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def chunks(values: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in slices of at most ``size``, for ``IN`` lists."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def audit_names(names: Sequence[str]) -> str:
    """Field names for an audit detail (at most 64 characters; else just how many)."""
    joined = ",".join(names)
    return joined if len(joined) <= 64 else f"{len(names)} fields"


def month_bounds(first_month: str, last_month: str) -> tuple[datetime, datetime]:
    """The start of ``first_month`` and the start of the month after ``last_month`` (UTC)."""
    for name, month in (("first_month", first_month), ("last_month", last_month)):
        if not MONTH.fullmatch(month):
            raise InvalidInput("a month is written YYYY-MM", field=name)
    start = datetime(int(first_month[:4]), int(first_month[5:]), 1, tzinfo=UTC)
    year, number = int(last_month[:4]), int(last_month[5:])
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


class Database(audit_store.AuditLog):
    """The engine, the transaction helpers, the mailbox cursor, the envelope outbox and
    the audit log: the base of every repository of the node."""

    def __init__(
        self,
        engine: Engine,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        owner: str = "node",
    ) -> None:
        """``owner`` is the node's party id: the actor of the audit entries the store
        records on its own (signals added, withdrawn and expired, hits stored)."""
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._random = random_bytes
        self._owner = owner

    @property
    def engine(self) -> Engine:
        """The one engine every repository of this node writes through."""
        return self._engine

    # --- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self, *, outbox: bool = False) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            if outbox and self._postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _OUTBOX_LOCK})
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**READ_ONLY)
            with conn.begin():
                yield conn

    def _among(self, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
        """``column IN values``; on PostgreSQL ``= ANY(array)``: one parameter, so a
        prepared statement's generic plan still looks the values up by index."""
        if self._postgres:
            array = postgresql.ARRAY(_ARRAY_TYPES[type(column.type)])
            return cast(ColumnElement[bool], column == any_(bindparam(None, list(values), array)))
        return cast(ColumnElement[bool], column.in_(values))

    def _insert(self, model: type[models.Base]) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(model)

    @contextlib.contextmanager
    def _audit_write(self) -> Iterator[Connection]:
        with self._write() as conn:
            yield conn

    def _audit_read(self) -> contextlib.AbstractContextManager[Connection]:
        return self._read()

    # --- the mailbox cursor -------------------------------------------------------------

    def mailbox_cursor(self) -> int:
        """The last broker mailbox cursor whose item is processed (0: none yet)."""
        with self._read() as conn:
            found = conn.execute(
                select(models.Inbox.mailbox_cursor).where(models.Inbox.id == INBOX_ROW)
            ).scalar_one_or_none()
        return found or 0

    def advance_cursor(self, cursor: int) -> int:
        """Record a processed mailbox item that carried no hit; the cursor never goes back.
        Returns the cursor now stored."""
        if cursor < 0:
            raise InvalidInput("a cursor is not negative", field="cursor")
        with self._write() as conn:
            stored_cursor, last_feed_seq = self._lock_inbox(conn)
            if cursor > stored_cursor:
                self._save_inbox(conn, cursor, last_feed_seq)
                return cursor
        return stored_cursor

    def note_set_aside(self, cursor: int, kind: str, size: int, *, now: datetime) -> None:
        """Record that the broker set aside the mailbox item at ``cursor`` (too large to
        deliver: ``kind`` and ``size`` as its marker says), and advance past it: the node
        does not get that item, and its audit log says so."""
        if cursor < 0:
            raise InvalidInput("a cursor is not negative", field="cursor")
        now = utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(
                conn,
                kind=AuditKind.MAILBOX_ITEM_SET_ASIDE,
                details={"cursor": cursor, "kind": kind, "bytes": size},
                now=now,
            )

    def _lock_inbox(self, conn: Connection) -> tuple[int, int]:
        """The inbox row, created if missing and locked until the transaction ends."""
        conn.execute(
            self._insert(models.Inbox)
            .values(id=INBOX_ROW, mailbox_cursor=0, last_feed_seq=0)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = conn.execute(
            select(models.Inbox.mailbox_cursor, models.Inbox.last_feed_seq)
            .where(models.Inbox.id == INBOX_ROW)
            .with_for_update()
        ).one()
        return row.mailbox_cursor, row.last_feed_seq

    def _advance_inbox(self, conn: Connection, cursor: int) -> None:
        """Lock the inbox row and move its mailbox cursor up to ``cursor``, never back: a
        mailbox item handled without a change to the hit feed."""
        stored_cursor, last_feed_seq = self._lock_inbox(conn)
        if cursor > stored_cursor:
            self._save_inbox(conn, cursor, last_feed_seq)

    def _save_inbox(self, conn: Connection, cursor: int, last_feed_seq: int) -> None:
        conn.execute(
            update(models.Inbox)
            .where(models.Inbox.id == INBOX_ROW)
            .values(mailbox_cursor=cursor, last_feed_seq=last_feed_seq)
        )

    # --- the hit notice the other capabilities start from --------------------------------

    def hit_notice(self, group_id: bytes) -> bytes | None:
        """The latest signed notice (a serialized ``Signed``) this node holds of a hit
        group, as the broker signed it: what a disclosure request and a case start from."""
        with self._read() as conn:
            found = conn.execute(
                select(signal_models.Hit.notice).where(signal_models.Hit.group_id == group_id)
            ).scalar_one_or_none()
        return None if found is None else bytes(found)

    # --- the envelope outbox ------------------------------------------------------------

    def envelope_outbox(self, limit: int = DEFAULT_PAGE) -> list[PendingEnvelope]:
        """Envelopes not yet acknowledged by the broker, oldest first, unchanged."""
        e = models.EnvelopeOutboxItem
        with self._read() as conn:
            rows = conn.execute(
                select(e.client_message_id, e.recipient, e.sealed)
                .where(e.sent_at.is_(None), e.rejected_at.is_(None))
                .order_by(e.id)
                .limit(limit)
            ).all()
        return [PendingEnvelope(r.client_message_id, r.recipient, r.sealed) for r in rows]

    def envelopes_waiting(self) -> int:
        """How many envelopes wait for the broker's acknowledgement (for the metrics)."""
        e = models.EnvelopeOutboxItem
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(e.sent_at.is_(None), e.rejected_at.is_(None))
                ).scalar_one()
            )

    def settle_envelope(self, message_id: bytes, *, sent: bool, now: datetime) -> bool:
        """Mark an envelope acknowledged (``sent``) or refused for good by the broker."""
        e = models.EnvelopeOutboxItem
        column = "sent_at" if sent else "rejected_at"
        with self._write() as conn:
            result = conn.execute(
                update(e)
                .where(
                    e.client_message_id == message_id,
                    e.sent_at.is_(None),
                    e.rejected_at.is_(None),
                )
                .values({column: utc(now)})
            )
        return result.rowcount == 1

    def _queue_envelope(self, conn: Connection, envelope: SealedEnvelope, now: datetime) -> None:
        check_bytes(envelope.message_id, ID_BYTES, "client_message_id")
        conn.execute(
            insert(models.EnvelopeOutboxItem).values(
                client_message_id=envelope.message_id,
                recipient=envelope.recipient,
                sealed=envelope.sealed,
                created_at=now,
            )
        )
