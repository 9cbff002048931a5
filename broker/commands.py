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
    rotation = commands.add_parser(
        "rotation-status",
        help="how far each party re-tokenised under a staged OPRF key epoch",
        description=(
            "Per party, its live refs under the current key epoch that have no entry under "
            "the staged epoch yet (0: ready). The broker accepts the version that switches "
            "the epoch ('covenant switch-key-epoch') only when every party is at 0. Reads "
            "the broker's database; runs beside a serving broker."
        ),
    )
    rotation.add_argument("--config", type=Path, required=True, help="broker.toml")
    rotation.add_argument("--json", action="store_true", help="print JSON")
    rotation.set_defaults(func=_rotation_status)


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


def _rotation_status(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from samenloop.broker import server
    from samenloop.broker.store import BrokerStore
    from samenloop.policies import database
    from samenloop.policies.trust import (
        HeldCovenant,
        SignedCovenant,
        TrustState,
        load_signed_covenant,
    )
    from samenloop.v1 import common_pb2

    config = server.load_config(args.config)
    held = HeldCovenant(TrustState(load_signed_covenant(config.covenant)))
    engine = database.make_engine(config.database_url)
    try:
        database.check_at_head(engine, server.MIGRATIONS)
        store = BrokerStore(engine, owner=held().broker.id)
        for stored in store.covenants.covenant_versions():
            held.replay(SignedCovenant.from_proto(common_pb2.SignedCovenant.FromString(stored)))
        covenant = held()
        staged = covenant.next_key_epoch
        current = covenant.key_epoch.epoch
        parties = sorted(covenant.party_ids)
        left = (
            {}
            if staged is None
            else store.rotation.status(current, staged.epoch, datetime.now(UTC), parties)
        )
    finally:
        engine.dispose()
    report = {
        "covenant_version": covenant.version,
        "key_epoch": current,
        "staged_key_epoch": None if staged is None else staged.epoch,
        "left": left,
        "ready": staged is not None and not any(left.values()),
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    if staged is None:
        print(f"covenant version {covenant.version}: key epoch {current}, none staged")
        return 0
    print(f"covenant version {covenant.version}: key epoch {current}, epoch {staged.epoch} staged")
    for party in parties:
        count = left.get(party, 0)
        print(f"  {party}: {'ready' if count == 0 else f'{count} live refs left'}")
    print("ready to switch" if report["ready"] else "not ready: the switch would be refused")
    return 0
