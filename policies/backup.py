"""Backups of a daemon's SQLite database, taken while the daemon runs, and their installation.

An adapter like ``database``: the node's and the broker's ``backup`` commands and the
node's ``restore`` use it. A backup is SQLite's online backup (``sqlite3.Connection.backup``
in one step: a consistent snapshot that never blocks the daemon's writers under WAL) into
a temporary file beside the target, checked, synced and then linked into place, so that a
crash leaves either no backup or a whole one, and an existing file is never overwritten.
Every file is 0600 (a backup holds what the database holds: raw data and secrets).

PostgreSQL has its own tools (``pg_dump``, ``pg_basebackup`` with WAL archiving for
point-in-time recovery): :func:`sqlite_database` refuses a PostgreSQL URL and says so.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from samenloop.policies.errors import ConfigurationError

SQLITE_HEADER: Final = b"SQLite format 3\x00"


def sqlite_database(url: str, *, role: str) -> Path:
    """The file of a SQLite ``database_url``; ``ConfigurationError`` (naming
    ``database.url``) for PostgreSQL, which is backed up with its own tools, or anything
    that is not a file."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError("not a database URL", field="database.url") from None
    if parsed.get_backend_name() == "postgresql":
        raise ConfigurationError(
            f"the {role} database is on PostgreSQL: back it up with PostgreSQL's own tools "
            "(pg_dump, or pg_basebackup with WAL archiving), see docs/operations.md, "
            '"Backup and restore"',
            field="database.url",
        )
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "only a SQLite file (sqlite:///FILE) can be backed up this way", field="database.url"
        )
    return Path(parsed.database)


def check_sqlite_file(path: Path, *, field: str) -> None:
    """``ConfigurationError`` naming ``field`` unless ``path`` is a readable SQLite file."""
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}", field=field) from None
    if header != SQLITE_HEADER:
        raise ConfigurationError(f"{path} is not a SQLite database", field=field)


def _free_target(out: Path, field: str) -> None:
    if out.exists() or out.is_symlink():
        raise ConfigurationError(f"{out} exists; refusing to overwrite it", field=field)
    if not out.parent.is_dir():
        raise ConfigurationError(f"no directory {out.parent} to write {out.name} in", field=field)


@contextlib.contextmanager
def temporary_beside(target: Path) -> Iterator[Path]:
    """A new empty 0600 file in ``target``'s directory, removed on the way out unless it
    was moved into place."""
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(descriptor)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def copy_sqlite(source: Path, destination: Path) -> None:
    """Copy a SQLite database, which a daemon may be writing, into ``destination`` (an
    existing empty file) with the online backup API, in one step: the copy is the
    database as of one committed transaction. The copy is left in rollback-journal mode,
    a single self-contained file, and checked (``quick_check``)."""
    # Never written through; read-write if it may be, so that it can read a WAL database
    # whose shared-memory file it must create (a backup, read-only or not, has no WAL).
    mode = "rw" if os.access(source, os.W_OK) else "ro"
    try:
        reader = sqlite3.connect(f"{source.absolute().as_uri()}?mode={mode}", uri=True)
    except sqlite3.Error as error:
        raise ConfigurationError(f"cannot open {source}: {error}", field="database.url") from None
    try:
        reader.execute("PRAGMA busy_timeout=30000")
        writer = sqlite3.connect(destination)
        try:
            reader.backup(writer, pages=-1)
            writer.execute("PRAGMA journal_mode=DELETE")
            found = writer.execute("PRAGMA quick_check").fetchone()
            if found is None or found[0] != "ok":
                raise ConfigurationError(
                    f"the copy of {source} does not pass SQLite's quick_check", field="database.url"
                )
        finally:
            writer.close()
    except sqlite3.Error as error:
        raise ConfigurationError(f"cannot copy {source}: {error}", field="database.url") from None
    finally:
        reader.close()


def fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def backup_sqlite(source: Path, out: Path, *, field: str = "--out") -> int:
    """Back up the SQLite database ``source`` to the new file ``out`` (0600), while its
    daemon runs; returns the backup's size in bytes. ``ConfigurationError`` naming
    ``field`` if ``out`` exists or has no directory, naming ``database.url`` if the
    database cannot be read."""
    _free_target(out, field)
    if not source.is_file():
        raise ConfigurationError(f"no database file {source}", field="database.url")
    try:
        with temporary_beside(out) as temporary:
            copy_sqlite(source, temporary)
            os.chmod(temporary, 0o600)
            fsync_file(temporary)
            try:
                os.link(temporary, out)  # fails if out appeared meanwhile: never overwrites
            except FileExistsError:
                raise ConfigurationError(
                    f"{out} exists; refusing to overwrite it", field=field
                ) from None
            fsync_directory(out.parent)
    except OSError as error:  # no room, no right to write there
        raise ConfigurationError(
            f"cannot write {out}: {error.strerror or error}", field=field
        ) from None
    return out.stat().st_size


def install_sqlite(prepared: Path, target: Path, *, keep_as: Path) -> Path | None:
    """Put the prepared database file in ``target``'s place, atomically: the database
    there (if any) is checkpointed and kept as ``keep_as`` first (a hard link: nothing is
    copied), and its write-ahead log and shared-memory files go. The caller holds the
    data directory's lock, so no daemon has ``target`` open. Returns ``keep_as`` if a
    database was there."""
    kept: Path | None = None
    if target.exists():
        connection = sqlite3.connect(target)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            connection.close()
        try:
            os.link(target, keep_as)
        except FileExistsError:
            raise ConfigurationError(
                f"{keep_as} exists (a restore a moment ago?): move it away first",
                field="database.url",
            ) from None
        kept = keep_as
    fsync_file(prepared)
    os.replace(prepared, target)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    fsync_directory(target.parent)
    return kept
