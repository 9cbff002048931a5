"""``samenloop keyholder``: deal a key epoch, accept a share, show an epoch.

``deal`` is run by a covenant administrator: it draws a fresh OPRF key, seals
one share to each holder's X25519 key, and writes the epoch document (signed
with the administrator's key) and one sealed share file per holder. The whole
key is never written. ``accept`` is run by each key holder on its own machine:
it checks the administrator's signature on the epoch document, opens its
share, checks it against the published commitment and stores it owner-only.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from samenloop.policies import terminal
from samenloop.policies.errors import ConfigurationError, InvalidInput
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from samenloop.node.tokens.threshold import KeyEpoch


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keyholder", help="threshold OPRF key: deal, accept and show shares"
    )
    commands = parser.add_subparsers(dest="keyholder_command", metavar="COMMAND", required=True)

    deal = commands.add_parser("deal", help="generate a key epoch and seal a share to each holder")
    deal.add_argument("--covenant", required=True, help="covenant id the key belongs to")
    deal.add_argument("--epoch", type=int, required=True, help="key epoch number (rotation: +1)")
    deal.add_argument("--threshold", type=int, required=True, help="holders needed per evaluation")
    deal.add_argument(
        "--holder",
        action="append",
        required=True,
        metavar="PARTY=PUBLIC_KEYS_FILE",
        help="a holder and its public keys file ('samenloop node keygen'); repeat, in index order",
    )
    deal.add_argument(
        "--admin-keys",
        type=Path,
        required=True,
        help="the administrator's secret key file, which signs the epoch "
        "('samenloop covenant signer-keygen')",
    )
    deal.add_argument("--days", type=int, default=365, help="days until the epoch retires")
    deal.add_argument("--out", type=Path, required=True, help="directory for the epoch and shares")
    deal.set_defaults(func=_deal)

    accept = commands.add_parser(
        "accept", help="open a sealed share, check it, store it owner-only"
    )
    _epoch_arguments(accept)
    accept.add_argument("--share", type=Path, required=True, help="the sealed share file")
    accept.add_argument("--keys", type=Path, required=True, help="this holder's party key file")
    accept.add_argument("--out", type=Path, required=True, help="where to store the accepted share")
    accept.set_defaults(func=_accept)

    show = commands.add_parser("show", help="verify and show a key epoch")
    _epoch_arguments(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_show)


def _epoch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epoch-file", type=Path, required=True, help="the signed key-epoch file")
    parser.add_argument(
        "--admin-public-keys",
        type=Path,
        required=True,
        help="public keys file of the administrator who must have signed the epoch",
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {path}: {error.strerror}", field=str(path)
        ) from error


def _verified_epoch(args: argparse.Namespace) -> KeyEpoch:
    from samenloop.node.tokens import keysetup
    from samenloop.policies.crypto import PublicKeys

    admin, admin_keys = PublicKeys.from_json(
        _read(args.admin_public_keys), source=str(args.admin_public_keys)
    )
    return keysetup.verify_key_epoch(
        _read(args.epoch_file), admin, admin_keys, source=str(args.epoch_file)
    )


def _holder_arg(value: str) -> tuple[str, bytes]:
    from samenloop.policies.crypto import PublicKeys

    party, sep, file = value.partition("=")
    if not sep or not party or not file:
        raise InvalidInput("expected PARTY=PUBLIC_KEYS_FILE", field="--holder")
    owner, public = PublicKeys.from_json(_read(Path(file)), source=file)
    if owner != party:
        raise InvalidInput(f"{file} holds the keys of {owner}, not {party}", field="--holder")
    return party, public.x25519


def _deal(args: argparse.Namespace) -> int:
    from samenloop.node.tokens import keysetup
    from samenloop.policies import crypto
    from samenloop.policies.crypto import PartyKeys

    admin = PartyKeys.load(args.admin_keys)
    holders = [_holder_arg(v) for v in args.holder]
    epoch, sealed = keysetup.deal(
        args.covenant,
        args.epoch,
        args.threshold,
        holders,
        now=datetime.now(UTC),
        lifetime=timedelta(days=args.days),
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    epoch_path = out / f"key-epoch-{args.epoch}.json"
    epoch_path.write_bytes(keysetup.sign_key_epoch(epoch, admin))
    console = terminal.console()
    console.print(
        f"key epoch {args.epoch}: {args.threshold}-of-{len(holders)}, signed by {admin.party}, "
        f"retires {epoch.retire_after:%Y-%m-%d} -> {epoch_path}"
    )
    for share in sealed:
        path = out / f"share-{args.epoch}-{share.holder}.json"
        path.write_bytes(keysetup.sealed_share_to_json(share))
        console.print(
            f"  holder {share.holder_index} {printable(share.holder)}: sealed share -> {path}"
        )
    console.print(
        f"group public key fingerprint {crypto.fingerprint(epoch.group_public_key)}: "
        "give it to every holder out of band"
    )
    return 0


def _accept(args: argparse.Namespace) -> int:
    from samenloop.node.tokens import keysetup
    from samenloop.policies import crypto
    from samenloop.policies.crypto import PartyKeys

    epoch = _verified_epoch(args)
    sealed = keysetup.sealed_share_from_json(_read(args.share), source=str(args.share))
    keys = PartyKeys.load(args.keys)
    share = keysetup.open_share(sealed, epoch, keys)
    keysetup.save_share(args.out, epoch, share)
    print(f"share {share.index} of epoch {epoch.epoch} accepted for {keys.party} -> {args.out}")
    print(f"group public key fingerprint {crypto.fingerprint(epoch.group_public_key)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from rich.table import Table

    from samenloop.node.tokens import keysetup
    from samenloop.policies import crypto

    epoch = _verified_epoch(args)
    if args.json:
        doc = json.loads(
            json_format.MessageToJson(
                keysetup.key_epoch_to_proto(epoch), preserving_proto_field_name=True
            )
        )
        doc["verified"] = True
        print(json.dumps(doc, indent=2))
        return 0
    size = f"{epoch.threshold}-of-{len(epoch.holders)}"
    table = Table(title=f"{printable(epoch.covenant_id)} key epoch {epoch.epoch}: {size}")
    table.add_column("index", justify="right")
    table.add_column("party")
    table.add_column("commitment")
    for h in epoch.holders:
        table.add_row(str(h.index), printable(h.party), crypto.fingerprint(h.commitment))
    console = terminal.console()
    terminal.show_table(console, table)
    console.print(
        f"group public key {crypto.fingerprint(epoch.group_public_key)}; signature and "
        f"commitments verified; in force {epoch.created_at:%Y-%m-%d} "
        f"to {epoch.retire_after:%Y-%m-%d}"
    )
    return 0
