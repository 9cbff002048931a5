"""``covenant init``, ``signer-keygen``, ``add-party``, ``remove-party``,
``rotate-attribute-key`` and ``set``: writing and editing a draft covenant (TOML).

Every edit bumps the version; an edit that changes who holds the attribute key deals
a new key version to the parties it then lists (this process knows the key while it
runs, and keeps it nowhere).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from samenloop.policies import certs, crypto
from samenloop.policies.covenant import (
    MAX_UINT32,
    BrokerInfo,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
    deal_attribute_key,
    with_new_attribute_key,
)
from samenloop.policies.covenant_commands.common import (
    build_checked,
    load_draft,
    parse_role,
    parse_time,
    public_keys_file,
    read_file,
    save_draft,
    split_spec,
    write_file,
)
from samenloop.policies.covenant_commands.signers import check_key_unused
from samenloop.policies.crypto import PartyKeys, PublicKeys, SignatureContext
from samenloop.policies.errors import ConfigurationError, InvalidInput, InvalidSignature, NotFound
from samenloop.policies.freshness import MAX_CLOCK_SKEW as CLOCK_SKEW_ALLOWED
from samenloop.policies.policy import Signer, Signing, example_policy
from samenloop.v1 import common_pb2, keyholder_pb2

#: The values ``covenant set`` changes, with how each is parsed and applied.
SETTABLE = (
    "valid_from",
    "valid_until",
    "matching.min_parties",
    "quotas.oprf_evaluations_per_day",
    "quotas.disclosure_requests_per_day",
    "quotas.token_entries_per_day",
    "quotas.token_entries_held",
    "quotas.hit_notice_bytes_per_day",
    "quotas.envelopes_per_day",
    "quotas.envelope_bytes_per_day",
    "quotas.envelope_bytes_waiting",
    "retention.default_days",
    "signing.threshold",
    "signing.timestamp_ed25519",
    "signing.freshness_seconds",
)


#: The broker's quotas of hit notices and envelopes, set alike.
_BROKER_TRAFFIC_QUOTAS = frozenset(
    {
        "quotas.hit_notice_bytes_per_day",
        "quotas.envelopes_per_day",
        "quotas.envelope_bytes_per_day",
        "quotas.envelope_bytes_waiting",
    }
)


def read_key_epoch(
    data: bytes, admin: PublicKeys, *, admin_id: str, covenant_id: str, source: str
) -> OprfKeyEpoch:
    """The covenant's view of a ``keyholder deal`` epoch file, after checking its signature.

    The file is a ``Signed`` ``KeyEpoch`` in protobuf's JSON mapping, signed by
    the administrator who dealt it; the node checks the commitments' algebra.
    """
    signed = common_pb2.Signed()
    try:
        json_format.Parse(data, signed)
    except (json_format.ParseError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{source} is not a key epoch file: {error}", field=source) from (
            error
        )
    if signed.context != SignatureContext.KEY_EPOCH.value or signed.signer != admin_id:
        raise InvalidSignature(
            f"{source} is not a key epoch signed by {admin_id}", field=f"{source}: signer"
        )
    crypto.verify(
        admin.ed25519,
        SignatureContext.KEY_EPOCH,
        signed.body,
        signed.signature,
        field=f"{source}: signature",
    )
    message = keyholder_pb2.KeyEpoch()
    try:
        message.ParseFromString(signed.body)
    except DecodeError as error:
        raise InvalidInput(f"{source} has a malformed body", field=source) from error
    if message.covenant_id != covenant_id:
        raise InvalidInput(
            f"{source} is a key epoch of covenant {message.covenant_id!r}, not {covenant_id!r}",
            field="--key-epoch",
        )
    return build_checked(
        lambda: OprfKeyEpoch(
            epoch=message.epoch,
            threshold=message.threshold,
            group_public_key=message.group_public_key,
            holders=tuple(
                KeyHolderSeat(index=h.index, party=h.party, commitment=h.commitment)
                for h in message.holders
            ),
            created_at=message.created_at.ToDatetime(tzinfo=UTC),
            retire_after=message.retire_after.ToDatetime(tzinfo=UTC),
        ),
        field="key_epoch",
    )


def init_command(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise ConfigurationError(
            f"{out} exists; refusing to overwrite (use --force)", field="--out"
        )
    if args.broker_key is not None:
        broker_ed25519 = public_keys_file(args.broker_key, field="--broker-key").ed25519
    else:
        try:
            broker_ed25519 = crypto.b64decode(args.broker_ed25519, 32)
        except ValueError as error:
            raise InvalidInput(
                "must be standard base64 of 32 bytes", field="--broker-ed25519"
            ) from error
    signers = []
    for i, value in enumerate(args.signer):
        signer_id, name, file = split_spec(
            value, 3, field=f"--signer[{i}]", form="ID:NAME:PUBLIC_KEYS_FILE"
        )
        keys = public_keys_file(Path(file), field=f"--signer[{i}]", owner=signer_id)
        signers.append(
            build_checked(
                partial(Signer, id=signer_id, name=name, ed25519=keys.ed25519),
                field=f"signing.signers[{i}]",
            )
        )
    threshold = len(signers) if args.threshold is None else args.threshold
    timestamp_key = public_keys_file(args.timestamp_key, field="--timestamp-key").ed25519
    signing = build_checked(
        lambda: Signing(
            threshold=threshold,
            signers=tuple(signers),
            timestamp_ed25519=timestamp_key,
            freshness_seconds=args.freshness_seconds,
        ),
        field="signing",
    )
    parties = []
    for i, value in enumerate(args.party):
        party_id, name, role_text, file = split_spec(
            value, 4, field=f"--party[{i}]", form="ID:NAME:ROLE:PUBLIC_KEYS_FILE"
        )
        role = parse_role(role_text, field=f"parties[{i}].role")
        keys = public_keys_file(Path(file), field=f"--party[{i}]", owner=party_id)
        parties.append(
            build_checked(
                partial(Party, id=party_id, name=name, role=role, keys=keys),
                field=f"parties[{i}]",
            )
        )
    admin_id, admin_keys = PublicKeys.from_json(
        read_file(args.key_epoch_admin), source=str(args.key_epoch_admin)
    )
    key_epoch = read_key_epoch(
        read_file(args.key_epoch),
        admin_keys,
        admin_id=admin_id,
        covenant_id=args.id,
        source=str(args.key_epoch),
    )
    if not 1 <= args.attribute_key_version <= MAX_UINT32:
        raise InvalidInput(f"must be 1..{MAX_UINT32}", field="--attribute-key-version")
    ca_certificate = read_file(args.ca_cert)
    ca_covenant = certs.CertificateAuthority.made_for(ca_certificate, field="--ca-cert")
    if ca_covenant not in (None, args.id):
        raise InvalidInput(
            f"{args.ca_cert} is the CA of covenant {ca_covenant!r}, not {args.id!r}: make this "
            f"covenant's with 'samenloop covenant ca-init --id {args.id}'",
            field="--ca-cert",
        )
    # By default a few minutes ago, the clock skew every party allows: a node whose clock is
    # a little behind the administrator's takes the first version, not 'not yet valid'.
    valid_from = args.valid_from or (datetime.now(UTC) - CLOCK_SKEW_ALLOWED).replace(microsecond=0)
    if not 1 <= args.valid_days <= certs.MAX_DAYS:
        raise InvalidInput(f"must be 1..{certs.MAX_DAYS}", field="--valid-days")
    broker = build_checked(
        lambda: BrokerInfo(id=args.broker_id, address=args.broker_address, ed25519=broker_ed25519),
        field="broker",
    )
    covenant = Covenant(
        id=args.id,
        version=1,
        broker=broker,
        parties=deal_attribute_key(args.id, args.attribute_key_version, parties),
        key_epoch=key_epoch,
        ca_certificate=ca_certificate,
        attribute_key_version=args.attribute_key_version,
        valid_from=valid_from,
        valid_until=valid_from + timedelta(days=args.valid_days),
        signing=signing,
        policy=example_policy(min_parties=args.min_parties),
    )
    save_draft(out, covenant)
    print(
        f"draft covenant {covenant.id} version 1 -> {out}: {len(parties)} parties, "
        f"{len(signers)} signers (threshold {threshold}), key epoch {key_epoch.epoch}, "
        f"attribute key version {covenant.attribute_key_version} sealed to each party, "
        f"valid until {covenant.valid_until.isoformat()}"
    )
    print("review the rules in the file, then: samenloop covenant sign ... by each signer")
    return 0


def signer_keygen_command(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise ConfigurationError(
            f"{out} exists; refusing to overwrite keys (use --force)", field="--out"
        )
    certs.check_id(args.id, field="--id")
    keys = PartyKeys.generate(args.id)
    keys.save(out)
    public = keys.public()
    public_out: Path = args.public_out or out.with_name(out.stem + ".public.json")
    write_file(public_out, public.to_json(args.id))
    print(f"signer {args.id}: secret key -> {out} (0600), public keys -> {public_out}")
    print(f"  ed25519 public key {crypto.b64encode(public.ed25519)}")
    print(f"  fingerprint {crypto.fingerprint(public.ed25519)}")
    return 0


def add_party_command(args: argparse.Namespace) -> int:
    covenant = load_draft(args.file)
    if covenant.is_party(args.id):
        raise InvalidInput(f"{args.id!r} is already a party of {covenant.id}", field="--id")
    role = parse_role(args.role, field="--role")
    keys = public_keys_file(args.keys, field="--keys", owner=args.id)
    at = f"parties[{len(covenant.parties)}]"
    party = build_checked(lambda: Party(id=args.id, name=args.name, role=role, keys=keys), field=at)
    updated = with_new_attribute_key(
        covenant, (*covenant.parties, party), version=covenant.version + 1
    )
    save_draft(args.file, updated)
    print(
        f"added {party.id} ({party.role.value}) to {updated.id}: version {covenant.version} -> "
        f"{updated.version}, attribute key version {updated.attribute_key_version} dealt to "
        f"every party ({party.id} reads categories sealed from now on); sign and publish the "
        "new version"
    )
    if updated.policy.visibility_for(role) is None:
        print(f"note: no visibility rule for role {role.value!r}: it will not be told of hits")
    return 0


def remove_party_command(args: argparse.Namespace) -> int:
    covenant = load_draft(args.file)
    if not covenant.is_party(args.id):
        raise NotFound(f"{args.id!r} is not a party of {covenant.id}", field="--id")
    seats = covenant.seats_in_live_epochs(args.id)
    if seats:
        raise InvalidInput(
            f"{args.id!r} holds key-holder seat {seats[0][1].index} of key epoch "
            f"{seats[0][0]}: deal a new key epoch without it "
            "('samenloop keyholder deal'), put that epoch in the covenant, then remove the party",
            field="--id",
            reason="covenant.key_holder",
        )
    remaining = tuple(p for p in covenant.parties if p.id != args.id)
    if len(remaining) < max(2, covenant.min_parties):
        raise InvalidInput(
            f"removing {args.id!r} leaves {len(remaining)} parties; the covenant needs at least "
            f"{max(2, covenant.min_parties)} (matching.min_parties is {covenant.min_parties})",
            field="--id",
            reason="covenant.too_few_parties",
        )
    updated = with_new_attribute_key(covenant, remaining, version=covenant.version + 1)
    save_draft(args.file, updated)
    print(
        f"removed {args.id} from {updated.id}: version {covenant.version} -> {updated.version}, "
        f"attribute key version {updated.attribute_key_version} dealt to the "
        f"{len(remaining)} parties that remain; once signed and published, the party is cut "
        "off at once and cannot read categories sealed from then on"
    )
    return 0


def rotate_attribute_key_command(args: argparse.Namespace) -> int:
    covenant = load_draft(args.file)
    updated = with_new_attribute_key(covenant, version=covenant.version + 1)
    save_draft(args.file, updated)
    print(
        f"dealt attribute key version {updated.attribute_key_version} to the "
        f"{len(updated.parties)} parties of {updated.id}: version {covenant.version} -> "
        f"{updated.version}; sign and publish the new version"
    )
    return 0


def stage_key_epoch_command(args: argparse.Namespace) -> int:
    covenant = load_draft(args.file)
    if covenant.next_key_epoch is not None:
        raise InvalidInput(
            f"key epoch {covenant.next_key_epoch.epoch} is staged already: switch to it "
            "('samenloop covenant switch-key-epoch') before staging another",
            field="next_key_epoch",
            reason="covenant.key_epoch_staged",
        )
    admin_id, admin_keys = PublicKeys.from_json(
        read_file(args.key_epoch_admin), source=str(args.key_epoch_admin)
    )
    staged = read_key_epoch(
        read_file(args.key_epoch),
        admin_keys,
        admin_id=admin_id,
        covenant_id=covenant.id,
        source=str(args.key_epoch),
    )
    updated = build_checked(
        lambda: replace(covenant, version=covenant.version + 1, next_key_epoch=staged),
        field="covenant",
    )
    save_draft(args.file, updated)
    print(
        f"staged key epoch {staged.epoch} in {updated.id}: version {covenant.version} -> "
        f"{updated.version}; sign and publish it, let the key holders accept their shares and "
        "the nodes re-tokenise ('samenloop broker rotation-status'), then "
        "'samenloop covenant switch-key-epoch'"
    )
    return 0


def switch_key_epoch_command(args: argparse.Namespace) -> int:
    covenant = load_draft(args.file)
    staged = covenant.next_key_epoch
    if staged is None:
        raise InvalidInput(
            f"version {covenant.version} stages no key epoch: 'samenloop covenant "
            "stage-key-epoch' first",
            field="next_key_epoch",
            reason="covenant.key_epoch_not_staged",
        )
    updated = build_checked(
        lambda: replace(
            covenant, version=covenant.version + 1, key_epoch=staged, next_key_epoch=None
        ),
        field="covenant",
    )
    save_draft(args.file, updated)
    print(
        f"switched {updated.id} to key epoch {staged.epoch} (epoch {covenant.key_epoch.epoch} "
        f"retires): version {covenant.version} -> {updated.version}; the broker accepts it "
        "only once every party has re-tokenised"
    )
    return 0


def _integer(text: str, *, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"must be an integer, not {text!r}", field=field) from None


def _with_value(covenant: Covenant, key: str, value: str) -> Covenant:
    policy = covenant.policy
    if key not in SETTABLE:
        raise InvalidInput(
            f"cannot set {key!r}; settable: {', '.join(SETTABLE)} (edit the TOML for anything "
            "else)",
            field="KEY",
        )
    if key == "valid_from":
        return replace(covenant, valid_from=parse_time(value, field=key))
    if key == "valid_until":
        return replace(covenant, valid_until=parse_time(value, field=key))
    if key == "signing.timestamp_ed25519":
        try:
            timestamp_key = crypto.b64decode(value, 32)
        except ValueError as error:
            raise InvalidInput(
                "must be standard base64 of a 32-byte Ed25519 public key", field=key
            ) from error
        check_key_unused(covenant, timestamp_key, field=key, own=key)
        signing = build_checked(
            lambda: replace(covenant.signing, timestamp_ed25519=timestamp_key), field="signing"
        )
        return replace(covenant, signing=signing)
    number = _integer(value, field=key)
    if key == "matching.min_parties":
        matching = build_checked(
            lambda: replace(policy.matching, min_parties=number), field="matching"
        )
        return replace(covenant, policy=replace(policy, matching=matching))
    if key == "quotas.oprf_evaluations_per_day":
        quotas = build_checked(
            lambda: replace(policy.quotas, oprf_evaluations_per_day=number), field="quotas"
        )
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "quotas.disclosure_requests_per_day":
        quotas = build_checked(
            lambda: replace(policy.quotas, disclosure_requests_per_day=number), field="quotas"
        )
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "quotas.token_entries_per_day":
        quotas = build_checked(
            lambda: replace(policy.quotas, token_entries_per_day=number), field="quotas"
        )
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "quotas.token_entries_held":
        quotas = build_checked(
            lambda: replace(policy.quotas, token_entries_held=number), field="quotas"
        )
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key in _BROKER_TRAFFIC_QUOTAS:
        name = key.removeprefix("quotas.")
        quotas = build_checked(lambda: replace(policy.quotas, **{name: number}), field="quotas")
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "retention.default_days":
        retention = build_checked(
            lambda: replace(policy.retention, default_days=number), field="retention"
        )
        return replace(covenant, policy=replace(policy, retention=retention))
    if key == "signing.threshold":
        signing = build_checked(
            lambda: replace(covenant.signing, threshold=number), field="signing"
        )
        return replace(covenant, signing=signing)
    if key == "signing.freshness_seconds":
        signing = build_checked(
            lambda: replace(covenant.signing, freshness_seconds=number), field="signing"
        )
        return replace(covenant, signing=signing)
    raise AssertionError(f"settable key {key!r} is not handled")


def set_command(args: argparse.Namespace) -> int:
    covenant = load_draft(args.file)
    updated = _with_value(covenant, args.key, args.value)
    if args.bump:
        updated = replace(updated, version=updated.version + 1)
    save_draft(args.file, updated)
    version = f"version {covenant.version} -> {updated.version}" if args.bump else "same version"
    print(f"{args.key} = {args.value} in {updated.id} ({version})")
    return 0
