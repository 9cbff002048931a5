"""``samenloop node backup``, ``node restore`` and ``broker backup``, without daemons.

A provisioned covenant's migrated databases stand in for a node's and a broker's; a
held ``DataDirectoryLock`` and an open write transaction stand in for a running daemon.
The end-to-end restore through real daemons is in ``test_backup_restore_end_to_end.py``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from samenloop.node.daemon.database import Database
from samenloop.node.daemon.repositories import Repositories
from samenloop.node.picture.arithmetic import BudgetExhausted, Period
from samenloop.node.picture.store import RESTORED_SPENT_UNITS
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.node.signals.store import FeedState
from samenloop.policies import backup, cli, database
from samenloop.policies.audit import AuditKind
from samenloop.policies.covenant import Role
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.process import DataDirectoryLock

from daemons import migrate, sqlite_rows

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
)


@dataclass
class Setup:
    provisioned: Provisioned
    root: Path

    def config(self, party: str = "gemeente") -> Path:
        return self.provisioned.node_configs[party]

    def node_db(self, party: str = "gemeente") -> Path:
        return self.provisioned.party_dir(party) / "data" / "node.db"

    def data_dir(self, party: str = "gemeente") -> Path:
        return self.provisioned.party_dir(party) / "data"

    @property
    def broker_db(self) -> Path:
        return self.provisioned.root / "broker" / "data" / "broker.db"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    provisioned = provision(
        tmp_path / "covenant",
        "riec-backup",
        SPECS,
        [spec.id for spec in SPECS],
        2,
        now=datetime.now(UTC) - timedelta(minutes=5),
    )
    migrate(provisioned)
    out = tmp_path / "backups"
    out.mkdir(mode=0o700)
    return Setup(provisioned, out)


def run(*words: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI in this process: its exit code and what it printed (out and err)."""
    code = cli.main(list(words))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def add_audit_entry(path: Path, actor: str) -> None:
    engine = database.make_engine(f"sqlite:///{path}")
    try:
        Database(engine, owner=actor).audit_append(
            kind=AuditKind.SIGNAL_ADDED, details={"test": 1}, now=NOW
        )
    finally:
        engine.dispose()


def covenant_versions(path: Path) -> list[tuple[int]]:
    return sqlite_rows(path, "SELECT version FROM covenant_versions ORDER BY version")


# --- backup --------------------------------------------------------------------------------


def test_a_backup_is_taken_while_the_node_writes_and_holds_only_what_was_committed(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = DataDirectoryLock.acquire(setup.data_dir(), "node")  # the node runs
    writer = sqlite3.connect(setup.node_db(), isolation_level=None, timeout=10)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute(
            "INSERT INTO covenant_versions (version, body, signatures, accepted_at)"
            " VALUES (2, x'01', x'01', '2026-12-07 12:00:00.000000')"
        )
        writer.execute("BEGIN IMMEDIATE")  # a writer in the middle of a transaction
        writer.execute(
            "INSERT INTO covenant_versions (version, body, signatures, accepted_at)"
            " VALUES (3, x'01', x'01', '2026-12-07 12:00:00.000000')"
        )
        out = setup.root / "node-1.db"
        code, printed = run(
            "node", "backup", "--config", str(setup.config()), "--out", str(out), capsys=capsys
        )
        assert code == 0, printed
        writer.execute("COMMIT")
    finally:
        writer.close()
        lock.release()
    assert out.stat().st_mode & 0o777 == 0o600
    assert covenant_versions(out) == [(2,)]  # committed before, not the open transaction
    assert covenant_versions(setup.node_db()) == [(2,), (3,)]
    assert not Path(f"{out}-wal").exists()  # one self-contained file
    assert sqlite_rows(out, "PRAGMA journal_mode") == [("delete",)]
    assert not [p for p in setup.root.iterdir() if p.name.endswith(".tmp")]


def test_a_backup_never_overwrites_a_file(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    out = setup.root / "node.db"
    out.write_bytes(b"an earlier backup")
    code, printed = run(
        "node", "backup", "--config", str(setup.config()), "--out", str(out), capsys=capsys
    )
    assert code != 0
    assert "--out:" in printed
    assert "refusing to overwrite" in printed
    assert out.read_bytes() == b"an earlier backup"
    code, printed = run(
        "node",
        "backup",
        "--config",
        str(setup.config()),
        "--out",
        str(setup.root / "missing" / "node.db"),
        capsys=capsys,
    )
    assert code != 0
    assert "--out:" in printed
    assert "no directory" in printed


def test_the_broker_is_backed_up_too(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    out = setup.root / "broker.db"
    config = setup.provisioned.broker_config
    code, printed = run(
        "broker", "backup", "--config", str(config), "--out", str(out), capsys=capsys
    )
    assert code == 0, printed
    assert out.stat().st_mode & 0o777 == 0o600
    assert sqlite_rows(out, "SELECT count(*) FROM alembic_version") == [(1,)]
    code, printed = run(
        "broker", "backup", "--config", str(config), "--out", str(out), capsys=capsys
    )
    assert code != 0
    assert "--out:" in printed


def test_a_backup_this_account_may_not_write_is_read_read_only(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backups are often kept read-only (a 0400 file, a read-only mount): the copy opens
    such a file read-only, which a backup (one file, no WAL) allows. (The tests run as
    root, who may write anything: the account's lack of the right is simulated.)"""
    out = setup.root / "node.db"
    assert (
        run("node", "backup", "--config", str(setup.config()), "--out", str(out), capsys=capsys)[0]
        == 0
    )
    opened: list[str] = []
    connect = sqlite3.connect

    def spying(target: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        opened.append(str(target))
        return connect(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backup.os, "access", lambda path, mode: Path(path) != out)
    monkeypatch.setattr(backup.sqlite3, "connect", spying)
    copy = setup.root / "copy.db"
    copy.touch()
    backup.copy_sqlite(out, copy)
    assert opened[0] == f"{out.absolute().as_uri()}?mode=ro"
    assert covenant_versions(copy) == covenant_versions(out)


def test_a_postgresql_database_is_left_to_its_own_tools() -> None:
    with pytest.raises(ConfigurationError) as caught:
        backup.sqlite_database("postgresql://samenloop@db/broker", role="broker")
    assert caught.value.field == "database.url"
    assert "pg_dump" in caught.value.message
    with pytest.raises(ConfigurationError) as caught:
        backup.sqlite_database("sqlite://", role="node")
    assert caught.value.field == "database.url"


# --- restore -------------------------------------------------------------------------------


def test_a_restore_is_refused_while_the_node_runs(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    out = setup.root / "node.db"
    assert (
        run("node", "backup", "--config", str(setup.config()), "--out", str(out), capsys=capsys)[0]
        == 0
    )
    before = setup.node_db().read_bytes()
    lock = DataDirectoryLock.acquire(setup.data_dir(), "node")
    try:
        code, printed = run(
            "node", "restore", "--config", str(setup.config()), "--from", str(out), capsys=capsys
        )
    finally:
        lock.release()
    assert code != 0
    assert "data_dir:" in printed
    assert "already runs" in printed
    assert setup.node_db().read_bytes() == before


@pytest.mark.parametrize("wrong", ["text", "broker", "other_party", "unknown_schema"])
def test_a_file_that_is_not_a_backup_of_this_node_is_refused(
    setup: Setup, capsys: pytest.CaptureFixture[str], wrong: str
) -> None:
    source = setup.root / "wrong.db"
    if wrong == "text":
        source.write_text("not a database")
    elif wrong == "broker":
        source.write_bytes(setup.broker_db.read_bytes())
    else:
        add_audit_entry(setup.node_db("politie"), "politie")
        source.write_bytes(setup.node_db("politie").read_bytes())
        if wrong == "unknown_schema":
            add_audit_entry(source, "gemeente")
            connection = sqlite3.connect(source)
            connection.execute("UPDATE alembic_version SET version_num = '9999'")
            connection.commit()
            connection.close()
    before = setup.node_db().read_bytes()
    code, printed = run(
        "node", "restore", "--config", str(setup.config()), "--from", str(source), capsys=capsys
    )
    assert code != 0
    assert "--from:" in printed
    expected = {
        "text": "not a SQLite database",
        "broker": "not a Samenloop node database",
        "other_party": "not a database of gemeente's node",
        "unknown_schema": "does not know",
    }[wrong]
    assert expected in printed
    assert setup.node_db().read_bytes() == before
    assert not [p for p in setup.data_dir().iterdir() if p.name.endswith(".tmp")]


def test_a_restore_installs_the_backup_and_starts_a_new_feed_epoch(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    add_audit_entry(setup.node_db(), "gemeente")
    connection = sqlite3.connect(setup.node_db())
    connection.execute("INSERT INTO inbox (id, mailbox_cursor, last_feed_seq) VALUES (1, 7, 5)")
    connection.commit()
    connection.close()
    out = setup.root / "node.db"
    assert (
        run("node", "backup", "--config", str(setup.config()), "--out", str(out), capsys=capsys)[0]
        == 0
    )
    # After the backup the node went on: its cursor and feed moved.
    connection = sqlite3.connect(setup.node_db())
    connection.execute("UPDATE inbox SET mailbox_cursor = 20, last_feed_seq = 11")
    connection.commit()
    connection.close()

    code, printed = run(
        "node", "restore", "--config", str(setup.config()), "--from", str(out), capsys=capsys
    )
    assert code == 0, printed
    assert "continues after sequence 5" in printed
    db = setup.node_db()
    assert db.stat().st_mode & 0o777 == 0o600
    assert sqlite_rows(db, "SELECT mailbox_cursor, last_feed_seq FROM inbox") == [(7, 5)]
    (first,) = sqlite_rows(
        db,
        "SELECT feed_epoch, previous_epoch, base_seq, resync_head, restated_until_seq"
        " FROM feed_restore",
    )
    assert first[1:] == (1, 5, None, None)
    assert first[0] >= 2
    assert database.current(database.make_engine(f"sqlite:///{db}")) == database.heads(
        "samenloop.node.daemon.migrations"
    )
    (kept,) = [p for p in setup.data_dir().iterdir() if ".replaced-" in p.name]
    assert sqlite_rows(kept, "SELECT mailbox_cursor, last_feed_seq FROM inbox") == [(20, 11)]
    assert kept.stat().st_mode & 0o777 == 0o600

    # A backup of the restored node, restored again: the epoch it came from is the first's.
    again = setup.root / "again.db"
    assert (
        run("node", "backup", "--config", str(setup.config()), "--out", str(again), capsys=capsys)[
            0
        ]
        == 0
    )
    kept.unlink()
    assert (
        run(
            "node", "restore", "--config", str(setup.config()), "--from", str(again), capsys=capsys
        )[0]
        == 0
    )
    (second,) = sqlite_rows(db, "SELECT feed_epoch, previous_epoch FROM feed_restore")
    assert second[1] == first[0]
    assert second[0] not in (first[0], 1)


def on_postgresql(setup: Setup, url: str) -> None:
    """Point the gemeente's node.toml at a PostgreSQL database, migrated."""
    config = setup.config()
    text = config.read_text().replace(
        'database_url = "sqlite:///data/node.db"', f'database_url = "{url}"'
    )
    config.write_text(text)
    engine = database.make_engine(url)
    try:
        database.upgrade(engine, "samenloop.node.daemon.migrations")
    finally:
        engine.dispose()


def test_a_backup_of_an_older_release_is_brought_to_this_schema(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    out = setup.root / "node.db"
    assert (
        run("node", "backup", "--config", str(setup.config()), "--out", str(out), capsys=capsys)[0]
        == 0
    )
    engine = database.make_engine(f"sqlite:///{out}")
    try:
        database.downgrade(engine, "samenloop.node.daemon.migrations", "0012")  # before restores
    finally:
        engine.dispose()
    assert sqlite_rows(out, "SELECT version_num FROM alembic_version") == [("0012",)]
    code, printed = run(
        "node", "restore", "--config", str(setup.config()), "--from", str(out), capsys=capsys
    )
    assert code == 0, printed
    assert sqlite_rows(setup.node_db(), "SELECT version_num FROM alembic_version") == [("0017",)]
    assert sqlite_rows(setup.node_db(), "SELECT previous_epoch FROM feed_restore") == [(1,)]
    assert sqlite_rows(out, "SELECT version_num FROM alembic_version") == [("0012",)]  # as it was


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_put_back_by_other_means_is_marked_restored_in_place(
    setup: Setup, capsys: pytest.CaptureFixture[str], backend: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL is restored with its own tools (pg_restore, point-in-time recovery);
    ``node restore --in-place`` then starts the new feed epoch and the resync."""
    if backend == "postgresql":
        url = str(request.getfixturevalue("own_postgres_url"))
        on_postgresql(setup, url)
        code, printed = run(
            "node", "backup", "--config", str(setup.config()), "--out", str(setup.root / "x"),
            capsys=capsys,
        )  # fmt: skip
        assert code != 0
        assert "database.url:" in printed
        assert "pg_dump" in printed
    else:
        url = f"sqlite:///{setup.node_db()}"
    lock = DataDirectoryLock.acquire(setup.data_dir(), "node")
    try:
        code, printed = run(
            "node", "restore", "--config", str(setup.config()), "--in-place", capsys=capsys
        )
    finally:
        lock.release()
    assert code != 0
    assert "data_dir:" in printed

    code, printed = run(
        "node", "restore", "--config", str(setup.config()), "--in-place", capsys=capsys
    )
    assert code == 0, printed
    assert "marked restored" in printed
    engine = database.make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT previous_epoch, base_seq, resync_head FROM feed_restore")
            ).one()
    finally:
        engine.dispose()
    assert tuple(row) == (1, 0, None)

    code, printed = run(
        "node", "restore", "--config", str(setup.config("politie")), "--in-place", capsys=capsys
    )
    assert code == 0, printed  # politie's own database, still empty: nothing says otherwise
    add_audit_entry(setup.node_db("politie"), "gemeente")
    code, printed = run(
        "node", "restore", "--config", str(setup.config("politie")), "--in-place", capsys=capsys
    )
    assert code != 0
    assert "database.url:" in printed
    assert "not politie's node's" in printed


def test_after_a_restore_the_privacy_budget_of_every_month_until_then_counts_as_spent(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the node spent of the regional picture's privacy budget after the backup is
    gone with it: the months up to the restore are refused, the later ones are whole."""
    out = setup.root / "node.db"
    assert (
        run("node", "backup", "--config", str(setup.config()), "--out", str(out), capsys=capsys)[0]
        == 0
    )
    engine = database.make_engine(f"sqlite:///{setup.node_db()}")
    try:
        store = Repositories.open(engine).picture
        assert store.picture_ledger(["2026-11"]).spent_units == {}
    finally:
        engine.dispose()
    code, printed = run(
        "node", "restore", "--config", str(setup.config()), "--from", str(out), capsys=capsys
    )
    assert code == 0, printed
    engine = database.make_engine(f"sqlite:///{setup.node_db()}")
    try:
        store = Repositories.open(engine).picture
        this_month = datetime.now(UTC).strftime("%Y-%m")
        ledger = store.picture_ledger(["2020-01", this_month, "2999-01"])
    finally:
        engine.dispose()
    assert ledger.spent_units == {"2020-01": RESTORED_SPENT_UNITS, this_month: RESTORED_SPENT_UNITS}
    with pytest.raises(BudgetExhausted):
        ledger.spend(Period.parse(this_month), 0.1, budget_per_period=1.0)
    assert ledger.remaining(Period.parse("2999-01"), budget_per_period=1.0) == 1.0


# --- the feed after a restore ------------------------------------------------------------------

RESTORED = FeedState(epoch=77, previous_epoch=1, base_seq=10, resync_head=40, restated_until=25)


@pytest.mark.parametrize(
    ("feed", "epoch", "after", "starts", "restated_after"),
    [
        (FeedState(epoch=1), 0, 12, 12, None),  # never restored: as asked
        (FeedState(epoch=1), 1, 12, 12, None),
        (RESTORED, 77, 30, 30, 10),  # the current epoch: as asked
        (RESTORED, 0, 30, 30, 10),  # epoch not given: as asked
        (RESTORED, 1, 8, 8, 10),  # the backup's epoch, before the backup: stands
        (RESTORED, 1, 15, 10, 10),  # ... after it: back to the backup's last sequence
        (RESTORED, 5, 15, 0, 0),  # an epoch the node never had: from the start
    ],
)
def test_a_position_in_an_older_feed_epoch_maps_onto_the_restored_feed(
    feed: FeedState, epoch: int, after: int, starts: int, restated_after: int | None
) -> None:
    assert feed.position(epoch, after) == (starts, restated_after)


def test_changes_between_the_backup_and_the_end_of_the_catching_up_are_restated() -> None:
    assert [RESTORED.restated(seq, 10) for seq in (9, 10, 11, 25, 26)] == [
        False,
        False,
        True,
        True,
        False,
    ]
    catching_up = FeedState(epoch=77, previous_epoch=1, base_seq=10, resync_head=None)
    assert catching_up.catching_up
    assert catching_up.restated(1_000, 10)  # until caught up, every change after the backup
    assert not FeedState(epoch=1).restated(5, None)
    assert FeedState(epoch=1).restated(5, 0)  # an unknown epoch: anything may repeat
