"""``samenloop node``: the node's set-up commands and ``node status``.

The status can quote the broker's error text: it is shown as plain text
(:mod:`samenloop.policies.terminal`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from samenloop.node.signals.commands import add_node_options, open_client
from samenloop.policies import terminal
from samenloop.policies.cli import add_node_config
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from samenloop.node.client import NodeStatus


#: ``node status``'s exit code when the node runs but is not connected to the broker:
#: the CLI's code for "try again later" (``Status.UNAVAILABLE``).
EXIT_NOT_CONNECTED: Final = 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("node", help="the partner's node")
    commands = parser.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    keygen = commands.add_parser("keygen", help="generate this party's signing and sealing keys")
    keygen.add_argument("--party", required=True, help="party id as the covenant will list it")
    keygen.add_argument("--out", type=Path, required=True, help="secret key file (written 0600)")
    keygen.add_argument(
        "--public-out", type=Path, help="public keys file to hand to the administrators"
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(func=_keygen)

    status = commands.add_parser(
        "status",
        help="the running node's health: broker connection, covenant, counts",
        description="The running node's health. The broker address shown is the one the node "
        "dials now (of node.toml's brokers, after a failover the next one), connected or not.",
        epilog=f"exit status: 0 when the node is connected to the broker; {EXIT_NOT_CONNECTED} "
        "when it is not (connecting or disconnected: the status is printed all the same) or "
        "when the node itself does not answer; 2 when the options or node.toml are wrong; "
        "4 when the node refuses the API token",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    add_node_options(status)
    status.set_defaults(func=_status)

    serve = commands.add_parser("serve", help="run the node until SIGTERM")
    add_node_config(serve, dest="config", required=True)
    serve.set_defaults(func=_serve)
    migrate = commands.add_parser("migrate", help="bring the node's database to this version")
    add_node_config(migrate, dest="config", required=True)
    migrate.set_defaults(func=_migrate)
    backup = commands.add_parser(
        "backup", help="back up the node's database (SQLite) while the node runs"
    )
    add_node_config(backup, dest="config", required=True)
    backup.add_argument(
        "--out", type=Path, required=True, help="the backup file to write (new, 0600)"
    )
    backup.set_defaults(func=_backup)
    restore = commands.add_parser(
        "restore",
        help="install a backup as the node's database (node stopped); it then catches up",
    )
    add_node_config(restore, dest="config", required=True)
    source = restore.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", type=Path, help="a file of 'node backup'")
    source.add_argument(
        "--in-place",
        action="store_true",
        help="the database holds a backup already (PostgreSQL's pg_restore, or a file put "
        "back by hand): only mark it restored",
    )
    restore.set_defaults(func=_restore)


def _serve(args: argparse.Namespace) -> int:
    from samenloop.node.daemon import process as daemon

    return daemon.serve(args.config)


def _migrate(args: argparse.Namespace) -> int:
    from samenloop.node.daemon import process as daemon

    return daemon.migrate(args.config)


def _backup(args: argparse.Namespace) -> int:
    from samenloop.node.daemon.backup import node_backup

    return node_backup(args.config, args.out)


def _restore(args: argparse.Namespace) -> int:
    from samenloop.node.daemon.backup import node_restore, node_restore_in_place

    if args.in_place:
        return node_restore_in_place(args.config)
    return node_restore(args.config, args.source)


def _keygen(args: argparse.Namespace) -> int:
    from samenloop.policies import crypto
    from samenloop.policies.crypto import PartyKeys

    out: Path = args.out
    if out.exists() and not args.force:
        raise ConfigurationError(
            f"{out} exists; refusing to overwrite keys (use --force)", field="--out"
        )
    keys = PartyKeys.generate(args.party)
    keys.save(out)
    public_out: Path = args.public_out or out.with_name(out.stem + ".public.json")
    public = keys.public()
    public_out.write_bytes(public.to_json(args.party))
    print(f"{args.party}: secret keys -> {out} (0600), public keys -> {public_out}")
    print(
        f"  ed25519 {crypto.fingerprint(public.ed25519)}"
        f"  x25519 {crypto.fingerprint(public.x25519)}"
    )
    return 0


def status_to_json(status: NodeStatus) -> dict[str, Any]:
    """The node's status as a JSON object."""
    holder = status.key_holder
    return {
        "party": status.party,
        "software_version": status.software_version,
        "broker_connection": status.broker_connection,
        "broker_address": status.broker_address,
        "last_connected": None
        if status.last_connected is None
        else status.last_connected.isoformat(),
        "last_error": status.last_error,
        "covenant_id": status.covenant_id,
        "covenant_version": status.covenant_version,
        "key_epoch": status.key_epoch,
        "active_signals": status.active_signals,
        "outbox_pending": status.outbox_pending,
        "open_hits": status.open_hits,
        "mailbox_acked_cursor": status.mailbox_acked_cursor,
        "pending_approvals": status.pending_approvals,
        "covenant_fresh": status.covenant_fresh,
        "covenant_fresh_until": None
        if status.covenant_fresh_until is None
        else status.covenant_fresh_until.isoformat(),
        "covenant_stale_reason": status.covenant_stale_reason,
        "key_rotation": None
        if not status.staged_key_epoch
        else {
            "staged_key_epoch": status.staged_key_epoch,
            "restated": status.rotation_restated,
            "live": status.rotation_live,
        },
        "key_holder": None
        if holder is None
        else {
            "seats": [{"key_epoch": e, "holder_index": i} for e, i in holder.seats],
            "channel_open": holder.channel_open,
            "requests_served": holder.requests_served,
            "elements_evaluated": holder.elements_evaluated,
            "requests_refused": holder.requests_refused,
        },
    }


def _status(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    with open_client(args) as client:
        status = client.status()
    shown = status_to_json(status)
    connected = status.broker_connection == "connected"
    if not connected:  # on stderr: a script that reads the JSON still sees why it failed
        message = (
            f"samenloop: node {printable(status.party)} is not connected to the broker "
            f"({status.broker_connection}, dialling {printable(status.broker_address)})"
        )
        print(terminal.fitted(message), file=sys.stderr)
    if args.json:
        print(terminal.dumps(shown, indent=2))
        return 0 if connected else EXIT_NOT_CONNECTED
    table = Table(title=Text(f"node {printable(status.party)}"), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    holder = shown.pop("key_holder")
    rotation = shown.pop("key_rotation")
    for name, value in shown.items():
        table.add_row(name.replace("_", " "), "" if value is None else printable(str(value)))
    if rotation is not None:
        table.add_row(
            "key rotation",
            f"epoch {rotation['staged_key_epoch']} staged: {rotation['restated']} of "
            f"{rotation['live']} identifiers re-tokenised",
        )
    if holder is not None:
        seats = ", ".join(f"{s['holder_index']} (epoch {s['key_epoch']})" for s in holder["seats"])
        table.add_row("key holder seats", seats)
        table.add_row("holder channel", "open" if holder["channel_open"] else "closed")
        table.add_row(
            "evaluations",
            f"{holder['requests_served']} served, {holder['elements_evaluated']} elements, "
            f"{holder['requests_refused']} refused",
        )
    terminal.show_table(terminal.console(), table)
    return 0 if connected else EXIT_NOT_CONNECTED
