"""``covenant ca-init``, ``issue-certs``, ``publish`` and ``timestamp``: the commands that
reach outside the administrator's files — the covenant CA and the TLS certificates it
issues, and the signed covenant and its timestamps to the broker over gRPC with mTLS.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from samenloop.policies import certs, crypto
from samenloop.policies.config import load_node_config
from samenloop.policies.covenant import Covenant, parse_address
from samenloop.policies.covenant_commands.common import (
    load_any,
    load_signed,
    read_file,
    rejected,
    write_file,
)
from samenloop.policies.covenant_commands.showing import add_row, make_console, make_table
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import (
    ConfigurationError,
    CovenantRejected,
    InvalidInput,
    NotFound,
    SamenloopError,
)
from samenloop.policies.freshness import CovenantTimestamp, issue_timestamp
from samenloop.policies.rpc import error_from_rpc
from samenloop.policies.terminal import show_table
from samenloop.policies.trust import SignedCovenant, verify_self_signed
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2


def ca_init_command(args: argparse.Namespace) -> int:
    """Make the covenant CA, as provisioning does (``CertificateAuthority.create`` and
    ``save``): the one step of a set-up by hand that no other command covers."""
    certs.check_id(args.id, field="--id")
    if not 1 <= args.days <= certs.MAX_DAYS:
        raise InvalidInput(f"must be 1..{certs.MAX_DAYS}", field="--days")
    if args.ca_key.resolve() == args.ca_cert.resolve():
        raise InvalidInput("the CA key and certificate need two files", field="--ca-cert")
    for path, option in ((args.ca_key, "--ca-key"), (args.ca_cert, "--ca-cert")):
        if path.exists():
            raise ConfigurationError(
                f"{path} exists; refusing to overwrite a covenant CA (every certificate it "
                "issued would stop verifying): remove it yourself if you mean to replace it",
                field=option,
            )
    ca = certs.CertificateAuthority.create(args.id, now=datetime.now(UTC), days=args.days)
    ca.save(args.ca_key, args.ca_cert)
    until = certs.load_certificate(ca.cert_pem, field="--ca-cert").not_valid_after_utc
    fingerprint = certs.certificate_fingerprint(ca.cert_pem)
    print(f"covenant CA for {args.id}: key -> {args.ca_key} (0600), certificate -> {args.ca_cert}")
    print(f"  fingerprint {fingerprint}, valid until {until.isoformat()}")
    print(
        "keep the key offline: it is needed only to issue certificates "
        "('covenant issue-certs'); give 'covenant init' the certificate"
    )
    return 0


def issue_certs_command(args: argparse.Namespace) -> int:
    covenant, _ = load_any(args.covenant)
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
    table = make_table(f"certificates for {covenant.id}", "id", "kind", "fingerprint", "files")
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
        write_file(out / name / "tls.pem", issued.cert_pem)
        add_row(
            table,
            name,
            kind,
            certs.certificate_fingerprint(issued.cert_pem),
            f"{out / name}/tls.pem, tls.key (0600)",
        )
    write_file(out / "ca.pem", ca.cert_pem)
    console = make_console()
    show_table(console, table)
    console.print(f"CA certificate -> {out / 'ca.pem'}", markup=False)
    return 0


def _broker_channel(
    args: argparse.Namespace, tls_key: Path | None, tls_key_option: str
) -> tuple[str, grpc.Channel]:
    """An mTLS channel to the broker with a party's TLS material: from ``--node``'s
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
            raise ConfigurationError(f"give {option} or --node node.toml", field=option)
    assert address is not None
    assert key_path is not None
    parse_address(address, field="--broker")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_file(ca_path),
        private_key=crypto.read_secret_file(key_path),
        certificate_chain=read_file(cert_path),
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


def publish_command(args: argparse.Namespace) -> int:
    signed = load_signed(args.file)
    try:
        covenant = verify_self_signed(signed, now=datetime.now(UTC))
    except CovenantRejected as error:
        raise rejected(error, args.file) from error
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


def timestamp_command(args: argparse.Namespace) -> int:
    signed = load_signed(args.covenant)
    try:
        covenant = verify_self_signed(signed, now=datetime.now(UTC))
    except CovenantRejected as error:
        raise rejected(error, args.covenant) from error
    publishing = args.config is not None or args.broker is not None
    if args.out is None and not publishing:
        raise ConfigurationError(
            "give --node node.toml (or --broker ...) to publish, or --out to write a file",
            field="--out",
        )
    stamp = _stamp(signed, covenant, args.key, args.lifetime, "--key")
    if args.out is not None:
        write_file(args.out, stamp.to_json())
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
