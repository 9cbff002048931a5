"""The covenant's own certificate authority: the identities behind mTLS.

Every party, and the broker, has a certificate from the covenant's CA (ECDSA
P-256, SHA-256, random serials). A party certificate carries the party id as
the URI subject alternative name ``urn:samenloop:party:<id>`` (and as the
common name, for people) and may only authenticate a TLS client; the broker's
carries ``urn:samenloop:broker:<id>`` plus the DNS names and IP addresses it
serves on, and may only authenticate a TLS server. The broker takes a caller's
party id from its verified client certificate (``party_from_certificate``),
never from a message field alone.

This module also defines what an id looks like (``check_id``): party,
covenant and broker ids are the names these certificates carry.

Bytes in, bytes out: nothing here opens a socket or imports grpc. Private keys
are PEM (PKCS #8, unencrypted, as gRPC loads them) and written owner-only with
``save_private_key``; no ``repr`` shows one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from samenloop.policies import crypto
from samenloop.policies.errors import ConfigurationError, InvalidInput, InvalidSignature
from samenloop.v1 import common_pb2

#: Longest party, covenant or broker id, in bytes of UTF-8 (the wire format's limit).
MAX_ID_BYTES: int = common_pb2.LIMITS_MAX_PARTY_ID_BYTES

_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*\Z")

PARTY_URN_PREFIX = "urn:samenloop:party:"
BROKER_URN_PREFIX = "urn:samenloop:broker:"

#: Certificates start this long before ``now``, so that a peer whose clock is
#: slightly behind does not see a fresh certificate as not yet valid.
BACKDATE = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)

CA_ORGANIZATION = "Samenloop covenant CA"
MAX_DAYS = 36500
#: How long a new covenant CA is valid by default: ten years.
DEFAULT_CA_DAYS = 3650

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


class CertificateRejected(InvalidSignature):
    """A certificate is not a valid identity under this covenant's CA.

    Unlike other signature failures it says why (expired, not yet valid, not
    issued by this CA): nothing about a certificate is secret. Status
    UNAUTHENTICATED, like every other failed authentication.
    """

    default_reason = "certificate.rejected"


def check_id(value: object, *, field: str) -> str:
    """Return ``value`` if it is a valid id (party, covenant, broker); else raise ``InvalidInput``.

    An id is 1..64 bytes of lower-case ASCII letters, digits and hyphens, not
    starting with a hyphen: ``gemeente-tilburg``.
    """
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field=field)
    if not 0 < len(value.encode("utf-8")) <= MAX_ID_BYTES:
        raise InvalidInput(f"must be 1..{MAX_ID_BYTES} bytes", field=field)
    if not _ID_PATTERN.match(value):
        raise InvalidInput(
            "must be lower-case letters, digits and hyphens, starting with a letter or digit",
            field=field,
        )
    return value


# --- issuing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class IssuedCertificate:
    """A freshly issued certificate and its private key, both PEM. ``repr`` hides the key."""

    key_pem: bytes
    cert_pem: bytes

    def __repr__(self) -> str:
        return f"IssuedCertificate(cert={certificate_fingerprint(self.cert_pem)}, key=<redacted>)"


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class CertificateAuthority:
    """The covenant's CA: its private key and self-signed certificate, both PEM.

    Constructing one checks that the certificate is a CA certificate and that
    the key belongs to it (``ConfigurationError`` otherwise). ``repr`` shows the
    covenant id and the certificate's fingerprint, never the key.
    """

    key_pem: bytes
    cert_pem: bytes

    def __post_init__(self) -> None:
        key = _load_private_key(self.key_pem, field="ca.key")
        try:
            cert = _load_certificate(self.cert_pem, field="ca.certificate")
        except InvalidInput as error:
            raise ConfigurationError(error.message, field=error.field) from error
        if not _is_ca(cert):
            raise ConfigurationError("not a CA certificate", field="ca.certificate")
        if _public_der(key.public_key()) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ConfigurationError(
                "the CA key does not belong to the CA certificate", field="ca.key"
            )

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(covenant_id={self.covenant_id!r}, "
            f"cert={certificate_fingerprint(self.cert_pem)}, key=<redacted>)"
        )

    @classmethod
    def create(
        cls, covenant_id: str, *, now: datetime, days: int = DEFAULT_CA_DAYS
    ) -> CertificateAuthority:
        """A new CA for ``covenant_id``, valid for ``days`` from ``now``."""
        check_id(covenant_id, field="covenant_id")
        _check_now(now)
        _check_days(days)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, covenant_id),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(
            key_pem=_private_pem(key), cert_pem=cert.public_bytes(serialization.Encoding.PEM)
        )

    @property
    def covenant_id(self) -> str:
        cert = _load_certificate(self.cert_pem, field="ca.certificate")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""

    @staticmethod
    def made_for(cert_pem: bytes, *, field: str) -> str | None:
        """The covenant id a CA certificate that :meth:`create` made names; ``None`` for a
        certificate made otherwise (an organisation's own CA names no covenant)."""
        subject = _load_certificate(cert_pem, field=field).subject
        organisations = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [str(o.value) for o in organisations] != [CA_ORGANIZATION] or len(names) != 1:
            return None
        return str(names[0].value)

    def issue_party(self, party_id: str, *, now: datetime, days: int = 365) -> IssuedCertificate:
        """A TLS client certificate for ``party_id``: SAN ``urn:samenloop:party:<id>``, CN = id."""
        check_id(party_id, field="party_id")
        return self._issue(
            common_name=party_id,
            names=[x509.UniformResourceIdentifier(PARTY_URN_PREFIX + party_id)],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            now=now,
            days=days,
        )

    def issue_broker(
        self, broker_id: str, hosts: Sequence[str], *, now: datetime, days: int = 365
    ) -> IssuedCertificate:
        """A TLS server certificate for the broker.

        SAN ``urn:samenloop:broker:<id>`` plus every host in ``hosts``: IP
        addresses as IP SANs, anything else as a DNS name. Clients dial one of
        these names (``localhost:7443``), and TLS checks it.
        """
        check_id(broker_id, field="broker_id")
        if isinstance(hosts, str) or not hosts:
            raise InvalidInput("list at least one host name or IP address", field="hosts")
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(BROKER_URN_PREFIX + broker_id)
        ]
        for i, host in enumerate(hosts):
            names.append(_host_name(host, field=f"hosts[{i}]"))
        return self._issue(
            common_name=broker_id,
            names=names,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            now=now,
            days=days,
        )

    def _issue(
        self,
        *,
        common_name: str,
        names: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        now: datetime,
        days: int,
    ) -> IssuedCertificate:
        _check_now(now)
        _check_days(days)
        ca_key = _load_private_key(self.key_pem, field="ca.key")
        ca_cert = _load_certificate(self.cert_pem, field="ca.certificate")
        if not ca_cert.not_valid_before_utc <= now <= ca_cert.not_valid_after_utc:
            raise ConfigurationError(
                f"the covenant CA is valid from {ca_cert.not_valid_before_utc.isoformat()} "
                f"until {ca_cert.not_valid_after_utc.isoformat()}; it cannot issue now",
                field="ca.certificate",
            )
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.covenant_id),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - BACKDATE, ca_cert.not_valid_before_utc))
            .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return IssuedCertificate(
            key_pem=_private_pem(key), cert_pem=cert.public_bytes(serialization.Encoding.PEM)
        )

    # Files: the key owner-only, the certificate world-readable.

    def save(self, key_path: Path, cert_path: Path) -> None:
        """Write the key (0600) and the certificate, each atomically (``covenant ca-init``
        and provisioning)."""
        save_private_key(key_path, self.key_pem)
        crypto.write_file_atomically(Path(cert_path), self.cert_pem)

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> CertificateAuthority:
        try:
            cert_pem = Path(cert_path).read_bytes()
        except OSError as error:
            raise ConfigurationError(
                f"cannot read {cert_path}: {error.strerror}", field=str(cert_path)
            ) from error
        return cls(key_pem=crypto.read_secret_file(Path(key_path)), cert_pem=cert_pem)


def save_private_key(path: Path, pem: bytes) -> None:
    """Write a private key atomically, readable by the owner only (mode 0600)."""
    crypto.write_secret_file(Path(path), pem)


# --- reading and verifying -----------------------------------------------------


def party_from_certificate(cert_pem_or_der: bytes) -> str:
    """The party id in a certificate's ``urn:samenloop:party:<id>`` SAN.

    Raises ``InvalidInput`` (field ``certificate``) if the certificate cannot
    be parsed or does not carry exactly one well-formed party URI. This does
    not verify the certificate: TLS (or ``verify_certificate``) does that.
    """
    return _identity(_load_any(cert_pem_or_der), PARTY_URN_PREFIX, "party")


def broker_from_certificate(cert_pem_or_der: bytes) -> str:
    """The broker id in a certificate's ``urn:samenloop:broker:<id>`` SAN (see above)."""
    return _identity(_load_any(cert_pem_or_der), BROKER_URN_PREFIX, "broker")


def verify_certificate(cert_pem: bytes, ca_cert_pem: bytes, *, now: datetime) -> str:
    """Verify a party's client certificate against the covenant CA at ``now``; return the party id.

    Raises ``CertificateRejected`` (UNAUTHENTICATED, field ``certificate``)
    with the reason: not issued by this CA (``certificate.untrusted``),
    expired (``certificate.expired``), not yet valid
    (``certificate.not_yet_valid``), or not a party's client certificate
    (``certificate.not_a_party``); ``InvalidInput`` if it cannot be parsed.
    The full RFC 5280 path validation is pyca/cryptography's client verifier.
    """
    _check_now(now)
    cert = _load_any(cert_pem)
    ca = _load_certificate(ca_cert_pem, field="ca_certificate")
    field = "certificate"
    if cert.issuer != ca.subject:
        raise CertificateRejected(
            "certificate was not issued by this covenant's CA",
            field=field,
            reason="certificate.untrusted",
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, _CryptoInvalidSignature) as error:
        raise CertificateRejected(
            "certificate was not issued by this covenant's CA",
            field=field,
            reason="certificate.untrusted",
        ) from error
    for which, subject in (("certificate", cert), ("the covenant CA certificate", ca)):
        if now < subject.not_valid_before_utc:
            raise CertificateRejected(
                f"{which} is not valid before {subject.not_valid_before_utc.isoformat()}",
                field=field,
                reason="certificate.not_yet_valid",
            )
        if now > subject.not_valid_after_utc:
            raise CertificateRejected(
                f"{which} expired at {subject.not_valid_after_utc.isoformat()}",
                field=field,
                reason="certificate.expired",
            )
    verifier = PolicyBuilder().store(Store([ca])).time(now).build_client_verifier()
    try:
        verifier.verify(cert, [])
        return _identity(cert, PARTY_URN_PREFIX, "party")
    except (VerificationError, InvalidInput) as error:
        raise CertificateRejected(
            f"certificate is not a valid party client certificate: {error}",
            field=field,
            reason="certificate.not_a_party",
        ) from error


def check_key_pair(
    cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes, *, now: datetime, field: str
) -> x509.Certificate:
    """A certificate and its private key as TLS would serve them, checked before use (a
    renewed pair is taken only if it passes): the key is the certificate's, the
    certificate was issued by the covenant CA and is valid at ``now``. Returns the parsed
    certificate (for its expiry); else ``ConfigurationError`` naming ``field`` and why."""
    _check_now(now)
    try:
        cert = _load_certificate(cert_pem, field=field)
    except InvalidInput as error:
        raise ConfigurationError(f"not a PEM X.509 certificate ({error})", field=field) from error
    key = _load_private_key(key_pem, field=field)
    if _public_der(key.public_key()) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigurationError(
            "the private key is not the certificate's", field=field, reason=KEY_MISMATCH
        )
    ca = _load_certificate(ca_cert_pem, field="ca_certificate")
    try:
        if cert.issuer != ca.subject:
            raise ValueError("issuer")
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, _CryptoInvalidSignature) as error:
        raise ConfigurationError(
            "the certificate was not issued by this covenant's CA", field=field
        ) from error
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigurationError(
            f"the certificate is valid from {cert.not_valid_before_utc.isoformat()} "
            f"until {cert.not_valid_after_utc.isoformat()}, not now",
            field=field,
        )
    return cert


#: ``check_key_pair``'s reason when the key is not the certificate's: a replacement may be
#: half done (one file moved, the other on its way).
KEY_MISMATCH = "certificate.key_mismatch"

#: A daemon warns at each sweep when its own certificate expires within this many days.
EXPIRY_WARNING_DAYS = 30


def expires_soon(
    not_valid_after: datetime, *, now: datetime, days: int = EXPIRY_WARNING_DAYS
) -> int | None:
    """The whole days left when a certificate expires within ``days`` of ``now``, else None:
    what a daemon logs as a warning for operators to alert on."""
    left = not_valid_after - now
    return max(0, left.days) if left < timedelta(days=days) else None


def certificate_fingerprint(cert_pem: bytes) -> str:
    """A short printable name for a certificate: the first 16 hex of SHA-256 over its DER."""
    der = _load_any(cert_pem).public_bytes(serialization.Encoding.DER)
    return crypto.fingerprint(der)


def load_certificate(cert_pem: bytes, *, field: str) -> x509.Certificate:
    """Parse one PEM certificate; ``InvalidInput`` naming ``field`` if it is not one."""
    return _load_certificate(cert_pem, field=field)


def check_ca_certificate(cert_pem: bytes, *, field: str) -> bytes:
    """Return ``cert_pem`` if it is a PEM CA certificate for this covenant's use; else raise."""
    cert = _load_certificate(cert_pem, field=field)
    if not _is_ca(cert):
        raise InvalidInput("not a CA certificate (basic constraints)", field=field)
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise InvalidInput("CA key must be ECDSA P-256", field=field)
    return cert_pem


# --- internals -------------------------------------------------------------------


def _identity(cert: x509.Certificate, prefix: str, kind: str) -> str:
    field = "certificate"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as error:
        raise InvalidInput(
            f"certificate carries no subject alternative name, so no {kind} id", field=field
        ) from error
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    ours = [u for u in uris if u.startswith(prefix)]
    if len(ours) != 1:
        raise InvalidInput(
            f"certificate must carry exactly one {prefix}<id> URI, found {len(ours)}",
            field=field,
        )
    return check_id(ours[0][len(prefix) :], field=field)


def _load_any(data: bytes) -> x509.Certificate:
    if not isinstance(data, bytes):
        raise InvalidInput("certificate must be bytes (PEM or DER)", field="certificate")
    if data.lstrip().startswith(b"-----BEGIN"):
        return _load_certificate(data, field="certificate")
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise InvalidInput("not an X.509 certificate", field="certificate") from error


def _load_certificate(pem: bytes, *, field: str) -> x509.Certificate:
    if not isinstance(pem, bytes):
        raise InvalidInput("certificate must be PEM bytes", field=field)
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise InvalidInput("not a PEM X.509 certificate", field=field) from error


def _load_private_key(pem: bytes, *, field: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        # Never include the parser's message: it could quote key material.
        raise ConfigurationError("not an unencrypted PEM private key", field=field) from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError("private key must be ECDSA P-256", field=field)
    return key


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _host_name(host: object, *, field: str) -> x509.GeneralName:
    if not isinstance(host, str) or not host:
        raise InvalidInput("must be a host name or IP address", field=field)
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise InvalidInput("not a valid lower-case DNS name or IP address", field=field)
    return x509.DNSName(host)


def _check_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInput("time must be a timezone-aware datetime", field="now")


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"validity must be 1..{MAX_DAYS} days", field="days")
