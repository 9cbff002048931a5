"""Database plumbing shared by the broker's and the node's stores: engines, UTC, migrations.

An adapter, like ``rpc`` and ``cli``: it imports SQLAlchemy and Alembic, and no
core module imports it.

* :func:`make_engine` opens SQLite (a file, or memory for tests) or PostgreSQL
  (``postgresql+psycopg://``, session time zone UTC) with durable settings.
  SQLite: WAL with ``synchronous=FULL`` (a commit is on disk when it returns),
  foreign keys on, a busy timeout, a 256 MiB page cache per connection (grown
  only as used) and reads through a memory map; a background thread
  (:class:`WalCheckpointer`) copies the WAL into the database file so that
  commits only append. Every SQLite transaction starts with ``BEGIN
  IMMEDIATE`` (a read-then-write transaction can otherwise fail under WAL
  when another connection commits first); pass :data:`READ_ONLY` as
  execution options for a plain deferred ``BEGIN`` that never waits for a
  writer.
* :class:`UtcDateTime` stores aware datetimes as UTC and returns them aware.
* :func:`upgrade`, :func:`downgrade`, :func:`current` and :func:`check_at_head`
  drive the Alembic migrations of a migrations *package* (its directory is the
  script location: no ``alembic.ini`` at run time). A package's ``env.py`` is
  one call, :func:`run_migrations`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import DateTime, TypeDecorator

from samenloop.policies.errors import ConfigurationError

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
SQLITE_CACHE_KIB: Final = 262_144  # 256 MiB of page cache per connection
SQLITE_MMAP_BYTES: Final = 1 << 31  # read pages through a memory map (SQLite caps it at 2 GiB)
# A background thread copies the WAL into the database file every 50 ms, off the
# commit path; a commit checkpoints itself only if the WAL outgrows ~400 MiB.
SQLITE_CHECKPOINT_INTERVAL_S: Final = 0.05
SQLITE_CHECKPOINT_PAGES: Final = 100_000

# A 64-bit primary key that is SQLite's row id there (only "INTEGER PRIMARY KEY" is).
RowId = sqlalchemy.BigInteger().with_variant(sqlalchemy.Integer(), "sqlite")

#: Constraint names for both stores' models, so that migrations name them predictably.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

READ_ONLY: Final[dict[str, Any]] = {"samenloop_read_only": True}
"""Execution options for a read-only transaction (SQLite: a deferred ``BEGIN``)."""


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for a database URL: ``sqlite:///path``, ``sqlite://`` or ``postgresql://``.

    ``postgresql://`` and ``postgresql+psycopg://`` both use psycopg 3. The
    session time zone is UTC on PostgreSQL; SQLite stores UTC through
    :class:`UtcDateTime`. A SQLite file gets a background checkpointer (see
    :class:`WalCheckpointer`) that stops when the engine is disposed.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigurationError("not a database URL", field="database.url") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.get_driver_name() == "pysqlite":
        return _sqlite_engine(parsed, echo=echo)
    if backend == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2"):
        return _postgresql_engine(parsed.set(drivername="postgresql+psycopg"), echo=echo)
    raise ConfigurationError(
        f"unsupported database {parsed.drivername!r}: use sqlite:///FILE or postgresql://...",
        field="database.url",
    )


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        engine = sqlalchemy.create_engine(
            "sqlite://",
            echo=echo,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
    else:
        engine = sqlalchemy.create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
                cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cursor.execute("PRAGMA temp_store=MEMORY")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get("samenloop_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    if not in_memory and url.database:
        checkpointer = WalCheckpointer(url.database)
        checkpointer.start()
        event.listen(engine, "engine_disposed", lambda _engine: checkpointer.stop())
        weakref.finalize(engine, checkpointer.stop)
    return engine


class WalCheckpointer:
    """Copies a SQLite database's write-ahead log into the database file, in the background.

    A commit appends the pages it changed to the WAL and syncs it; copying them
    into the database file (a checkpoint) is the other half of the work. SQLite
    does it inside whichever commit crosses ``wal_autocheckpoint``; this thread
    does it instead, on its own connection, every
    :data:`SQLITE_CHECKPOINT_INTERVAL_S`, so commits only append. A ``PASSIVE``
    checkpoint never blocks readers or writers, and durability does not depend
    on it: committed pages are safe in the synced WAL.
    """

    def __init__(self, path: str, interval: float = SQLITE_CHECKPOINT_INTERVAL_S) -> None:
        self._uri = Path(path).absolute().as_uri()
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"sqlite-checkpointer {path}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # The engine's first connection creates the file; until then there is nothing to do.
        connection: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(self._interval):
                try:
                    if connection is None:
                        connection = sqlite3.connect(
                            f"{self._uri}?mode=rw", uri=True, isolation_level=None
                        )
                        connection.execute("PRAGMA synchronous=FULL")
                        connection.execute("PRAGMA busy_timeout=1000")
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    continue  # not created yet, or busy: try again next time
        finally:
            if connection is not None:
                connection.close()


def _postgresql_engine(url: URL, *, echo: bool) -> Engine:
    return sqlalchemy.create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        connect_args={"options": "-c timezone=UTC", "application_name": "samenloop"},
    )


def describe(engine: Engine) -> str:
    """The engine's URL without its password, for logs and messages."""
    return engine.url.render_as_string(hide_password=True)


def sqlite_stamp(value: datetime) -> str:
    """An aware time as :class:`UtcDateTime` stores it in SQLite (naive UTC text with
    microseconds), several times faster than SQLAlchemy's conversion: the stores' hot
    paths write one per row, straight to the driver."""
    if value.tzinfo is not UTC:  # parsed input carries UTC itself: skip the conversion
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("refusing to store a naive datetime")
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:-6]  # without its "+00:00"


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is stored in UTC and read back as an aware UTC datetime.

    Naive datetimes are refused: a time without a zone is a bug waiting.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("refusing to store a naive datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# --- migrations -------------------------------------------------------------------


#: How both stores' models map Python annotations to column types.
TYPE_ANNOTATION_MAP: Final[dict[Any, Any]] = {
    datetime: UtcDateTime(),
    bytes: sqlalchemy.LargeBinary(),
    str: sqlalchemy.String(64),
}


def _config(package: str, connection: Connection | None = None) -> Config:
    try:
        location = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ConfigurationError(f"no migrations package {package}") from None
    config = Config()
    # Config values go through ConfigParser interpolation: escape "%".
    config.set_main_option("script_location", str(location).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, package: str, revision: str = "head") -> None:
    """Apply the package's migrations up to ``revision``, in one transaction."""
    with _migrating(engine) as connection:
        command.upgrade(_config(package, connection), revision)


def downgrade(engine: Engine, package: str, revision: str = "base") -> None:
    """Revert the package's migrations down to ``revision``, in one transaction."""
    with _migrating(engine) as connection:
        command.downgrade(_config(package, connection), revision)


@contextlib.contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One transaction for a migration run. On SQLite, as its own guide to schema changes
    says: foreign keys off around the transaction (a migration that rebuilds a table
    other tables refer to, Alembic's batch mode, drops the old table, which would
    otherwise fail, or cascade, on the rows that refer to it), and ``PRAGMA
    foreign_key_check`` before the commit, so that a migration that broke a reference
    is rolled back whole, naming the table."""
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if not sqlite:
            with connection.begin():
                yield connection
            return
        raw = connection.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")  # outside any transaction, where it counts
        try:
            with connection.begin():
                yield connection
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    tables = sorted({str(row[0]) for row in broken})
                    raise ConfigurationError(
                        f"the migration left rows that refer to missing rows in {tables}",
                        field="database.url",
                    )
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def current(engine: Engine) -> tuple[str, ...]:
    """The revisions the database is at (empty if it was never migrated)."""
    with engine.connect().execution_options(**READ_ONLY) as connection:
        return tuple(MigrationContext.configure(connection).get_current_heads())


def heads(package: str) -> tuple[str, ...]:
    """The newest revisions of the package's migrations: what this software expects."""
    return tuple(ScriptDirectory.from_config(_config(package)).get_heads())


def revisions(package: str) -> frozenset[str]:
    """Every revision of the package's migrations: the schemas this software can upgrade."""
    script = ScriptDirectory.from_config(_config(package))
    return frozenset(revision.revision for revision in script.walk_revisions())


def check_at_head(engine: Engine, package: str, *, migrate_command: str | None = None) -> None:
    """Refuse to run against a schema that is not exactly at the package's head.

    ``migrate_command`` is the command to suggest; by default it is derived
    from the package (``samenloop.broker.migrations`` -> ``samenloop broker migrate``).
    """
    if migrate_command is None:
        role = package.split(".")[1] if package.count(".") >= 1 else package
        migrate_command = f"samenloop {role} migrate"
    at = current(engine)
    expected = heads(package)
    if set(at) == set(expected):
        return
    script = ScriptDirectory.from_config(_config(package))
    known = {revision.revision for revision in script.walk_revisions()}
    if any(revision not in known for revision in at):
        raise ConfigurationError(
            f"database {describe(engine)} is at schema {', '.join(at)}, newer than this "
            "software knows: upgrade samenloop",
            reason="schema.ahead",
        )
    shown = ", ".join(at) if at else "none"
    raise ConfigurationError(
        f"database {describe(engine)} is at schema {shown}, this software needs "
        f"{', '.join(expected)}: run `{migrate_command}`",
        reason="schema.behind",
    )


def run_migrations(target_metadata: sqlalchemy.MetaData) -> None:
    """The body of a migrations package's ``env.py``.

    Online, it uses the connection that :func:`upgrade` or :func:`downgrade`
    passed in (or opens ``sqlalchemy.url`` from the Alembic config, for
    developers running the ``alembic`` command); offline, it renders SQL.
    """
    from alembic import context  # only meaningful while Alembic runs an env.py

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    config = context.config
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=target_metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise ConfigurationError("no database: set sqlalchemy.url or call upgrade()")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            run(connection)
    finally:
        engine.dispose()
