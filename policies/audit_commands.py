"""``samenloop audit``: export, verify and show a node's or the broker's audit log.

* ``audit export --config node.toml|broker.toml --out FILE`` writes the log and
  its checkpoints as JSON Lines (see :func:`samenloop.policies.audit.encode_export`).
* ``audit verify FILE --covenant COVENANT`` checks an export against the
  owner's key in the covenant; ``audit verify --config CONFIG`` checks the
  database itself. Success prints one line; a fault exits non-zero naming the
  first entry altered or missing.
* ``audit show FILE|--config CONFIG`` lists entries, filtered, as a table or JSON lines.
  Actors and details can be other parties' text (officer names) and an export can
  come from elsewhere: the table shows them as plain text
  (:mod:`samenloop.policies.terminal`).

An adapter: it opens the database (by table name, through
:mod:`samenloop.policies.audit_store`) and names the daemons' migrations
packages as strings, so that ``policies`` still imports neither daemon.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from samenloop.policies import terminal
from samenloop.policies.errors import ConfigurationError, InvalidInput
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from samenloop.policies import audit, covenant
    from samenloop.policies.audit import AuditEntry

NODE_MIGRATIONS = "samenloop.node.daemon.migrations"
BROKER_MIGRATIONS = "samenloop.broker.migrations"


#: ``--kind``: the values of ``AuditKind``, written out so that registering imports no
#: audit code (a test compares them; add a kind to both).
AUDIT_KINDS: Final = (
    "token_submission",
    "token_withdrawal",
    "token_expiry",
    "hit_notice",
    "covenant_accepted",
    "covenant_rejected",
    "covenant_published",
    "party_removed",
    "covenant_timestamp",
    "covenant_freshness",
    "disclosure_requested",
    "disclosure_received",
    "disclosure_decision",
    "disclosure_approved",
    "disclosure_denied",
    "disclosure_released",
    "disclosure_refused",
    "oprf_evaluation",
    "signal_added",
    "signal_withdrawn",
    "signal_expired",
    "case_event",
    "picture_event",
    "network_event",
    "envelope_relayed",
    "local_api_refused",
    "mailbox_item_set_aside",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="export, verify and show audit logs")
    commands = parser.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)

    export = commands.add_parser("export", help="write a node's or the broker's log to a file")
    export.add_argument("--config", type=Path, required=True, help="node.toml or broker.toml")
    export.add_argument("--out", type=Path, required=True, help="export file (JSON Lines)")
    export.set_defaults(func=_export)

    verify = commands.add_parser("verify", help="check a log's hash chain and signed checkpoints")
    verify.add_argument("file", nargs="?", type=Path, help="an export (with --covenant)")
    verify.add_argument("--covenant", type=Path, help="the covenant that lists the owner's key")
    verify.add_argument("--config", type=Path, help="node.toml or broker.toml: check its database")
    verify.add_argument(
        "--against",
        type=Path,
        action="append",
        default=[],
        metavar="EARLIER_EXPORT",
        help="also check the signed checkpoints of an earlier export kept elsewhere: a log cut "
        "off after one of them, or rewritten since, fails (repeatable)",
    )
    verify.set_defaults(func=_verify)

    show = commands.add_parser("show", help="list a log's entries")
    show.add_argument("file", nargs="?", type=Path, help="an export")
    show.add_argument("--config", type=Path, help="node.toml or broker.toml: read its database")
    show.add_argument("--kind", choices=AUDIT_KINDS, help="only this kind")
    show.add_argument("--actor", help="only entries by this party or officer")
    show.add_argument("--subject", help="only entries about this id (hex)")
    show.add_argument("--since", type=_time, help="from this time on (ISO 8601)")
    show.add_argument("--until", type=_time, help="before this time (ISO 8601)")
    show.add_argument("--limit", type=_positive, help="at most this many entries")
    show.add_argument("--json", action="store_true", help="print JSON lines")
    show.set_defaults(func=_show)


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


# --- where a log lives ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Log:
    """A daemon's log as its configuration describes it: owner, owner's key, database."""

    owner: str
    owner_key: bytes
    database_url: str
    migrations: str


def load_covenant_file(path: Path) -> covenant.Covenant:
    """A signed covenant (checked against its own signers) or a covenant's TOML."""
    from samenloop.policies import covenant, trust

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read covenant {path}: {error.strerror}", field=str(path)
        ) from error
    if data.lstrip().startswith(b"{"):
        return trust.verify_self_signed(trust.SignedCovenant.from_json(data, source=str(path)))
    return covenant.covenant_from_toml(data, source=str(path))


def owner_key(held: covenant.Covenant, owner: str) -> bytes:
    """The Ed25519 key that signs ``owner``'s checkpoints: the broker's or a party's."""
    if owner == held.broker.id:
        return held.broker.ed25519
    return held.public_keys(owner).ed25519


def _log(config_path: Path) -> _Log:
    from samenloop.policies.config import NodeConfig, load_config

    config = load_config(config_path)
    held = load_covenant_file(config.covenant)
    if isinstance(config, NodeConfig):
        return _Log(
            config.party, owner_key(held, config.party), config.database_url, NODE_MIGRATIONS
        )
    return _Log(held.broker.id, held.broker.ed25519, config.database_url, BROKER_MIGRATIONS)


@contextmanager
def _reading(log: _Log) -> Iterator[Connection]:
    """One read transaction on the log's database, at its schema head."""
    from samenloop.policies import database

    engine = database.make_engine(log.database_url)
    try:
        database.check_at_head(engine, log.migrations)
        with engine.connect() as conn:
            conn.execution_options(**database.READ_ONLY)
            with conn.begin():
                yield conn
    finally:
        engine.dispose()


def _read_export(path: Path) -> audit.AuditExport:
    from samenloop.policies import audit

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {path}: {error.strerror}", field=str(path)
        ) from error
    try:
        return audit.parse_export(data)
    except InvalidInput as error:
        raise InvalidInput(
            error.message, field=f"{path}: {error.field}", reason=error.reason
        ) from None


def _one_source(args: argparse.Namespace) -> None:
    if (args.file is None) == (args.config is None):
        raise ConfigurationError("give an export FILE or --config, not both", field="--config")


# --- the commands --------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from samenloop.policies import audit_store

    log = _log(args.config)
    now = datetime.now(UTC)
    with _reading(log) as conn:
        lines = list(audit_store.export_lines(conn, owner=log.owner, now=now))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="ascii")
    types = [json.loads(line).get("type") for line in lines[1:]]
    print(
        f"{log.owner}: {types.count('entry')} audit entries and "
        f"{types.count('checkpoint')} checkpoints -> {out}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from samenloop.policies import audit, audit_store

    _one_source(args)
    if args.config is not None:
        if args.covenant is not None:
            raise ConfigurationError(
                "--config takes the covenant from the configuration", field="--covenant"
            )
        log = _log(args.config)
        with _reading(log) as conn:
            entries, held = audit_store.read(conn), audit_store.checkpoints(conn)
        summary = audit.verify_log(
            entries, [*held, *_kept(args.against, log.owner)], log.owner_key, owner=log.owner
        )
        owner = log.owner
    else:
        if args.covenant is None:
            raise ConfigurationError(
                "give --covenant: the owner's key is looked up there", field="--covenant"
            )
        exported = _read_export(args.file)
        key = owner_key(load_covenant_file(args.covenant), exported.log_owner)
        kept = _kept(args.against, exported.log_owner)
        summary = audit.verify_log(
            exported.entries, [*exported.checkpoints, *kept], key, owner=exported.log_owner
        )
        owner = exported.log_owner
    print(f"{printable(owner)}: audit log verified: {summary.describe()}")
    return 0


def _kept(paths: list[Path], owner: str) -> list[bytes]:
    """The signed checkpoints of earlier exports of the same log, kept elsewhere: the log's
    own checkpoints cannot show that its newest entries were cut off together with them."""
    kept: list[bytes] = []
    for path in paths:
        earlier = _read_export(path)
        if earlier.log_owner != owner:
            raise ConfigurationError(
                f"{path} is the log of {earlier.log_owner}, not of {owner}", field="--against"
            )
        kept += earlier.checkpoints
    return kept


def entry_to_json(entry: AuditEntry) -> dict[str, Any]:
    """An entry as a JSON object, as ``audit show --json`` prints it."""
    return {
        "seq": entry.seq,
        "at": entry.at.isoformat(),
        "kind": entry.kind.value,
        "actor": entry.actor,
        "subject": list(entry.subject),
        "details": dict(entry.details),
        "hash": entry.hash.hex(),
    }


def _show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from samenloop.policies import audit, audit_store
    from samenloop.policies.audit import AuditKind

    _one_source(args)
    kind = None if args.kind is None else AuditKind(args.kind)
    filters: dict[str, Any] = {
        "kind": kind,
        "actor": args.actor,
        "subject": args.subject,
        "since": args.since,
        "until": args.until,
        "limit": args.limit,
    }
    if args.config is not None:
        log = _log(args.config)
        with _reading(log) as conn:
            entries = audit_store.read(conn, **filters)
        owner = log.owner
    else:
        exported = _read_export(args.file)
        entries = audit.filter_entries(exported.entries, **filters)
        owner = exported.log_owner
    if args.json:
        for entry in entries:
            print(terminal.dumps(entry_to_json(entry), sort_keys=True))
        return 0
    table = Table(title=f"audit log of {printable(owner)}")
    for name in ("seq", "at", "kind", "actor", "subject", "details"):
        table.add_column(name, overflow="fold")
    for entry in entries:
        table.add_row(
            str(entry.seq),
            entry.at.strftime("%Y-%m-%d %H:%M:%S"),
            entry.kind.value,
            printable(entry.actor),
            printable(" ".join(entry.subject)),
            printable(" ".join(f"{k}={v}" for k, v in entry.details.items())),
        )
    terminal.show_table(terminal.console(), table)
    return 0
