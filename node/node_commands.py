"""``samenloop node``: the node's own set-up commands (the daemon follows in its own issue)."""

from __future__ import annotations

import argparse
from pathlib import Path

from samenloop.policies import crypto
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import ConfigurationError


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


def _keygen(args: argparse.Namespace) -> int:
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
