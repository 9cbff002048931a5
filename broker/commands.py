"""``samenloop broker``: run the broker, migrate its database."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("broker", help="the covenant's broker")
    commands = parser.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)
    serve = commands.add_parser("serve", help="run the broker until SIGTERM")
    serve.add_argument("--config", type=Path, required=True, help="broker.toml")
    serve.set_defaults(func=_serve)
    migrate = commands.add_parser("migrate", help="bring the broker's database to this version")
    migrate.add_argument("--config", type=Path, required=True, help="broker.toml")
    migrate.set_defaults(func=_migrate)
    backup = commands.add_parser(
        "backup", help="back up the broker's database (SQLite) while the broker runs"
    )
    backup.add_argument("--config", type=Path, required=True, help="broker.toml")
    backup.add_argument(
        "--out", type=Path, required=True, help="the backup file to write (new, 0600)"
    )
    backup.set_defaults(func=_backup)


def _serve(args: argparse.Namespace) -> int:
    from samenloop.broker import server

    return server.serve(server.load_config(args.config))


def _migrate(args: argparse.Namespace) -> int:
    from samenloop.broker import server
    from samenloop.policies import database, logs
    from samenloop.policies.process import DataDirectoryLock

    config = server.load_config(args.config)
    logs.configure(config.log_level, config.log_format)  # Alembic's lines too
    server.check_files(config)
    lock = DataDirectoryLock.acquire(config.data_dir, "broker")  # not under a running broker
    engine = database.make_engine(config.database_url)
    try:
        database.upgrade(engine, server.MIGRATIONS)
        print(f"broker database at {', '.join(database.current(engine))}")
    finally:
        engine.dispose()
        lock.release()
    return 0


def _backup(args: argparse.Namespace) -> int:
    from samenloop.broker import server
    from samenloop.policies import backup

    config = server.load_config(args.config)
    server.check_files(config)
    source = backup.sqlite_database(config.database_url, role="broker")
    size = backup.backup_sqlite(source, args.out)
    print(f"broker database backed up to {args.out} ({size} bytes, 0600)")
    return 0
