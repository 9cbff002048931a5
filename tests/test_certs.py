"""The covenant CA: what its certificates contain, how they are checked, and that gRPC mTLS works.

The mTLS tests start a real gRPC server with the broker's certificate on
127.0.0.1, port 0, requiring client certificates from the covenant CA, and
record what a client sees for each certificate the TLS handshake refuses.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from samenloop.policies import certs
from samenloop.policies.certs import CertificateAuthority, CertificateRejected, IssuedCertificate
from samenloop.policies.errors import ConfigurationError, InvalidInput, InvalidSignature

NOW = datetime.now(UTC).replace(microsecond=0)
COVENANT = "riec-zwb-2026"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    # Created a while ago, so that it can also issue certificates that have expired by now.
    return CertificateAuthority.create(COVENANT, now=NOW - timedelta(days=400))


@pytest.fixture(scope="module")
def party(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue_party("gemeente-tilburg", now=NOW)


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# --- what the certificates contain -------------------------------------------------


def test_the_ca_certificate(ca):
    cert = _load(ca.cert_pem)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == COVENANT
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= timedelta(days=3650)
    assert ca.covenant_id == COVENANT


def test_a_party_certificate(ca, party):
    cert = _load(party.cert_pem)
    assert cert.issuer == _load(ca.cert_pem).subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gemeente-tilburg"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:samenloop:party:gemeente-tilburg"
    ]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    )
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    key = serialization.load_pem_private_key(party.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.not_valid_before_utc == NOW - certs.BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)


def test_serials_are_random(ca):
    serials = {_load(ca.issue_party("politie", now=NOW).cert_pem).serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_a_broker_certificate(ca):
    broker = ca.issue_broker("broker-riec-zwb", ["localhost", "127.0.0.1", "::1"], now=NOW)
    cert = _load(broker.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:samenloop:broker:broker-riec-zwb"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    )
    assert certs.broker_from_certificate(broker.cert_pem) == "broker-riec-zwb"


def test_certificates_expire_with_their_ca():
    young = CertificateAuthority.create(COVENANT, now=NOW, days=10)
    issued = young.issue_party("politie", now=NOW, days=365)
    assert _load(issued.cert_pem).not_valid_after_utc == _load(young.cert_pem).not_valid_after_utc
    with pytest.raises(ConfigurationError):
        young.issue_party("politie", now=NOW + timedelta(days=11))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda ca: ca.issue_party("Gemeente", now=NOW), "party_id"),
        (lambda ca: ca.issue_party("a" * 65, now=NOW), "party_id"),
        (lambda ca: ca.issue_party("politie", now=NOW, days=0), "days"),
        (lambda ca: ca.issue_party("politie", now=NOW.replace(tzinfo=None)), "now"),
        (lambda ca: ca.issue_broker("broker", [], now=NOW), "hosts"),
        (lambda ca: ca.issue_broker("broker", "localhost", now=NOW), "hosts"),
        (lambda ca: ca.issue_broker("broker", ["localhost", "bad_host"], now=NOW), "hosts[1]"),
        (lambda ca: ca.issue_broker("broker", ["localhost", ""], now=NOW), "hosts[1]"),
        (lambda ca: ca.issue_broker("broker", ["-x.example"], now=NOW), "hosts[0]"),
        (lambda ca: ca.issue_broker("Broker", ["localhost"], now=NOW), "broker_id"),
        (lambda ca: CertificateAuthority.create("", now=NOW), "covenant_id"),
    ],
)
def test_bad_requests_to_issue(ca, call, field):
    with pytest.raises(InvalidInput) as caught:
        call(ca)
    assert caught.value.field == field


def test_the_ca_checks_its_key_and_certificate(ca):
    other = CertificateAuthority.create(COVENANT, now=NOW)
    with pytest.raises(ConfigurationError) as caught:
        CertificateAuthority(key_pem=other.key_pem, cert_pem=ca.cert_pem)
    assert caught.value.field == "ca.key"
    party = ca.issue_party("politie", now=NOW)
    with pytest.raises(ConfigurationError) as caught:
        CertificateAuthority(key_pem=party.key_pem, cert_pem=party.cert_pem)
    assert caught.value.field == "ca.certificate"
    with pytest.raises(ConfigurationError) as caught:
        CertificateAuthority(key_pem=b"not a key", cert_pem=ca.cert_pem)
    assert "not a key" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        CertificateAuthority(key_pem=ca.key_pem, cert_pem=b"not a certificate")
    assert caught.value.field == "ca.certificate"
    assert len(certs.certificate_fingerprint(ca.cert_pem)) == 16


def test_no_private_key_in_any_repr(ca, party):
    for obj, key in ((ca, ca.key_pem), (party, party.key_pem)):
        text = repr(obj)
        assert "PRIVATE" not in text
        assert key.decode() not in text
        assert "<redacted>" in text


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("gemeente-tilburg", True),
        ("0", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("-gemeente", False),
        ("Gemeente", False),
        ("gemeente_tilburg", False),
        ("gemeente tilburg", False),
        ("gemeente-\u00e9", False),
        ("gemeente\n", False),
        (7, False),
    ],
)
def test_check_id(value, ok):
    if ok:
        assert certs.check_id(value, field="party") == value
    else:
        with pytest.raises(InvalidInput) as caught:
            certs.check_id(value, field="party")
        assert caught.value.field == "party"


def test_keys_and_ca_are_saved_owner_only(tmp_path, ca):
    ca.save(tmp_path / "ca.key", tmp_path / "ca.crt")
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert (tmp_path / "ca.crt").read_bytes() == ca.cert_pem
    again = CertificateAuthority.load(tmp_path / "ca.key", tmp_path / "ca.crt")
    assert again.key_pem == ca.key_pem
    certs.save_private_key(tmp_path / "tls" / "node.key", b"pem")
    assert stat.S_IMODE((tmp_path / "tls" / "node.key").stat().st_mode) == 0o600
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(ConfigurationError):
        CertificateAuthority.load(tmp_path / "ca.key", tmp_path / "ca.crt")


# --- reading the party id ---------------------------------------------------------------


def test_party_from_certificate_pem_and_der(party):
    assert certs.party_from_certificate(party.cert_pem) == "gemeente-tilburg"
    der = _load(party.cert_pem).public_bytes(serialization.Encoding.DER)
    assert certs.party_from_certificate(der) == "gemeente-tilburg"


def _handmade(ca: CertificateAuthority, names: list[x509.GeneralName] | None) -> bytes:
    """A certificate from the CA's key with whatever SANs a test needs."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(_load(ca.cert_pem).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize(
    "names",
    [
        None,
        [x509.DNSName("gemeente-tilburg")],
        [URI("urn:samenloop:broker:gemeente-tilburg")],
        [URI("urn:samenloop:party:Gemeente")],
        [URI("urn:samenloop:party:")],
        [URI("urn:samenloop:party:a"), URI("urn:samenloop:party:b")],
    ],
    ids=["no-san", "dns-only", "broker-urn", "bad-id", "empty-id", "two-parties"],
)
def test_party_from_certificate_refuses(ca, names):
    with pytest.raises(InvalidInput) as caught:
        certs.party_from_certificate(_handmade(ca, names))
    assert caught.value.field == "certificate"


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAA\n"])
def test_party_from_garbage(data):
    with pytest.raises(InvalidInput) as caught:
        certs.party_from_certificate(data)
    assert caught.value.field == "certificate"


# --- verifying ------------------------------------------------------------------------


def test_verify_a_good_certificate(ca, party):
    assert certs.verify_certificate(party.cert_pem, ca.cert_pem, now=NOW) == "gemeente-tilburg"


def test_verify_refuses_with_the_reason(ca, party):
    other_ca = CertificateAuthority.create(COVENANT, now=NOW)  # same name, other key
    stranger = CertificateAuthority.create("other-covenant", now=NOW)
    expired = ca.issue_party("politie", now=NOW - timedelta(days=30), days=1)
    broker = ca.issue_broker("broker", ["localhost"], now=NOW)
    cases = [
        (other_ca.issue_party("gemeente-tilburg", now=NOW).cert_pem, NOW, "certificate.untrusted"),
        (stranger.issue_party("gemeente-tilburg", now=NOW).cert_pem, NOW, "certificate.untrusted"),
        (expired.cert_pem, NOW, "certificate.expired"),
        (party.cert_pem, NOW - timedelta(days=1), "certificate.not_yet_valid"),
        (party.cert_pem, NOW + timedelta(days=366), "certificate.expired"),
        (broker.cert_pem, NOW, "certificate.not_a_party"),
        (ca.cert_pem, NOW, "certificate.not_a_party"),
        (_handmade(ca, [URI("urn:samenloop:party:a")]), NOW, "certificate.not_a_party"),
    ]
    for cert_pem, now, reason in cases:
        with pytest.raises(CertificateRejected) as caught:
            certs.verify_certificate(cert_pem, ca.cert_pem, now=now)
        assert caught.value.reason == reason, (reason, str(caught.value))
        assert caught.value.field == "certificate"
        assert "certificate" in caught.value.message
        assert isinstance(caught.value, InvalidSignature)  # UNAUTHENTICATED
    with pytest.raises(InvalidInput):
        certs.verify_certificate(b"garbage", ca.cert_pem, now=NOW)


# --- gRPC mutual TLS ----------------------------------------------------------------------

WHOAMI = "/samenloop.test.Identity/WhoAmI"


def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    """What the broker's authentication interceptor will do: read the verified client cert."""
    auth = context.auth_context()
    pem = auth["x509_pem_cert"][0]
    sans = b",".join(auth.get("x509_subject_alternative_name", []))
    return certs.party_from_certificate(pem).encode() + b"|" + sans


@dataclass
class Server:
    port: int
    ca: CertificateAuthority


@pytest.fixture(scope="module")
def server(ca: CertificateAuthority) -> Iterator[Server]:
    broker = ca.issue_broker("broker-riec-zwb", ["localhost", "127.0.0.1"], now=NOW)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), grpc_server)
    handler = grpc.method_handlers_generic_handler(
        "samenloop.test.Identity",
        {"WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami)},
    )
    grpc_server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(broker.key_pem, broker.cert_pem)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    yield Server(port=port, ca=ca)
    grpc_server.stop(grace=None)


def _channel(server: Server, client: IssuedCertificate | None, host: str = "localhost"):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server.ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(f"{host}:{server.port}", credentials)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_party_of_the_covenant_connects_and_is_identified(server, party, host):
    with _channel(server, party, host) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        who = channel.unary_unary(WHOAMI)(b"", timeout=10)
    party_id, sans = who.split(b"|")
    assert party_id == b"gemeente-tilburg"
    # gRPC also lists the SANs (of every kind, untyped) under this key.
    assert sans == b"urn:samenloop:party:gemeente-tilburg"


def _refused(server: Server, client: IssuedCertificate | None) -> grpc.RpcError:
    with _channel(server, client) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return caught.value


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(server):
    other = CertificateAuthority.create(COVENANT, now=NOW).issue_party("gemeente-tilburg", now=NOW)
    error = _refused(server, other)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()


def test_an_expired_certificate_is_refused_in_the_handshake(server, ca):
    expired = ca.issue_party("gemeente-tilburg", now=NOW - timedelta(days=30), days=1)
    error = _refused(server, expired)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()


def test_a_client_without_a_certificate_is_refused_in_the_handshake(server):
    error = _refused(server, None)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()


def test_a_broker_certificate_cannot_pose_as_a_client(server, ca):
    # TLS checks the extended key usage: a serverAuth-only certificate is no client.
    broker = ca.issue_broker("gemeente-tilburg", ["localhost"], now=NOW)
    error = _refused(server, broker)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()


def test_the_client_checks_the_brokers_name(server, party):
    # The broker's certificate lists localhost and 127.0.0.1; a node that expects another
    # name (here through the override option gRPC offers for tests) refuses the broker.
    credentials = grpc.ssl_channel_credentials(server.ca.cert_pem, party.key_pem, party.cert_pem)
    options = [("grpc.ssl_target_name_override", "broker.elsewhere.example")]
    channel = grpc.secure_channel(f"localhost:{server.port}", credentials, options)
    with channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification Check failed" in caught.value.details()
