"""``samenloop node backup`` and ``samenloop node restore``: the node's database saved while
the node runs, and put back after a disk died.

A backup is SQLite's online backup (:mod:`samenloop.policies.backup`). A restore takes the
data directory's lock (it refuses while the node runs), checks that the file is a
Samenloop node database of this party at a schema this software knows, brings a copy of
it to the schema head, marks it restored and installs it atomically, keeping the
database it replaces beside it.

What "marked restored" means (``FeedRestore``, docs/operations.md "Backup and restore"):
the backup lacks what the node did after it was taken. The hit notices it acknowledged
since are gone from the broker's mailbox, so the node asks the broker, once, to put the
latest notice of every group it was told of in the mailbox again (``ResyncHits``) and
keeps the highest revision per group as always. The feed sequence numbers after the
backup's were handed out to the application already, for other changes: the restored
node starts a new feed epoch, maps an application's position in the old one onto the new
feed, and marks the changes that may repeat what the application processed
(``restated``) until it has caught up.
"""

from __future__ import annotations

import secrets
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, delete, insert, select

from samenloop.node.daemon import models
from samenloop.node.daemon.database import INBOX_ROW, MIGRATIONS
from samenloop.node.daemon.process import check_files, load_config
from samenloop.policies import backup, database, logs
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.process import DataDirectoryLock

#: The tables that make a file a node's database (beside Alembic's version table).
_NODE_TABLES = ("inbox", "signals", "hits", "audit_entries")


def node_backup(config_path: Path, out: Path) -> int:
    """Back up the node's database to ``out`` while the node runs (or not)."""
    config = load_config(config_path)
    check_files(config)
    source = backup.sqlite_database(config.database_url, role="node")
    size = backup.backup_sqlite(source, out)
    print(f"node {config.party}: database backed up to {out} ({size} bytes, 0600)")
    return 0


def node_restore(config_path: Path, source: Path, *, now: datetime | None = None) -> int:
    """Install the backup ``source`` as the node's database; the node must be stopped."""
    config = load_config(config_path)
    logs.configure(config.log_level, config.log_format)  # Alembic's lines too
    check_files(config)
    lock = DataDirectoryLock.acquire(config.data_dir, "node")  # refused while a node runs
    try:
        target = backup.sqlite_database(config.database_url, role="node")
        backup.check_sqlite_file(source, field="--from")
        if source.resolve() == target.resolve():
            raise ConfigurationError(
                "that is the node's database itself, not a backup of it", field="--from"
            )
        moment = now or datetime.now(UTC)
        with backup.temporary_beside(target) as prepared:
            try:
                backup.copy_sqlite(source, prepared)
            except ConfigurationError as error:
                raise ConfigurationError(error.message, field="--from") from None
            _check_backup(prepared, source, config.party)
            engine = database.make_engine(f"sqlite:///{prepared}")
            try:
                database.upgrade(engine, MIGRATIONS)
                restored = _mark_restored(engine, moment)
            finally:
                engine.dispose()
            _single_file(prepared)
            stamp = moment.strftime("%Y%m%dT%H%M%SZ")
            kept = backup.install_sqlite(
                prepared, target, keep_as=target.with_name(f"{target.name}.replaced-{stamp}")
            )
    finally:
        lock.release()
    epoch, base_seq, cursor = restored
    print(f"node {config.party}: database restored from {source}")
    print(f"  hit feed: epoch {epoch}, continues after sequence {base_seq} of the backup")
    print(f"  mailbox cursor of the backup: {cursor}; the broker resends the latest hit notices")
    if kept is not None:
        print(f"  the database it replaced is kept as {kept} (0600): delete it when done")
    print("  start the node; then re-import the signals registered after the backup was taken")
    return 0


def node_restore_in_place(config_path: Path, *, now: datetime | None = None) -> int:
    """Mark the node's database restored where it is: for a database put back by other
    means (PostgreSQL's ``pg_restore`` or point-in-time recovery, or a SQLite file copied
    back by hand). The node must be stopped, the database at the schema head."""
    config = load_config(config_path)
    logs.configure(config.log_level, config.log_format)
    check_files(config)
    lock = DataDirectoryLock.acquire(config.data_dir, "node")  # refused while a node runs
    engine = database.make_engine(config.database_url)
    try:
        database.check_at_head(engine, MIGRATIONS)
        with engine.connect() as conn:
            entry = models.AuditLogEntry
            ours = conn.execute(
                select(entry.seq).where(entry.actor == config.party).limit(1)
            ).first()
            anyone = conn.execute(select(entry.seq).limit(1)).first()
        if anyone is not None and ours is None:
            raise ConfigurationError(
                f"the database is not {config.party}'s node's: its audit log names no entry of it",
                field="database.url",
            )
        epoch, base_seq, cursor = _mark_restored(engine, now or datetime.now(UTC))
    finally:
        engine.dispose()
        lock.release()
    print(f"node {config.party}: database at {database.describe(engine)} marked restored")
    print(f"  hit feed: epoch {epoch}, continues after sequence {base_seq} of the backup")
    print(f"  mailbox cursor of the backup: {cursor}; the broker resends the latest hit notices")
    print("  start the node; then re-import the signals registered after the backup was taken")
    return 0


def _check_backup(path: Path, source: Path, party: str) -> None:
    """Refuse (naming ``--from``) a file that is not a node database of this party at a
    schema this software knows."""
    connection = sqlite3.connect(path)
    try:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "alembic_version" not in tables or not set(_NODE_TABLES) <= tables:
            raise ConfigurationError(f"{source} is not a Samenloop node database", field="--from")
        at = {row[0] for row in connection.execute("SELECT version_num FROM alembic_version")}
        if not at or not at <= database.revisions(MIGRATIONS):
            raise ConfigurationError(
                f"{source} is at schema {', '.join(sorted(at)) or 'none'}, which this software "
                "does not know: restore it with the samenloop version that made it",
                field="--from",
            )
        ours = connection.execute(
            "SELECT 1 FROM audit_entries WHERE actor = ? LIMIT 1", (party,)
        ).fetchone()
        anyone = connection.execute("SELECT 1 FROM audit_entries LIMIT 1").fetchone()
        if anyone is not None and ours is None:
            raise ConfigurationError(
                f"{source} is not a database of {party}'s node: its audit log names no entry of it",
                field="--from",
            )
    finally:
        connection.close()


def _mark_restored(engine: Engine, now: datetime) -> tuple[int, int, int]:
    """Start a new feed epoch in the prepared copy (see the module's docstring); returns
    it, the backup's last feed sequence and its mailbox cursor."""
    fr, inbox = models.FeedRestore, models.Inbox
    with engine.begin() as conn:
        row = conn.execute(
            select(inbox.mailbox_cursor, inbox.last_feed_seq).where(inbox.id == INBOX_ROW)
        ).first()
        cursor, base_seq = (0, 0) if row is None else (row.mailbox_cursor, row.last_feed_seq)
        previous = (
            conn.execute(select(fr.feed_epoch).where(fr.id == INBOX_ROW)).scalar_one_or_none()
            or models.ORIGINAL_FEED_EPOCH
        )
        epoch = previous
        while epoch in (previous, models.ORIGINAL_FEED_EPOCH):
            epoch = 2 + secrets.randbelow(2**63 - 2)
        conn.execute(delete(fr))
        conn.execute(
            insert(fr).values(
                id=INBOX_ROW,
                feed_epoch=epoch,
                previous_epoch=previous,
                base_seq=base_seq,
                restored_at=now,
                resync_head=None,
                restated_until_seq=None,
            )
        )
    return epoch, base_seq, cursor


def _single_file(path: Path) -> None:
    """Leave the prepared copy as one self-contained file (no write-ahead log beside it)."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=DELETE")
    finally:
        connection.close()
