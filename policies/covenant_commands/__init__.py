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
* ``signer-keygen`` makes a signer's key pair; ``replace-signer`` gives a signer of a
  draft a new key (``signers``);
* ``sign`` adds one signer's signature (signers sign one after another into the
  same signed JSON file); ``verify`` checks a signed covenant on its own or as
  the successor of another, naming the rejection reason;
* ``show`` and ``diff`` print a covenant and the differences between two,
  every field of the model: they walk its frozen dataclasses, so a field
  added to the model shows without changes here;
* ``ca-init`` makes the covenant CA (its key kept offline); ``issue-certs`` issues
  the parties' and the broker's TLS certificates with it; ``publish`` sends a signed
  covenant to the broker (with a covenant timestamp for it, given the timestamp key);
* ``timestamp`` signs a covenant timestamp — the short-lived statement that a
  version is current (:mod:`samenloop.policies.freshness`) — with the covenant's
  timestamp key and publishes it (or writes it to a file): the job to run from
  cron, more often than the covenant's freshness period.

An adapter (it dials the broker with grpc): the sans-IO core never imports it.
It imports neither daemon; the key-epoch document is read from its wire form.

The package by subcommand group: ``drafting`` (init, signer-keygen, add-party,
remove-party, rotate-attribute-key, set), ``signing`` (sign, verify), ``showing``
(show, diff), ``publishing`` (ca-init, issue-certs, publish, timestamp), and ``common``, what
they share. This module builds the command tree.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Final

from samenloop.policies.cli import add_node_config, lazy

#: The handlers, each imported from its module when it runs (the rule in
#: :mod:`samenloop.policies.cli`): building the command tree imports no crypto or grpc.
_PACKAGE: Final = "samenloop.policies.covenant_commands"
init_command = lazy(f"{_PACKAGE}.drafting:init_command")
signer_keygen_command = lazy(f"{_PACKAGE}.drafting:signer_keygen_command")
add_party_command = lazy(f"{_PACKAGE}.drafting:add_party_command")
remove_party_command = lazy(f"{_PACKAGE}.drafting:remove_party_command")
rotate_attribute_key_command = lazy(f"{_PACKAGE}.drafting:rotate_attribute_key_command")
set_command = lazy(f"{_PACKAGE}.drafting:set_command")
sign_command = lazy(f"{_PACKAGE}.signing:sign_command")
verify_command = lazy(f"{_PACKAGE}.signing:verify_command")
show_command = lazy(f"{_PACKAGE}.showing:show_command")
diff_command = lazy(f"{_PACKAGE}.showing:diff_command")
ca_init_command = lazy(f"{_PACKAGE}.publishing:ca_init_command")
issue_certs_command = lazy(f"{_PACKAGE}.publishing:issue_certs_command")
publish_command = lazy(f"{_PACKAGE}.publishing:publish_command")
timestamp_command = lazy(f"{_PACKAGE}.publishing:timestamp_command")
replace_signer_command = lazy(f"{_PACKAGE}.signers:replace_signer_command")
stage_key_epoch_command = lazy(f"{_PACKAGE}.drafting:stage_key_epoch_command")
switch_key_epoch_command = lazy(f"{_PACKAGE}.drafting:switch_key_epoch_command")

#: Values the help shows, written out so that registering imports none of their modules
#: (a test compares them with ``drafting.SETTABLE``, ``policy.Role``,
#: ``policy.DEFAULT_FRESHNESS_SECONDS`` and ``DEFAULT_CA_DAYS``).
SETTABLE: Final = (
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
ROLES: Final = (
    "gemeente",
    "politie",
    "om",
    "belastingdienst",
    "fiod",
    "douane",
    "ind",
    "arbeidsinspectie",
    "provincie",
    "woningcorporatie",
    "riec",
    "liec",
)
DEFAULT_FRESHNESS_SECONDS: Final = 24 * 3600
DEFAULT_CA_DAYS: Final = 3650


def iso_time(text: str) -> datetime:
    """``--valid-from`` and ``--at``: :func:`.common.iso_time`, imported when parsing."""
    from samenloop.policies.covenant_commands.common import iso_time as parse_time

    return parse_time(text)


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
        "--broker-key",
        type=Path,
        help="public keys file of the broker's signing key ('node keygen --party BROKER_ID')",
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
    init.add_argument(
        "--valid-from",
        type=iso_time,
        help="start of validity (default: now less the clock skew parties allow)",
    )
    init.add_argument("--valid-days", type=int, default=365, help="days of validity (365)")
    init.add_argument("--min-parties", type=int, default=2, help="distinct parties per hit (2)")
    init.add_argument(
        "--attribute-key-version",
        type=int,
        default=1,
        help="version of the attribute key dealt to the parties (1)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    init.set_defaults(func=init_command)

    keygen = commands.add_parser("signer-keygen", help="generate a signer's key pair")
    keygen.add_argument("--id", required=True, help="signer id as the covenant will list it")
    keygen.add_argument("--out", type=Path, required=True, help="secret key file (written 0600)")
    keygen.add_argument(
        "--public-out", type=Path, help="public keys file (default: OUT with .public.json)"
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(func=signer_keygen_command)

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
    add.add_argument("--role", required=True, help=f"one of: {', '.join(ROLES)}")
    add.add_argument(
        "--keys", type=Path, required=True, help="the party's public keys file ('node keygen')"
    )
    add.set_defaults(func=add_party_command)

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
    remove.set_defaults(func=remove_party_command)

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
    rotate.set_defaults(func=rotate_attribute_key_command)

    stage = commands.add_parser(
        "stage-key-epoch",
        help="stage the next OPRF key epoch in a draft (version + 1)",
        description=(
            "Put the key epoch that 'samenloop keyholder deal --epoch N+1' wrote in the draft "
            "as next_key_epoch. Once published, key holders serve it beside the current "
            "epoch and nodes re-tokenise under it; hits stay in the current epoch until "
            "'covenant switch-key-epoch'."
        ),
    )
    stage.add_argument("file", type=Path, help="the draft covenant (TOML)")
    stage.add_argument(
        "--key-epoch", type=Path, required=True, help="key epoch file from 'keyholder deal'"
    )
    stage.add_argument(
        "--key-epoch-admin",
        type=Path,
        required=True,
        help="public keys file of the administrator who signed the key epoch",
    )
    stage.set_defaults(func=stage_key_epoch_command)

    switch = commands.add_parser(
        "switch-key-epoch",
        help="make the staged key epoch current in a draft (version + 1)",
        description=(
            "Make next_key_epoch the key epoch; the old epoch retires. The broker accepts "
            "this version only when every party has re-tokenised its live identifiers under "
            "the staged epoch ('samenloop broker rotation-status')."
        ),
    )
    switch.add_argument("file", type=Path, help="the draft covenant (TOML)")
    switch.set_defaults(func=switch_key_epoch_command)

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
    set_.set_defaults(func=set_command)

    _register_replace_signer(commands)

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
    sign.set_defaults(func=sign_command)

    verify = commands.add_parser(
        "verify", help="check a signed covenant: signatures, version, validity"
    )
    verify.add_argument("file", type=Path, help="the signed covenant (JSON)")
    verify.add_argument(
        "--previous", type=Path, help="the signed version held now: check FILE as its successor"
    )
    verify.add_argument("--at", type=iso_time, help="check validity at this time (default: now)")
    verify.set_defaults(func=verify_command)

    show = commands.add_parser("show", help="a readable summary of a covenant")
    show.add_argument("file", type=Path, help="draft covenant (TOML) or signed covenant (JSON)")
    show.add_argument("--toml", action="store_true", help="print the canonical TOML instead")
    show.set_defaults(func=show_command)

    diff = commands.add_parser("diff", help="the differences between two covenant versions")
    diff.add_argument("old", type=Path, help="older covenant (TOML or signed JSON)")
    diff.add_argument("new", type=Path, help="newer covenant (TOML or signed JSON)")
    diff.add_argument("--text", action="store_true", help="a unified diff of the canonical TOML")
    diff.set_defaults(func=diff_command)

    ca_init = commands.add_parser(
        "ca-init",
        help="make the covenant CA (its key kept offline)",
        description=(
            "Make the covenant CA: a private key (written 0600) and a self-signed CA "
            "certificate naming the covenant. 'covenant init --ca-cert' puts the certificate "
            "in the covenant; 'covenant issue-certs' issues the parties' and the broker's TLS "
            "certificates with both. Keep the key offline. Existing files are never "
            "overwritten."
        ),
    )
    ca_init.add_argument("--id", required=True, help="covenant id, e.g. riec-zuid-west")
    ca_init.add_argument(
        "--ca-key", type=Path, required=True, help="the CA's private key file (written 0600)"
    )
    ca_init.add_argument("--ca-cert", type=Path, required=True, help="the CA certificate file")
    ca_init.add_argument(
        "--days",
        type=int,
        default=DEFAULT_CA_DAYS,
        help=f"days of validity ({DEFAULT_CA_DAYS})",
    )
    ca_init.set_defaults(func=ca_init_command)

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
    issue.set_defaults(func=issue_certs_command)

    publish = commands.add_parser(
        "publish",
        help="send a signed covenant to the broker",
        description=(
            "Send a signed covenant to the broker, which accepts it only as a valid successor "
            "of the version it holds. Connect with a node's TLS material (--node node.toml) "
            "or give --broker, --ca-cert, --cert and --key."
        ),
    )
    publish.add_argument("file", type=Path, help="the signed covenant (JSON)")
    add_node_config(publish, dest="config", help="a node.toml whose TLS material to use")
    publish.add_argument("--broker", help="broker HOST:PORT (default: from --node)")
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
    publish.set_defaults(func=publish_command)

    stamp = commands.add_parser(
        "timestamp",
        help="sign and publish a covenant timestamp (run from cron)",
        description=(
            "Sign a covenant timestamp for the version of the signed covenant --covenant with the "
            "covenant's timestamp key, and publish it to the broker (--node node.toml, or "
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
    add_node_config(stamp, dest="config", help="a node.toml whose TLS material to use")
    stamp.add_argument("--broker", help="broker HOST:PORT (default: from --node)")
    stamp.add_argument("--ca-cert", type=Path, help="the covenant CA certificate")
    stamp.add_argument("--cert", type=Path, help="a party's TLS certificate")
    stamp.add_argument("--tls-key", type=Path, help="that certificate's private key")
    stamp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    stamp.set_defaults(func=timestamp_command)


def _register_replace_signer(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``replace-signer`` to the ``covenant`` command tree."""
    parser = commands.add_parser(
        "replace-signer",
        help="give a signer of a draft covenant a new key (version + 1)",
        description=(
            "Replace a signer's public key (a lost laptop, an administrator who leaves), "
            "keeping its id or under --new-id. The new version needs the threshold of the "
            "held version's signers and of its own: keeping the id, the replaced signer "
            "signs neither, so the others must reach the threshold (the command refuses "
            "otherwise); under a new id the new key signs too. Once the version is "
            "published, the old key counts for nothing. The new key must be no other key "
            "of the covenant. Replace the timestamp key with 'covenant set "
            "signing.timestamp_ed25519'."
        ),
    )
    parser.add_argument("--draft", type=Path, required=True, help="the draft covenant (TOML)")
    parser.add_argument("--signer", required=True, help="the id of the signer to replace")
    parser.add_argument(
        "--public-keys",
        type=Path,
        required=True,
        metavar="PUBLIC_KEYS_FILE",
        help="the new key's public keys file ('covenant signer-keygen --id ID')",
    )
    parser.add_argument("--new-id", help="list the new key under this id instead")
    parser.add_argument("--name", help="a new display name (default: the signer's)")
    parser.set_defaults(func=replace_signer_command)
