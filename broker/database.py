"""What every repository of the broker shares: one engine, one transaction helper.

The broker's store is one repository per capability (:mod:`token_store` with its
:mod:`token_index`, :mod:`mailbox_store`, :mod:`covenant_store`), composed by
:class:`~samenloop.broker.store.BrokerStore`. Each holds the same :class:`BrokerDatabase`,
so that an operation spanning two of them (matching that delivers signed notices into
mailboxes, a covenant version that removes a party) runs in one transaction: a repository
lends its helpers a :class:`Tx`, never opens a second one.

What the database holds, for all of them: the engine and the transaction helpers
(:meth:`BrokerDatabase.write`, :meth:`BrokerDatabase.read`); the parties (their ids are
created on first sight, with their mailbox head and quota rows, and cached only once their
transaction committed); the audit log, which every write appends to last; the timestamp
type's own converters for the hot path's plain SQL.

What is learnt in a transaction reaches memory only after its commit: a write's
:meth:`Tx.after_commit` hooks run once it committed, in the order they were added (a
rolled-back batch teaches nothing); the :meth:`BrokerDatabase.after_rollback` hooks run
after any write that failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from samenloop.broker import matching
from samenloop.broker.models import MailboxHead, Party, PartyEnvelopeUsage, PartyUsage, TokenEntry
from samenloop.policies import audit_store
from samenloop.policies.audit import AuditEvent
from samenloop.policies.database import READ_ONLY, sqlite_stamp
from samenloop.policies.errors import InvalidInput

MIGRATIONS: Final = "samenloop.broker.migrations"
"""The package of the broker's Alembic migrations, for ``policies.database.upgrade``."""

ID_BYTES: Final = 16
# Key of the PostgreSQL advisory lock that serializes matching ("samenlop").
_MATCHING_LOCK: Final = 0x73616D656E6C6F70
#: Plain SQL of the matching lock on PostgreSQL (constants only, never built from input).
PG_MATCHING_LOCK: Final = (
    f"SELECT pg_advisory_xact_lock({_MATCHING_LOCK}),"
    " set_config('enable_seqscan', 'off', true),"
    " set_config('jit', 'off', true),"
    " set_config('max_parallel_workers_per_gather', '0', true)"
)


def _same(value: Any) -> Any:
    return value


def utc(now: datetime) -> datetime:
    """``now`` in UTC; a naive time is a programming error, not bad input."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must carry a time zone")
    return now.astimezone(UTC)


def check_id(value: bytes, name: str) -> None:
    """``InvalidInput`` naming ``name`` unless ``value`` is an id of ``ID_BYTES``."""
    if len(value) != ID_BYTES:
        raise InvalidInput(f"{name} must be {ID_BYTES} bytes", field=name)


def check_party(party: str, name: str = "party") -> None:
    """``InvalidInput`` naming ``name`` unless ``party`` is a party id of a valid size."""
    if not 0 < len(party.encode("utf-8")) <= matching.MAX_PARTY_ID_BYTES:
        raise InvalidInput(f"party id must be 1..{matching.MAX_PARTY_ID_BYTES} bytes", field=name)


@dataclass
class Tx:
    """One write transaction: its connection, the party ids it created, and what memory
    learns once it committed."""

    conn: Connection
    new_parties: dict[str, int] = field(default_factory=dict)
    _after_commit: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once this transaction committed (never if it rolls back)."""
        self._after_commit.append(hook)

    def committed(self) -> None:
        """Run the after-commit hooks, in the order they were added (``BrokerDatabase.write``
        calls it once the transaction committed)."""
        for hook in self._after_commit:
            hook()


class BrokerDatabase(audit_store.AuditLog):
    """The engine, the transaction helpers, the parties and the audit log: what every
    repository of the broker holds, the same instance for all of them."""

    def __init__(self, engine: Engine, *, owner: str = "broker") -> None:
        """``owner`` is the broker's id: the actor of the audit entries of its own doing."""
        self.engine: Final = engine
        self._owner = owner  # the audit log's (AuditLog) default actor
        self.postgres: Final = engine.dialect.name == "postgresql"
        # Party ids never change once committed: cache them both ways.
        self._party_ids: dict[str, int] = {}
        self._party_names: dict[int, str] = {}
        self._after_rollback: list[Callable[[], None]] = []
        # The timestamp type's own converters, for the hot path's plain SQL.
        dialect = engine.dialect
        timestamp = TokenEntry.__table__.c.expires_at.type.dialect_impl(dialect)
        to_database = timestamp.bind_processor(dialect)
        from_database = timestamp.result_processor(dialect, None)
        self.stamp: Callable[[datetime], Any] = (
            sqlite_stamp if dialect.name == "sqlite" else to_database or _same
        )
        self.read_time: Callable[[Any], Any] = from_database or _same

    @property
    def owner(self) -> str:
        """The broker's id, the actor of the audit entries of its own doing."""
        return self._owner

    def after_rollback(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` after every write transaction that fails (for caches that a
        rolled-back write may have made stale)."""
        self._after_rollback.append(hook)

    # --- transactions -------------------------------------------------------------

    @contextlib.contextmanager
    def write(self, *, matching: bool = False, lock: bool = True) -> Iterator[Tx]:
        """A write transaction; ``matching`` takes the matching lock first, unless ``lock``
        is false because the caller sends it itself (PostgreSQL ``submit``: in its pipeline).

        Matching writes are serialized (SQLite: every write is ``BEGIN IMMEDIATE``;
        PostgreSQL: a transaction-scoped advisory lock), so two batches that meet on one
        token cannot both miss the hit.
        """
        with self.engine.begin() as conn:
            if matching and lock and self.postgres:
                # Matching looks rows up by key, a few thousand at most: never let
                # missing or stale statistics turn a lookup into a full scan, or
                # make one look costly enough to be compiled (JIT) first or to be
                # worth starting parallel workers for (milliseconds, at 10M tokens).
                driver = conn.connection.driver_connection
                assert driver is not None
                driver.execute(PG_MATCHING_LOCK)
            tx = Tx(conn)
            # The party ids it creates are cached first, once it committed.
            tx.after_commit(partial(self.remember, tx.new_parties))
            try:
                yield tx
            except BaseException:
                for hook in self._after_rollback:
                    hook()
                raise
        # Reached only after the commit: a rolled-back write teaches nothing.
        tx.committed()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: it runs beside writers, never waiting for one."""
        with self.engine.connect() as conn:
            conn.execution_options(**READ_ONLY)
            with conn.begin():
                yield conn

    def driver(self, tx: Tx) -> Any:
        """The transaction's driver connection (psycopg or sqlite3), for the hot path's
        plain SQL: SQLAlchemy's own work per statement would cost as much as SQLite's."""
        driver = tx.conn.connection.driver_connection
        assert driver is not None
        return driver

    def insert(self, model: type[Any]) -> Any:
        """The dialect's ``INSERT`` of ``model`` (for ``ON CONFLICT``)."""
        return (postgresql.insert if self.postgres else sqlite.insert)(model)

    # --- parties ------------------------------------------------------------------

    def remember(self, parties: dict[str, int]) -> None:
        """Cache committed party ids (``write`` does, after each commit; the benchmark's
        preload, which writes outside ``write``, itself)."""
        for name, party_id in parties.items():
            self._party_ids[name] = party_id
            self._party_names[party_id] = name

    def party(self, conn: Connection, party: str) -> int | None:
        """A party's id if it exists (committed), creating nothing."""
        cached = self._party_ids.get(party)
        if cached is not None:
            return cached
        found = conn.execute(select(Party.id).where(Party.name == party)).scalar_one_or_none()
        return found

    def ids(self, tx: Tx, names: Iterable[str]) -> dict[str, int]:
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
                check_party(name)
            tx.conn.execute(
                self.insert(Party).on_conflict_do_nothing(index_elements=["name"]),
                [{"name": name} for name in absent],
            )
            known = {name: party_id for name, party_id in tx.conn.execute(query)}
            tx.conn.execute(
                self.insert(MailboxHead).on_conflict_do_nothing(index_elements=["party_id"]),
                [
                    {"party_id": known[name], "head_cursor": 0, "acked_cursor": 0, "closed": False}
                    for name in absent
                ],
            )
            tx.conn.execute(
                self.insert(PartyUsage).on_conflict_do_nothing(index_elements=["party_id"]),
                [
                    {"party_id": known[name], "day": 0, "submitted": 0, "held": 0}
                    | {"notice_bytes": 0}
                    for name in absent
                ],
            )
            tx.conn.execute(
                self.insert(PartyEnvelopeUsage).on_conflict_do_nothing(index_elements=["party_id"]),
                [
                    {"party_id": known[name], "day": 0, "sent": 0, "sent_bytes": 0}
                    | {"waiting_bytes": 0}
                    for name in absent
                ],
            )
        tx.new_parties.update(known)
        found.update(known)
        return found

    def names(self, tx: Tx, party_ids: Iterable[int]) -> dict[int, str]:
        """Party names by id (of parties that exist)."""
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

    def party_row(self, party: str, key: Any, columns: tuple[Any, ...]) -> Sequence[Any] | None:
        """A party's row of a per-party table (``key`` its party column), or None for a
        party never seen or never counted there."""
        check_party(party)
        with self.read() as conn:
            party_id = self.party(conn, party)
            if party_id is None:
                return None
            return conn.execute(select(*columns).where(key == party_id)).one_or_none()

    # --- the audit log ----------------------------------------------------------------

    @contextlib.contextmanager
    def _audit_write(self) -> Iterator[Connection]:
        with self.write() as tx:
            yield tx.conn

    def _audit_read(self) -> contextlib.AbstractContextManager[Connection]:
        return self.read()

    def audit(self, tx: Tx, events: Sequence[AuditEvent], now: datetime) -> None:
        """Record a write's events last in its transaction: one insert for all of them."""
        audit_store.append_many(tx.conn, events, now=now)
