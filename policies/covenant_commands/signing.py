"""``covenant sign`` and ``covenant verify``: signers sign one after another into the
same signed JSON file; verify checks a signed covenant on its own or as the successor
of another, naming the rejection reason.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from samenloop.policies.covenant import covenant_from_toml
from samenloop.policies.covenant_commands.common import (
    is_json,
    load_signed,
    read_file,
    rejected,
    valid_signers,
    write_file,
)
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import ConfigurationError, CovenantRejected
from samenloop.policies.trust import SignedCovenant, TrustState, sign_covenant, verify_self_signed


def sign_command(args: argparse.Namespace) -> int:
    data = read_file(args.file)
    if is_json(data):
        signed = SignedCovenant.from_json(data, source=str(args.file))
        default_out: Path = args.file
    else:
        draft = covenant_from_toml(data, source=str(args.file))
        signed = SignedCovenant.of(draft)
        default_out = Path(args.file).with_suffix(".json")
    out: Path = args.out or default_out
    if out.resolve() == Path(args.file).resolve() and not is_json(data):
        raise ConfigurationError(
            "--out would overwrite the draft with the signed covenant; choose a .json file",
            field="--out",
        )
    if out != args.file and out.exists():
        existing = load_signed(out)
        if existing.body == signed.body:
            for signature in existing.signatures:
                if all(s.signer != signature.signer for s in signed.signatures):
                    signed = signed.with_signature(signature)
        elif not args.force:
            raise ConfigurationError(
                f"{out} holds another covenant (or another version of it); choose another "
                "--out or use --force to replace it",
                field="--out",
            )
    keys = PartyKeys.load(args.key)
    signed = sign_covenant(signed, args.signer, keys.signing_key)
    covenant = signed.unverified()
    write_file(out, signed.to_json())
    names = ", ".join(s.signer for s in signed.signatures)
    print(
        f"signed {covenant.id} version {covenant.version} as {args.signer} -> {out}: "
        f"{len(signed.signatures)} of threshold {covenant.signing.threshold} ({names})"
    )
    return 0


def verify_command(args: argparse.Namespace) -> int:
    signed = load_signed(args.file)
    now: datetime = args.at or datetime.now(UTC)
    try:
        if args.previous is None:
            covenant = verify_self_signed(signed, now=now)
            how = "on its own signers"
        else:
            state = TrustState(load_signed(args.previous))
            held = state.covenant
            checked = state.verify(signed, now=now)
            if checked is None:
                print(f"OK: {args.file} is the same as {args.previous} (version {held.version})")
                return 0
            covenant = checked
            how = f"as the successor of version {held.version}"
    except CovenantRejected as error:
        raise rejected(error, args.file) from error
    good = valid_signers(signed, covenant.signing)
    print(
        f"OK: covenant {covenant.id} version {covenant.version}, checked {how} at {now.isoformat()}"
    )
    print(
        f"  signed by {', '.join(good)}: {len(good)} of threshold {covenant.signing.threshold}; "
        f"valid {covenant.valid_from.isoformat()} to {covenant.valid_until.isoformat()}"
    )
    return 0
