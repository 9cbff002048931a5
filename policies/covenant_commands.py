"""``samenloop covenant``: write, sign, verify, show, diff and publish the covenant.

The covenant administrators' commands (see docs/covenant.md):

* ``init`` writes a draft covenant (TOML) from the example rules, the CA, the
  broker, the signers, the parties and the key epoch that ``keyholder deal``
  wrote, and deals the attribute key to the parties; ``add-party``,
  ``remove-party`` and ``set`` edit a draft and bump its version;
  ``add-party``, ``remove-party`` and ``rotate-attribute-key`` deal a new
  attribute key version to the parties it then lists (the administrator's
  process knows the key while it runs, and keeps it nowhere); structured
  edits (rules, purposes) are made by hand in the TOML;
* ``signer-keygen`` makes a signer's key pair;
* ``sign`` adds one signer's signature (signers sign one after another into the
  same signed JSON file); ``verify`` checks a signed covenant on its own or as
  the successor of another, naming the rejection reason;
* ``show`` and ``diff`` print a covenant and the differences between two,
  every field of the model: they walk its frozen dataclasses, so a field
  added to the model shows without changes here;
* ``issue-certs`` issues the parties' and the broker's TLS certificates with the
  covenant CA; ``publish`` sends a signed covenant to the broker (with a covenant
  timestamp for it, given the timestamp key);
* ``timestamp`` signs a covenant timestamp — the short-lived statement that a
  version is current (:mod:`samenloop.policies.freshness`) — with the covenant's
  timestamp key and publishes it (or writes it to a file): the job to run from
  cron, more often than the covenant's freshness period.

An adapter (it dials the broker with grpc): the sans-IO core never imports it.
It imports neither daemon; the key-epoch document is read from its wire form.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from samenloop.policies import certs, crypto
from samenloop.policies.config import load_node_config
from samenloop.policies.covenant import (
    MAX_UINT32,
    BrokerInfo,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
    covenant_from_toml,
    covenant_to_toml,
    deal_attribute_key,
    parse_address,
    with_new_attribute_key,
)
from samenloop.policies.crypto import PartyKeys, PublicKeys, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    CovenantRejected,
    InvalidInput,
    InvalidSignature,
    NotFound,
    SamenloopError,
)
from samenloop.policies.freshness import CovenantTimestamp, issue_timestamp
from samenloop.policies.policy import (
    DEFAULT_FRESHNESS_SECONDS,
    Policy,
    Purpose,
    ReleaseRule,
    Role,
    Signer,
    Signing,
    VisibilityRule,
    example_policy,
)
from samenloop.policies.rpc import error_from_rpc
from samenloop.policies.trust import (
    SignedCovenant,
    TrustState,
    sign_covenant,
    verify_self_signed,
)
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2, keyholder_pb2

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

_T = TypeVar("_T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "covenant", help="write, sign, verify, show and publish the covenant (administrators)"
    )
    commands = parser.add_subparsers(dest="covenant_command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init",
        help="write a draft covenant from the example rules",
        description=(
            "Write a draft covenant (version 1) with the example rules of a regional RIEC "
            "covenant, the covenant CA, the broker, the signers, at least two parties and the "
            "key epoch that 'samenloop keyholder deal' wrote (its holders must be parties). "
            "Edit the rules in the TOML by hand, then sign it."
        ),
    )
    init.add_argument("--id", required=True, help="covenant id, e.g. riec-zuid-west")
    init.add_argument("--out", type=Path, required=True, help="draft covenant file (TOML)")
    init.add_argument("--ca-cert", type=Path, required=True, help="the covenant CA certificate")
    init.add_argument("--broker-id", required=True, help="the broker's id (as in its certificate)")
    init.add_argument("--broker-address", required=True, help="HOST:PORT that nodes dial")
    broker_key = init.add_mutually_exclusive_group(required=True)
    broker_key.add_argument(
        "--broker-key", type=Path, help="public keys file of the broker's signing key"
    )
    broker_key.add_argument("--broker-ed25519", help="the broker's Ed25519 public key (base64)")
    init.add_argument(
        "--signer",
        action="append",
        required=True,
        metavar="ID:NAME:PUBLIC_KEYS_FILE",
        help="a signer and its public keys file ('covenant signer-keygen'); repeat",
    )
    init.add_argument(
        "--threshold", type=int, help="signatures needed (default: every signer must sign)"
    )
    init.add_argument(
        "--timestamp-key",
        type=Path,
        required=True,
        metavar="PUBLIC_KEYS_FILE",
        help="public keys file of the timestamp key ('covenant signer-keygen --id timestamp'): "
        "held by the administrators' timestamp job, never by the broker's operator",
    )
    init.add_argument(
        "--freshness-seconds",
        type=int,
        default=DEFAULT_FRESHNESS_SECONDS,
        help="how long a covenant timestamp may vouch for a version "
        f"({DEFAULT_FRESHNESS_SECONDS}: a day)",
    )
    init.add_argument(
        "--party",
        action="append",
        required=True,
        metavar="ID:NAME:ROLE:PUBLIC_KEYS_FILE",
        help="a party, its role and its public keys file ('node keygen'); repeat, at least two",
    )
    init.add_argument(
        "--key-epoch", type=Path, required=True, help="key epoch file from 'keyholder deal'"
    )
    init.add_argument(
        "--key-epoch-admin",
        type=Path,
        required=True,
        help="public keys file of the administrator who signed the key epoch",
    )
    init.add_argument("--valid-from", type=_time, help="start of validity (default: now)")
    init.add_argument("--valid-days", type=int, default=365, help="days of validity (365)")
    init.add_argument("--min-parties", type=int, default=2, help="distinct parties per hit (2)")
    init.add_argument(
        "--attribute-key-version",
        type=int,
        default=1,
        help="version of the attribute key dealt to the parties (1)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    init.set_defaults(func=_init)

    keygen = commands.add_parser("signer-keygen", help="generate a signer's key pair")
    keygen.add_argument("--id", required=True, help="signer id as the covenant will list it")
    keygen.add_argument("--out", type=Path, required=True, help="secret key file (written 0600)")
    keygen.add_argument(
        "--public-out", type=Path, help="public keys file (default: OUT with .public.json)"
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(func=_signer_keygen)

    add = commands.add_parser(
        "add-party",
        help="add a party to a draft covenant (version + 1, new attribute key)",
        description=(
            "Add a party and deal a new attribute key version to every party, the new one "
            "included (the command cannot know the current key). The new party reads the "
            "categories sealed from this version on, not those sealed under earlier versions."
        ),
    )
    add.add_argument("file", type=Path, help="the draft covenant (TOML)")
    add.add_argument("--id", required=True, help="party id")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--role", required=True, help=f"one of: {', '.join(Role)}")
    add.add_argument(
        "--keys", type=Path, required=True, help="the party's public keys file ('node keygen')"
    )
    add.set_defaults(func=_add_party)

    remove = commands.add_parser(
        "remove-party",
        help="remove a party from a draft covenant (version + 1, new attribute key)",
        description=(
            "Remove a party and deal a new attribute key version to the parties that remain, "
            "so that the removed party cannot read categories sealed from then on. Once the "
            "new version is signed and published the party is cut off at once. A key holder "
            "cannot be removed: deal a new key epoch without it first."
        ),
    )
    remove.add_argument("file", type=Path, help="the draft covenant (TOML)")
    remove.add_argument("--id", required=True, help="party id")
    remove.set_defaults(func=_remove_party)

    rotate = commands.add_parser(
        "rotate-attribute-key",
        help="deal a new attribute key version to every party of a draft (version + 1)",
        description=(
            "Deal a fresh attribute key, one version higher, sealed to every party's X25519 "
            "key: after a hand edit that removed a party or changed a party's key, or when a "
            "party's key may have leaked. Nodes keep the older versions for older notices."
        ),
    )
    rotate.add_argument("file", type=Path, help="the draft covenant (TOML)")
    rotate.set_defaults(func=_rotate_attribute_key)

    set_ = commands.add_parser(
        "set",
        help="change one simple value of a draft covenant",
        description=(
            f"Change one of: {', '.join(SETTABLE)}. Times are ISO 8601 (UTC if no offset). "
            "For structured changes (purposes, visibility and release rules, categories, "
            "signers) edit the TOML by hand and bump 'version'; 'covenant sign' writes it "
            "back in canonical form."
        ),
    )
    set_.add_argument("file", type=Path, help="the draft covenant (TOML)")
    set_.add_argument("key", metavar="KEY", help=f"one of: {', '.join(SETTABLE)}")
    set_.add_argument("value", metavar="VALUE", help="the new value")
    set_.add_argument(
        "--bump",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="raise the version by one (default: yes)",
    )
    set_.set_defaults(func=_set)

    sign = commands.add_parser(
        "sign",
        help="add a signer's signature",
        description=(
            "Sign a draft (TOML) or a signed covenant (JSON). Signatures already in --out "
            "over the same covenant are kept, so signers can sign one after another."
        ),
    )
    sign.add_argument("file", type=Path, help="draft covenant (TOML) or signed covenant (JSON)")
    sign.add_argument("--signer", required=True, help="the signer's id")
    sign.add_argument("--key", type=Path, required=True, help="the signer's secret key file")
    sign.add_argument(
        "--out", type=Path, help="signed covenant (default: FILE itself for JSON, else .json)"
    )
    sign.add_argument(
        "--force", action="store_true", help="replace an --out file that holds another covenant"
    )
    sign.set_defaults(func=_sign)

    verify = commands.add_parser(
        "verify", help="check a signed covenant: signatures, version, validity"
    )
    verify.add_argument("file", type=Path, help="the signed covenant (JSON)")
    verify.add_argument(
        "--previous", type=Path, help="the signed version held now: check FILE as its successor"
    )
    verify.add_argument("--at", type=_time, help="check validity at this time (default: now)")
    verify.set_defaults(func=_verify)

    show = commands.add_parser("show", help="a readable summary of a covenant")
    show.add_argument("file", type=Path, help="draft covenant (TOML) or signed covenant (JSON)")
    show.add_argument("--toml", action="store_true", help="print the canonical TOML instead")
    show.set_defaults(func=_show)

    diff = commands.add_parser("diff", help="the differences between two covenant versions")
    diff.add_argument("old", type=Path, help="older covenant (TOML or signed JSON)")
    diff.add_argument("new", type=Path, help="newer covenant (TOML or signed JSON)")
    diff.add_argument("--text", action="store_true", help="a unified diff of the canonical TOML")
    diff.set_defaults(func=_diff)

    issue = commands.add_parser(
        "issue-certs", help="issue TLS certificates for the parties and the broker"
    )
    issue.add_argument("--covenant", type=Path, required=True, help="the covenant")
    issue.add_argument("--ca-key", type=Path, required=True, help="the covenant CA's key")
    issue.add_argument("--ca-cert", type=Path, required=True, help="the covenant CA certificate")
    issue.add_argument("--out", type=Path, required=True, help="directory: OUT/<id>/tls.pem, .key")
    issue.add_argument(
        "--party",
        action="append",
        metavar="ID",
        help="only this party (or the broker's id); repeat (default: every party and the broker)",
    )
    issue.add_argument(
        "--broker-hostname",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address of the broker (its address's host is always in)",
    )
    issue.add_argument("--days", type=int, default=365, help="days of validity (365)")
    issue.add_argument("--force", action="store_true", help="replace existing certificates")
    issue.set_defaults(func=_issue_certs)

    publish = commands.add_parser(
        "publish",
        help="send a signed covenant to the broker",
        description=(
            "Send a signed covenant to the broker, which accepts it only as a valid successor "
            "of the version it holds. Connect with a node's TLS material (--config node.toml) "
            "or give --broker, --ca-cert, --cert and --key."
        ),
    )
    publish.add_argument("file", type=Path, help="the signed covenant (JSON)")
    publish.add_argument("--config", type=Path, help="a node.toml whose TLS material to use")
    publish.add_argument("--broker", help="broker HOST:PORT (default: from --config)")
    publish.add_argument("--ca-cert", type=Path, help="the covenant CA certificate")
    publish.add_argument("--cert", type=Path, help="a party's TLS certificate")
    publish.add_argument("--key", type=Path, help="that certificate's private key")
    publish.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    publish.add_argument(
        "--timestamp-key",
        type=Path,
        help="the timestamp key's secret key file: publish a covenant timestamp with the version",
    )
    publish.add_argument(
        "--lifetime",
        type=int,
        metavar="SECONDS",
        help="how long that timestamp vouches (default: the covenant's freshness period)",
    )
    publish.set_defaults(func=_publish)

    stamp = commands.add_parser(
        "timestamp",
        help="sign and publish a covenant timestamp (run from cron)",
        description=(
            "Sign a covenant timestamp for the version of the signed covenant --covenant with the "
            "covenant's timestamp key, and publish it to the broker (--config node.toml, or "
            "--broker, --ca-cert, --cert and --tls-key) or write it (--out). Nodes stop "
            "sealing and releasing when the newest timestamp they hold expires, so run this "
            "more often than the freshness period (e.g. hourly for a day). A broker that "
            "holds another version refuses it, naming the version: publish the covenant "
            "first, or find out why the broker went back."
        ),
    )
    stamp.add_argument(
        "--covenant", type=Path, required=True, help="the signed covenant (JSON) now in force"
    )
    stamp.add_argument(
        "--key", type=Path, required=True, help="the timestamp key's secret key file"
    )
    stamp.add_argument(
        "--lifetime",
        type=int,
        metavar="SECONDS",
        help="how long the timestamp vouches (default: the covenant's freshness period)",
    )
    stamp.add_argument("--out", type=Path, help="also write the timestamp to this file")
    stamp.add_argument("--config", type=Path, help="a node.toml whose TLS material to use")
    stamp.add_argument("--broker", help="broker HOST:PORT (default: from --config)")
    stamp.add_argument("--ca-cert", type=Path, help="the covenant CA certificate")
    stamp.add_argument("--cert", type=Path, help="a party's TLS certificate")
    stamp.add_argument("--tls-key", type=Path, help="that certificate's private key")
    stamp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    stamp.set_defaults(func=_timestamp)


# --- argument helpers ----------------------------------------------------------------


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_time(text: str, *, field: str) -> datetime:
    try:
        return _time(text)
    except argparse.ArgumentTypeError as error:
        raise InvalidInput(f"{error}; e.g. 2027-01-01T00:00:00Z", field=field) from error


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {path}: {error.strerror}", field=str(path)
        ) from error


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a crash leaves the old or the new file)."""
    crypto.write_file_atomically(path, data)


def _public_keys(path: Path, *, field: str, owner: str | None = None) -> PublicKeys:
    """A public keys file's keys; if ``owner`` is given, the file must be that party's."""
    party, keys = PublicKeys.from_json(_read(path), source=str(path))
    if owner is not None and party != owner:
        raise InvalidInput(f"{path} holds the public keys of {party!r}, not {owner!r}", field=field)
    return keys


def _role(text: str, *, field: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise InvalidInput(
            f"unknown role {text!r}; must be one of: {', '.join(Role)}", field=field
        ) from None


def _split(value: str, parts: int, *, field: str, form: str) -> list[str]:
    """Split ``ID:...:FILE``: the first and last parts at the outer colons (names may hold one)."""
    head, sep, rest = value.partition(":")
    middle, sep2, tail = rest.rpartition(":")
    pieces = [head, *(middle.rsplit(":", parts - 3) if parts > 3 else [middle]), tail]
    if not sep or not sep2 or len(pieces) != parts or not all(p.strip() for p in pieces):
        raise InvalidInput(f"expected {form}, got {value!r}", field=field)
    return pieces


def _checked(build: Callable[[], _T], *, field: str) -> _T:
    """Construct a model value, naming ``field`` in front of the field it names."""
    try:
        return build()
    except InvalidInput as error:
        inner = f"{field}.{error.field}" if error.field else field
        raise InvalidInput(error.message, field=inner, reason=error.reason) from error


# --- reading covenants ---------------------------------------------------------------


def _is_json(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{"


def _load_any(path: Path) -> tuple[Covenant, SignedCovenant | None]:
    """A draft (TOML) or a signed covenant (JSON, parsed without checking signatures)."""
    data = _read(path)
    if _is_json(data):
        signed = SignedCovenant.from_json(data, source=str(path))
        return signed.unverified(), signed
    return covenant_from_toml(data, source=str(path)), None


def _load_draft(path: Path) -> Covenant:
    data = _read(path)
    if _is_json(data):
        raise InvalidInput(
            f"{path} is a signed covenant: edit the draft TOML (or write it with "
            "'covenant show --toml') and sign it again",
            field=str(path),
        )
    return covenant_from_toml(data, source=str(path))


def _save_draft(path: Path, covenant: Covenant) -> None:
    _write(path, covenant_to_toml(covenant))


def _load_signed(path: Path) -> SignedCovenant:
    return SignedCovenant.from_json(_read(path), source=str(path))


# --- init ----------------------------------------------------------------------------


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
    return _checked(
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


def _init(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise ConfigurationError(
            f"{out} exists; refusing to overwrite (use --force)", field="--out"
        )
    if args.broker_key is not None:
        broker_ed25519 = _public_keys(args.broker_key, field="--broker-key").ed25519
    else:
        try:
            broker_ed25519 = crypto.b64decode(args.broker_ed25519, 32)
        except ValueError as error:
            raise InvalidInput(
                "must be standard base64 of 32 bytes", field="--broker-ed25519"
            ) from error
    signers = []
    for i, value in enumerate(args.signer):
        signer_id, name, file = _split(
            value, 3, field=f"--signer[{i}]", form="ID:NAME:PUBLIC_KEYS_FILE"
        )
        keys = _public_keys(Path(file), field=f"--signer[{i}]", owner=signer_id)
        signers.append(
            _checked(
                partial(Signer, id=signer_id, name=name, ed25519=keys.ed25519),
                field=f"signing.signers[{i}]",
            )
        )
    threshold = len(signers) if args.threshold is None else args.threshold
    timestamp_key = _public_keys(args.timestamp_key, field="--timestamp-key").ed25519
    signing = _checked(
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
        party_id, name, role_text, file = _split(
            value, 4, field=f"--party[{i}]", form="ID:NAME:ROLE:PUBLIC_KEYS_FILE"
        )
        role = _role(role_text, field=f"parties[{i}].role")
        keys = _public_keys(Path(file), field=f"--party[{i}]", owner=party_id)
        parties.append(
            _checked(
                partial(Party, id=party_id, name=name, role=role, keys=keys),
                field=f"parties[{i}]",
            )
        )
    admin_id, admin_keys = PublicKeys.from_json(
        _read(args.key_epoch_admin), source=str(args.key_epoch_admin)
    )
    key_epoch = read_key_epoch(
        _read(args.key_epoch),
        admin_keys,
        admin_id=admin_id,
        covenant_id=args.id,
        source=str(args.key_epoch),
    )
    if not 1 <= args.attribute_key_version <= MAX_UINT32:
        raise InvalidInput(f"must be 1..{MAX_UINT32}", field="--attribute-key-version")
    ca_certificate = _read(args.ca_cert)
    valid_from = args.valid_from or datetime.now(UTC).replace(microsecond=0)
    if not 1 <= args.valid_days <= certs.MAX_DAYS:
        raise InvalidInput(f"must be 1..{certs.MAX_DAYS}", field="--valid-days")
    broker = _checked(
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
    _save_draft(out, covenant)
    print(
        f"draft covenant {covenant.id} version 1 -> {out}: {len(parties)} parties, "
        f"{len(signers)} signers (threshold {threshold}), key epoch {key_epoch.epoch}, "
        f"attribute key version {covenant.attribute_key_version} sealed to each party, "
        f"valid until {covenant.valid_until.isoformat()}"
    )
    print("review the rules in the file, then: samenloop covenant sign ... by each signer")
    return 0


# --- signer-keygen -------------------------------------------------------------------


def _signer_keygen(args: argparse.Namespace) -> int:
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
    _write(public_out, public.to_json(args.id))
    print(f"signer {args.id}: secret key -> {out} (0600), public keys -> {public_out}")
    print(f"  ed25519 public key {crypto.b64encode(public.ed25519)}")
    print(f"  fingerprint {crypto.fingerprint(public.ed25519)}")
    return 0


# --- editing a draft -------------------------------------------------------------------


def _add_party(args: argparse.Namespace) -> int:
    covenant = _load_draft(args.file)
    if covenant.is_party(args.id):
        raise InvalidInput(f"{args.id!r} is already a party of {covenant.id}", field="--id")
    role = _role(args.role, field="--role")
    keys = _public_keys(args.keys, field="--keys", owner=args.id)
    at = f"parties[{len(covenant.parties)}]"
    party = _checked(lambda: Party(id=args.id, name=args.name, role=role, keys=keys), field=at)
    updated = with_new_attribute_key(
        covenant, (*covenant.parties, party), version=covenant.version + 1
    )
    _save_draft(args.file, updated)
    print(
        f"added {party.id} ({party.role.value}) to {updated.id}: version {covenant.version} -> "
        f"{updated.version}, attribute key version {updated.attribute_key_version} dealt to "
        f"every party ({party.id} reads categories sealed from now on); sign and publish the "
        "new version"
    )
    if updated.policy.visibility_for(role) is None:
        print(f"note: no visibility rule for role {role.value!r}: it will not be told of hits")
    return 0


def _remove_party(args: argparse.Namespace) -> int:
    covenant = _load_draft(args.file)
    if not covenant.is_party(args.id):
        raise NotFound(f"{args.id!r} is not a party of {covenant.id}", field="--id")
    seats = covenant.holder_seats_for(args.id)
    if seats:
        raise InvalidInput(
            f"{args.id!r} holds key-holder seat {seats[0].index} of key epoch "
            f"{covenant.key_epoch.epoch}: deal a new key epoch without it "
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
    _save_draft(args.file, updated)
    print(
        f"removed {args.id} from {updated.id}: version {covenant.version} -> {updated.version}, "
        f"attribute key version {updated.attribute_key_version} dealt to the "
        f"{len(remaining)} parties that remain; once signed and published, the party is cut "
        "off at once and cannot read categories sealed from then on"
    )
    return 0


def _rotate_attribute_key(args: argparse.Namespace) -> int:
    covenant = _load_draft(args.file)
    updated = with_new_attribute_key(covenant, version=covenant.version + 1)
    _save_draft(args.file, updated)
    print(
        f"dealt attribute key version {updated.attribute_key_version} to the "
        f"{len(updated.parties)} parties of {updated.id}: version {covenant.version} -> "
        f"{updated.version}; sign and publish the new version"
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
        return replace(covenant, valid_from=_parse_time(value, field=key))
    if key == "valid_until":
        return replace(covenant, valid_until=_parse_time(value, field=key))
    if key == "signing.timestamp_ed25519":
        try:
            timestamp_key = crypto.b64decode(value, 32)
        except ValueError as error:
            raise InvalidInput(
                "must be standard base64 of a 32-byte Ed25519 public key", field=key
            ) from error
        signing = _checked(
            lambda: replace(covenant.signing, timestamp_ed25519=timestamp_key), field="signing"
        )
        return replace(covenant, signing=signing)
    number = _integer(value, field=key)
    if key == "matching.min_parties":
        matching = _checked(lambda: replace(policy.matching, min_parties=number), field="matching")
        return replace(covenant, policy=replace(policy, matching=matching))
    if key == "quotas.oprf_evaluations_per_day":
        quotas = _checked(
            lambda: replace(policy.quotas, oprf_evaluations_per_day=number), field="quotas"
        )
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "quotas.disclosure_requests_per_day":
        quotas = _checked(
            lambda: replace(policy.quotas, disclosure_requests_per_day=number), field="quotas"
        )
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "quotas.token_entries_per_day":
        quotas = _checked(
            lambda: replace(policy.quotas, token_entries_per_day=number), field="quotas"
        )
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "quotas.token_entries_held":
        quotas = _checked(lambda: replace(policy.quotas, token_entries_held=number), field="quotas")
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key in _BROKER_TRAFFIC_QUOTAS:
        name = key.removeprefix("quotas.")
        quotas = _checked(lambda: replace(policy.quotas, **{name: number}), field="quotas")
        return replace(covenant, policy=replace(policy, quotas=quotas))
    if key == "retention.default_days":
        retention = _checked(
            lambda: replace(policy.retention, default_days=number), field="retention"
        )
        return replace(covenant, policy=replace(policy, retention=retention))
    if key == "signing.threshold":
        signing = _checked(lambda: replace(covenant.signing, threshold=number), field="signing")
        return replace(covenant, signing=signing)
    if key == "signing.freshness_seconds":
        signing = _checked(
            lambda: replace(covenant.signing, freshness_seconds=number), field="signing"
        )
        return replace(covenant, signing=signing)
    raise AssertionError(f"settable key {key!r} is not handled")


def _set(args: argparse.Namespace) -> int:
    covenant = _load_draft(args.file)
    updated = _with_value(covenant, args.key, args.value)
    if args.bump:
        updated = replace(updated, version=updated.version + 1)
    _save_draft(args.file, updated)
    version = f"version {covenant.version} -> {updated.version}" if args.bump else "same version"
    print(f"{args.key} = {args.value} in {updated.id} ({version})")
    return 0


# --- signing and verifying ---------------------------------------------------------------


def _sign(args: argparse.Namespace) -> int:
    data = _read(args.file)
    if _is_json(data):
        signed = SignedCovenant.from_json(data, source=str(args.file))
        default_out: Path = args.file
    else:
        draft = covenant_from_toml(data, source=str(args.file))
        signed = SignedCovenant.of(draft)
        default_out = Path(args.file).with_suffix(".json")
    out: Path = args.out or default_out
    if out.resolve() == Path(args.file).resolve() and not _is_json(data):
        raise ConfigurationError(
            "--out would overwrite the draft with the signed covenant; choose a .json file",
            field="--out",
        )
    if out != args.file and out.exists():
        existing = _load_signed(out)
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
    _write(out, signed.to_json())
    names = ", ".join(s.signer for s in signed.signatures)
    print(
        f"signed {covenant.id} version {covenant.version} as {args.signer} -> {out}: "
        f"{len(signed.signatures)} of threshold {covenant.signing.threshold} ({names})"
    )
    return 0


def _rejected(error: CovenantRejected, path: Path) -> CovenantRejected:
    """The rejection with its reason in the message, about the file ``path``."""
    field = str(path) if error.field in (None, "", "covenant") else f"{path}: {error.field}"
    return CovenantRejected(
        f"REJECTED ({error.reason}): {error.message}", field=field, reason=error.reason
    )


def _valid_signers(signed: SignedCovenant, signing: Signing) -> list[str]:
    """The listed signers whose signature over the body verifies, in the covenant's order."""
    good = []
    for signer in signing.signers:
        for signature in signed.signatures:
            if signature.signer != signer.id:
                continue
            try:
                crypto.verify(
                    signer.ed25519, SignatureContext.COVENANT, signed.body, signature.signature
                )
            except InvalidSignature:
                continue
            good.append(signer.id)
            break
    return good


def _verify(args: argparse.Namespace) -> int:
    signed = _load_signed(args.file)
    now: datetime = args.at or datetime.now(UTC)
    try:
        if args.previous is None:
            covenant = verify_self_signed(signed, now=now)
            how = "on its own signers"
        else:
            state = TrustState(_load_signed(args.previous))
            held = state.covenant
            checked = state.verify(signed, now=now)
            if checked is None:
                print(f"OK: {args.file} is the same as {args.previous} (version {held.version})")
                return 0
            covenant = checked
            how = f"as the successor of version {held.version}"
    except CovenantRejected as error:
        raise _rejected(error, args.file) from error
    good = _valid_signers(signed, covenant.signing)
    print(
        f"OK: covenant {covenant.id} version {covenant.version}, checked {how} at {now.isoformat()}"
    )
    print(
        f"  signed by {', '.join(good)}: {len(good)} of threshold {covenant.signing.threshold}; "
        f"valid {covenant.valid_from.isoformat()} to {covenant.valid_until.isoformat()}"
    )
    return 0


# --- the walk: every field of the model, for show and diff ----------------------------------

#: How a signer tells the entries of a list apart, by the entry's type; the model refuses two
#: entries with the same identity. Entries of other lists are told apart by position.
_IDENTITY: Final[dict[type, Callable[[Any], str]]] = {
    Signer: lambda signer: signer.id,
    Party: lambda party: party.id,
    KeyHolderSeat: lambda seat: str(seat.index),
    Purpose: lambda purpose: purpose.id,
    VisibilityRule: lambda rule: rule.role.value,
    ReleaseRule: lambda rule: f"{rule.role.value} {rule.category} {rule.purpose}",
}
#: Characters that would let covenant text steer a terminal or hide what it says (control
#: and format characters: C0/C1 controls, bidirectional overrides, zero-width characters).
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf"})


def _is_record(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_records(value: object) -> bool:
    """A non-empty list of model entries (parties, rules, ...)."""
    return isinstance(value, tuple) and bool(value) and all(_is_record(v) for v in value)


def _is_mapping(value: object) -> bool:
    """A non-empty list of (name, value) pairs (``retention.categories``)."""
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)
    )


def _members(value: object) -> list[tuple[str, object]]:
    """A model value's fields in declaration order, by name; the covenant's rules
    (``Policy``) sit at its top level, as in the TOML."""
    members: list[tuple[str, object]] = []
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        item = getattr(value, field.name)
        if isinstance(item, Policy):
            members += _members(item)
        else:
            members.append((field.name, item))
    return members


def _leaves(value: object, prefix: str = "") -> list[tuple[str, object]]:
    """A model value's fields with nested values flattened to dotted names (``keys.x25519``);
    lists stay whole."""
    leaves: list[tuple[str, object]] = []
    for name, item in _members(value):
        if _is_record(item):
            leaves += _leaves(item, f"{prefix}{name}.")
        else:
            leaves.append((f"{prefix}{name}", item))
    return leaves


def _plain(text: str) -> str:
    """Covenant text as inert characters: control and format characters written as escapes."""
    return "".join(
        f"\\u{ord(char):04x}"
        if char != "\n" and unicodedata.category(char) in _HIDDEN_CATEGORIES
        else char
        for char in text
    )


def shown_value(value: object) -> str:
    """One value as a signer reads it: keys and sealed boxes by fingerprint, the CA by its
    certificate's fingerprint, lists joined, entries as their fields."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bytes):
        if value.startswith(b"-----BEGIN CERTIFICATE-----"):
            return f"certificate {certs.certificate_fingerprint(value)}"
        return crypto.fingerprint(value)
    if isinstance(value, float):
        return repr(value)
    if _is_record(value):
        return "; ".join(f"{name}={shown_value(item)}" for name, item in _leaves(value))
    if isinstance(value, tuple):
        if not value:
            return "(none)"
        if _is_records(value):
            return " | ".join(shown_value(item) for item in value)
        if _is_mapping(value):
            return ", ".join(f"{name} = {shown_value(item)}" for name, item in value)
        return ", ".join(shown_value(item) for item in value)
    return str(value)


def _keyed(items: tuple[Any, ...]) -> dict[str, Any]:
    """Entries by identity (by position where their type has none, or it repeats)."""
    identity = _IDENTITY.get(type(items[0])) if items else None
    if identity is not None:
        keyed = {identity(item): item for item in items}
        if len(keyed) == len(items):
            return keyed
    return {str(i): item for i, item in enumerate(items)}


# --- show ----------------------------------------------------------------------------------


def _console() -> Console:
    return Console(highlight=False, emoji=False)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=Text(_plain(title)), title_justify="left")
    for column in columns:
        table.add_column(Text(_plain(column)), overflow="fold")
    return table


def _row(table: Table, *cells: object) -> None:
    """Add a row of plain text: covenant text is never markup."""
    table.add_row(*(Text(_plain(str(cell))) for cell in cells))


def _signature_state(signed: SignedCovenant | None, covenant: Covenant) -> dict[str, str]:
    if signed is None:
        return {s.id: "draft: not signed" for s in covenant.signing.signers}
    good = set(_valid_signers(signed, covenant.signing))
    present = {s.signer for s in signed.signatures}
    return {
        s.id: "signed" if s.id in good else "BAD SIGNATURE" if s.id in present else "-"
        for s in covenant.signing.signers
    }


def covenant_tables(covenant: Covenant, width: int | None = None) -> list[Table]:
    """Every field of ``covenant`` as tables: its own values, then one table per section
    (a section's values as rows) and per list (its entries as rows, their fields as
    columns), in the model's order. A list too wide for ``width`` columns (a narrow
    terminal) shows each entry as a table of its own, field by field, rather than folding
    every cell into fragments."""
    tables: list[Table] = []
    top = _table(f"covenant {covenant.id}", "field", "value")
    sections: list[tuple[str, object]] = []
    for name, value in _members(covenant):
        if _is_record(value) or _is_records(value):
            sections.append((name, value))
        else:
            _row(top, name, shown_value(value))
    tables.append(top)
    for name, value in sections:
        tables += _section_tables(name, value, width)
    return tables


def _section_tables(path: str, value: object, width: int | None) -> list[Table]:
    if _is_records(value):
        assert isinstance(value, tuple)
        return _list_tables(path, value, width)
    table = _table(f"[{path}]", "field", "value")
    lists: list[Table] = []
    for name, item in _leaves(value):
        if _is_records(item):
            assert isinstance(item, tuple)
            lists += _list_tables(f"{path}.{name}", item, width)
        else:
            _row(table, name, shown_value(item))
    return [table, *lists]


def _list_tables(path: str, items: tuple[Any, ...], width: int | None) -> list[Table]:
    rows = [{name: shown_value(v) for name, v in _leaves(item)} for item in items]
    columns = list(dict.fromkeys(name for row in rows for name in row))
    # What the table needs unfolded: each column's widest cell, plus rich's borders.
    needed = 1 + sum(
        3 + max(len(column), *(len(row.get(column, "")) for row in rows)) for column in columns
    )
    if width is not None and needed > width and len(columns) > 2:
        tables = []
        for i, row in enumerate(rows, 1):
            table = _table(f"[[{path}]] {i} of {len(rows)}", "field", "value")
            for column in columns:
                _row(table, column, row.get(column, ""))
            tables.append(table)
        return tables
    table = _table(f"[[{path}]] ({len(items)})", *columns)
    for row in rows:
        _row(table, *(row.get(c, "") for c in columns))
    return [table]


def _show(args: argparse.Namespace) -> int:
    covenant, signed = _load_any(args.file)
    if args.toml:
        body = signed.body if signed is not None else covenant_to_toml(covenant)
        print(body.decode("utf-8"), end="")
        return 0
    console = _console()
    now = datetime.now(UTC)
    in_force = "in force now" if covenant.covers(now) else "NOT in force now"
    console.print(
        f"covenant {covenant.id} version {covenant.version}"
        f" ({'signed' if signed is not None else 'draft'}), valid "
        f"{covenant.valid_from.isoformat()} to {covenant.valid_until.isoformat()} ({in_force})",
        markup=False,
        style="bold",
    )
    states = _signature_state(signed, covenant)
    signatures = _table(
        f"signatures (threshold {covenant.signing.threshold})", "signer", "signature"
    )
    for signer in covenant.signing.signers:
        _row(signatures, signer.id, states[signer.id])
    if signed is not None:
        listed = {s.id for s in covenant.signing.signers}
        for signature in signed.signatures:
            if signature.signer not in listed:
                _row(signatures, signature.signer, "UNKNOWN SIGNER")
    console.print(signatures)
    for table in covenant_tables(covenant, console.width):
        console.print(table)
    ruled = {rule.role.value for rule in covenant.policy.visibility}
    unruled = sorted({party.role.value for party in covenant.parties} - ruled)
    if unruled:
        console.print(f"no visibility rule (told of no hits): {', '.join(unruled)}", markup=False)
    console.print(
        "keys and sealed boxes are shown by fingerprint (the first 16 hex digits of their "
        "SHA-256); 'covenant show --toml' prints them whole",
        markup=False,
    )
    if signed is not None:
        console.print(
            "signatures checked against the signers this file lists; "
            "'covenant verify' decides trust",
            markup=False,
        )
    return 0


# --- diff ----------------------------------------------------------------------------------


def covenant_diff(old: Covenant, new: Covenant) -> list[str]:
    """Every difference from ``old`` to ``new``, field by field: ``+`` added, ``-`` removed,
    ``~`` changed; list entries named by their identity (``parties[politie-zwb].name``)."""
    lines: list[str] = []
    _diff_value("", old, new, lines)
    return [_plain(line).replace("\n", "\\n") for line in lines]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _diff_value(path: str, old: object, new: object, lines: list[str]) -> None:
    if _is_record(old) and type(old) is type(new):
        for (name, before), (_, after) in zip(_members(old), _members(new), strict=True):
            _diff_value(_join(path, name), before, after, lines)
    elif isinstance(old, tuple) and isinstance(new, tuple) and (old or new):
        sample = old or new
        if _is_records(sample):
            _diff_entries(path, old, new, lines)
        elif _is_mapping(sample):
            _diff_mapping(path, old, new, lines)
        else:
            _diff_items(path, old, new, lines)
    elif old != new:
        lines.append(f"~ {path}: {shown_value(old)} -> {shown_value(new)}")


def _diff_order(path: str, old: list[str], new: list[str], lines: list[str]) -> None:
    """The order of the entries both sides hold, if it changed."""
    kept_old = [key for key in old if key in new]
    kept_new = [key for key in new if key in old]
    if kept_old != kept_new:
        lines.append(f"~ {path}: order {', '.join(kept_old)} -> {', '.join(kept_new)}")


def _diff_entries(path: str, old: tuple[Any, ...], new: tuple[Any, ...], lines: list[str]) -> None:
    old_by, new_by = _keyed(old), _keyed(new)
    lines += [f"+ {path}[{k}]: {shown_value(v)}" for k, v in new_by.items() if k not in old_by]
    lines += [f"- {path}[{k}]: {shown_value(v)}" for k, v in old_by.items() if k not in new_by]
    for key, after in new_by.items():
        if key in old_by:
            _diff_value(f"{path}[{key}]", old_by[key], after, lines)
    _diff_order(path, list(old_by), list(new_by), lines)


def _diff_mapping(path: str, old: tuple[Any, ...], new: tuple[Any, ...], lines: list[str]) -> None:
    old_by, new_by = dict(old), dict(new)
    lines += [f"+ {path}.{k}: {shown_value(v)}" for k, v in new_by.items() if k not in old_by]
    lines += [f"- {path}.{k}: {shown_value(v)}" for k, v in old_by.items() if k not in new_by]
    for key, after in new_by.items():
        if key in old_by:
            _diff_value(f"{path}.{key}", old_by[key], after, lines)
    _diff_order(path, list(old_by), list(new_by), lines)


def _diff_items(path: str, old: tuple[Any, ...], new: tuple[Any, ...], lines: list[str]) -> None:
    lines += [f"+ {path}: {shown_value(item)}" for item in new if item not in old]
    lines += [f"- {path}: {shown_value(item)}" for item in old if item not in new]
    _diff_order(path, [shown_value(i) for i in old], [shown_value(i) for i in new], lines)


def _diff(args: argparse.Namespace) -> int:
    old, _ = _load_any(args.old)
    new, _ = _load_any(args.new)
    if args.text:
        lines = difflib.unified_diff(
            covenant_to_toml(old).decode("utf-8").splitlines(keepends=True),
            covenant_to_toml(new).decode("utf-8").splitlines(keepends=True),
            fromfile=str(args.old),
            tofile=str(args.new),
        )
        print(_plain("".join(lines)), end="")
        return 0
    changes = covenant_diff(old, new)
    print(f"covenant {old.id} version {old.version} -> {new.id} version {new.version}")
    for line in changes:
        print(f"  {line}")
    if not changes:
        print("  no differences")
    return 0


# --- issue-certs ---------------------------------------------------------------------------


def _issue_certs(args: argparse.Namespace) -> int:
    covenant, _ = _load_any(args.covenant)
    ca = certs.CertificateAuthority.load(args.ca_key, args.ca_cert)
    if ca.cert_pem.strip() != covenant.ca_certificate.strip():
        raise ConfigurationError(
            f"{args.ca_cert} is not the CA certificate that covenant {covenant.id} lists",
            field="--ca-cert",
        )
    if not 1 <= args.days <= certs.MAX_DAYS:
        raise InvalidInput(f"must be 1..{certs.MAX_DAYS}", field="--days")
    wanted: list[str] = args.party or [*(p.id for p in covenant.parties), covenant.broker.id]
    for i, name in enumerate(wanted):
        if name != covenant.broker.id and not covenant.is_party(name):
            raise NotFound(
                f"{name!r} is neither a party nor the broker of covenant {covenant.id}",
                field=f"--party[{i}]",
            )
    out: Path = args.out
    if not args.force:
        for name in wanted:
            if (out / name / "tls.key").exists():
                raise ConfigurationError(
                    f"{out / name / 'tls.key'} exists; use --force to replace it", field="--out"
                )
    now = datetime.now(UTC)
    table = _table(f"certificates for {covenant.id}", "id", "kind", "fingerprint", "files")
    for name in dict.fromkeys(wanted):
        if name == covenant.broker.id:
            host, _port = parse_address(covenant.broker.address, field="broker.address")
            hosts = list(dict.fromkeys([host, *args.broker_hostname]))
            issued = ca.issue_broker(name, hosts, now=now, days=args.days)
            kind = f"broker ({', '.join(hosts)})"
        else:
            issued = ca.issue_party(name, now=now, days=args.days)
            kind = f"party ({covenant.role_of(name).value})"
        certs.save_private_key(out / name / "tls.key", issued.key_pem)
        _write(out / name / "tls.pem", issued.cert_pem)
        _row(
            table,
            name,
            kind,
            certs.certificate_fingerprint(issued.cert_pem),
            f"{out / name}/tls.pem, tls.key (0600)",
        )
    _write(out / "ca.pem", ca.cert_pem)
    console = _console()
    console.print(table)
    console.print(f"CA certificate -> {out / 'ca.pem'}", markup=False)
    return 0


# --- publish -------------------------------------------------------------------------------


def _broker_channel(
    args: argparse.Namespace, tls_key: Path | None, tls_key_option: str
) -> tuple[str, grpc.Channel]:
    """An mTLS channel to the broker with a party's TLS material: from ``--config``'s
    node.toml, or the options given (``tls_key`` is the private key's option value)."""
    address: str | None = args.broker
    ca_path, cert_path, key_path = args.ca_cert, args.cert, tls_key
    if args.config is not None:
        node = load_node_config(args.config)
        address = address or node.broker
        ca_path = ca_path or node.ca_certificate
        cert_path = cert_path or node.certificate
        key_path = key_path or node.private_key
    for value, option in (
        (address, "--broker"),
        (ca_path, "--ca-cert"),
        (cert_path, "--cert"),
        (key_path, tls_key_option),
    ):
        if value is None:
            raise ConfigurationError(f"give {option} or --config node.toml", field=option)
    assert address is not None
    assert key_path is not None
    parse_address(address, field="--broker")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_path),
        private_key=crypto.read_secret_file(key_path),
        certificate_chain=_read(cert_path),
    )
    options = [
        ("grpc.max_receive_message_length", common_pb2.LIMITS_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", common_pb2.LIMITS_MAX_MESSAGE_BYTES),
    ]
    return address, grpc.secure_channel(address, credentials, options=options)


def _lifetime(seconds: int | None) -> timedelta | None:
    if seconds is None:
        return None
    if seconds < 1:
        raise InvalidInput("must be at least 1 second", field="--lifetime")
    return timedelta(seconds=seconds)


def _stamp(
    signed: SignedCovenant, covenant: Covenant, key_path: Path, lifetime: int | None, option: str
) -> CovenantTimestamp:
    """A covenant timestamp for ``covenant``, signed with the key in ``key_path``; errors
    name ``option`` (the key) or ``--lifetime``."""
    keys = PartyKeys.load(key_path)
    try:
        return issue_timestamp(
            keys.signing_key,
            covenant,
            signed.body,
            now=datetime.now(UTC),
            lifetime=_lifetime(lifetime),
        )
    except InvalidInput as error:
        field = option if error.field == "key" else "--lifetime"
        raise InvalidInput(error.message, field=field, reason=error.reason) from error


def _publish(args: argparse.Namespace) -> int:
    signed = _load_signed(args.file)
    try:
        covenant = verify_self_signed(signed, now=datetime.now(UTC))
    except CovenantRejected as error:
        raise _rejected(error, args.file) from error
    stamp = None
    if args.timestamp_key is not None:
        stamp = _stamp(signed, covenant, args.timestamp_key, args.lifetime, "--timestamp-key")
    elif args.lifetime is not None:
        raise InvalidInput("give --timestamp-key to publish a timestamp", field="--lifetime")
    address, channel = _broker_channel(args, args.key, "--key")
    request = broker_pb2.PublishCovenantRequest(covenant=signed.to_proto())
    if stamp is not None:
        request.covenant_timestamp.CopyFrom(stamp.to_proto())
    with channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        try:
            response = stub.PublishCovenant(request, timeout=args.timeout)
        except grpc.RpcError as rpc_error:
            failure = error_from_rpc(rpc_error)
            raise _with_context(failure, f"broker {address} refused or did not answer") from None
    published = response.published_at.ToDatetime(tzinfo=UTC)
    print(
        f"published covenant {covenant.id}: the broker now holds version {response.version} "
        f"(since {published.isoformat()})"
    )
    if stamp is not None:
        print(f"  with a covenant timestamp valid until {stamp.expires_at.isoformat()}")
    return 0


def _timestamp(args: argparse.Namespace) -> int:
    signed = _load_signed(args.covenant)
    try:
        covenant = verify_self_signed(signed, now=datetime.now(UTC))
    except CovenantRejected as error:
        raise _rejected(error, args.covenant) from error
    publishing = args.config is not None or args.broker is not None
    if args.out is None and not publishing:
        raise ConfigurationError(
            "give --config node.toml (or --broker ...) to publish, or --out to write a file",
            field="--out",
        )
    stamp = _stamp(signed, covenant, args.key, args.lifetime, "--key")
    if args.out is not None:
        _write(args.out, stamp.to_json())
        print(f"covenant timestamp for version {covenant.version} -> {args.out}")
    if publishing:
        address, channel = _broker_channel(args, args.tls_key, "--tls-key")
        with channel:
            stub = broker_pb2_grpc.BrokerStub(channel)
            try:
                response = stub.PublishTimestamp(
                    broker_pb2.PublishTimestampRequest(covenant_timestamp=stamp.to_proto()),
                    timeout=args.timeout,
                )
            except grpc.RpcError as rpc_error:
                failure = error_from_rpc(rpc_error)
                raise _with_context(
                    failure, f"broker {address} refused the covenant timestamp or did not answer"
                ) from None
        until = response.expires_at.ToDatetime(tzinfo=UTC)
        held = "" if response.stored else " (it held a newer one)"
        print(
            f"published a covenant timestamp for {covenant.id} version {response.version}: "
            f"fresh until {until.isoformat()}{held}"
        )
    return 0


def _with_context(error: SamenloopError, context: str) -> SamenloopError:
    """The same error (so the same exit code), its message prefixed and its reason shown."""
    return type(error)(
        f"{context}: {error.message} [{error.reason}]", field=error.field, reason=error.reason
    )
