"""``covenant replace-signer``: give a signer a new key (a lost laptop, an administrator who
leaves), and the check that a new signer or timestamp key is no other key of the covenant.

A new version must be signed by the threshold of the held version's signers *and* of its
own (:mod:`samenloop.policies.trust`), and a signature is matched to a signer by id. So:

* keeping the id, the replaced signer signs neither half: the held version knows it by
  its old key, the new one by its new key, and a signature that does not verify under
  the key listed rejects the whole version. The *other* signers must reach the
  threshold on their own; the command refuses a replacement they cannot carry.
* with ``--new-id``, the new key signs under the new id (counting for the new version),
  and the old key, if its holder still has it, under the old id (counting for the
  held version).

From the version after, the old key counts for nothing: a version it signs is refused
(``covenant.bad_signature`` when the id stayed, ``covenant.under_signed`` when it left).

The timestamp role's key is replaced with ``covenant set signing.timestamp_ed25519``,
which goes through :func:`check_key_unused` as well.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from samenloop.policies import certs, crypto
from samenloop.policies.covenant import Covenant
from samenloop.policies.covenant_commands.common import (
    build_checked,
    load_draft,
    public_keys_file,
    save_draft,
)
from samenloop.policies.errors import InvalidInput, NotFound
from samenloop.policies.policy import Signer

__all__ = ["check_key_unused", "replace_signer_command"]


def keys_in_use(covenant: Covenant) -> list[tuple[str, bytes]]:
    """Every Ed25519 public key the covenant lists, with the field that lists it."""
    used = [
        (f"signing.signers[{i}].ed25519", signer.ed25519)
        for i, signer in enumerate(covenant.signing.signers)
    ]
    used.append(("signing.timestamp_ed25519", covenant.signing.timestamp_ed25519))
    used.append(("broker.ed25519", covenant.broker.ed25519))
    used.extend(
        (f"parties[{i}].keys.ed25519", party.keys.ed25519)
        for i, party in enumerate(covenant.parties)
    )
    return used


def check_key_unused(covenant: Covenant, key: bytes, *, field: str, own: str) -> None:
    """Refuse ``key`` if the covenant lists it anywhere but at the field ``own`` (the key
    it replaces, refused too: a replacement must be new), naming that field: a signer's
    key must sign nothing else, and the timestamp key must be able to sign no covenant
    and belong to no party nor the broker's operator."""
    for listed_at, listed in keys_in_use(covenant):
        if not crypto.equal(listed, key):
            continue
        if listed_at == own:
            raise InvalidInput(
                f"is the key {own} already holds: a replacement needs a new key "
                "('covenant signer-keygen')",
                field=field,
                reason="covenant.key_reused",
            )
        raise InvalidInput(
            f"is the key of {listed_at}: every signer, the timestamp role, the broker and "
            "each party need a key of their own",
            field=field,
            reason="covenant.key_reused",
        )


def _signers(ids: list[str]) -> str:
    return ", ".join(ids) if ids else "none"


def replace_signer_command(args: argparse.Namespace) -> int:
    covenant = load_draft(args.draft)
    signing = covenant.signing
    index = next((i for i, s in enumerate(signing.signers) if s.id == args.signer), None)
    if index is None:
        listed = ", ".join(s.id for s in signing.signers)
        raise NotFound(
            f"{args.signer!r} is not a signer of {covenant.id} (signers: {listed})",
            field="--signer",
        )
    old = signing.signers[index]
    new_id: str = args.new_id or old.id
    if args.new_id is not None:
        certs.check_id(new_id, field="--new-id")
        if new_id == old.id:
            raise InvalidInput("is the signer's id already; leave --new-id out", field="--new-id")
        if signing.signer(new_id) is not None:
            raise InvalidInput(f"{new_id!r} is another signer already", field="--new-id")
    keys = public_keys_file(args.public_keys, field="--public-keys", owner=new_id)
    check_key_unused(
        covenant, keys.ed25519, field="--public-keys", own=f"signing.signers[{index}].ed25519"
    )
    others = [s.id for s in signing.signers if s.id != old.id]
    threshold = signing.threshold
    if new_id == old.id and len(others) < threshold:
        raise InvalidInput(
            f"keeping the id, {old.id} can sign the new version with neither key (the held "
            f"version knows it by the old one, the new version by the new one), and the "
            f"{len(others)} other signer(s) ({_signers(others)}) are fewer than the threshold "
            f"{threshold}: give the new key another id with --new-id",
            field="--signer",
            reason="covenant.under_signed",
        )
    signer = build_checked(
        lambda: Signer(id=new_id, name=args.name or old.name, ed25519=keys.ed25519),
        field=f"signing.signers[{index}]",
    )
    signers = (*signing.signers[:index], signer, *signing.signers[index + 1 :])
    updated_signing = build_checked(lambda: replace(signing, signers=signers), field="signing")
    updated = replace(covenant, version=covenant.version + 1, signing=updated_signing)
    save_draft(args.draft, updated)
    old_print, new_print = crypto.fingerprint(old.ed25519), crypto.fingerprint(keys.ed25519)
    named = old.id if new_id == old.id else f"{old.id} -> {new_id}"
    print(
        f"replaced signer {named} of {updated.id}: key {old_print} -> {new_print}, version "
        f"{covenant.version} -> {updated.version}"
    )
    if new_id == old.id:
        print(
            f"sign it by {threshold} of {_signers(others)} ({old.id} signs neither with the old "
            "key nor the new one); once published, the old key counts for nothing"
        )
    else:
        print(
            f"sign it by {threshold} of the held signers ({_signers(others)}, and {old.id} "
            f"with its old key if it still has it) and {threshold} of the new "
            f"({_signers([*others, new_id])}, {new_id} with its new key); once published, "
            f"the old key of {old.id} counts for nothing"
        )
    return 0
