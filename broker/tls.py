"""The broker's TLS certificate, taken again from its files when they are replaced.

gRPC asks :meth:`ServingCertificate.fetch` before each new handshake; a ``stat`` of the
two files says whether anything changed (cheap). A changed pair is read and checked
(:func:`samenloop.policies.certs.check_key_pair`: the key is the certificate's, the
covenant CA issued it, it is valid now) before it is served to new connections;
connections open already keep theirs. A pair that fails is refused with one error line
naming the setting, and the pair served before goes on. Client certificates are still
verified against the covenant CA alone. So an operator renews the broker's certificate by
replacing the files (``mv``), without a restart.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import grpc
import structlog

from samenloop.policies import certs, crypto
from samenloop.policies.errors import ConfigurationError

log = structlog.get_logger(__name__)

#: A key that does not match its certificate may be half-way through a replacement (the
#: certificate moved, the key not yet): judged only once the files are this old.
SETTLE_SECONDS = 2.0

_Signature = tuple[tuple[int, int, int], tuple[int, int, int]]


def _stat(path: Path) -> tuple[int, int, int]:
    found = os.stat(path)
    return (found.st_ino, found.st_mtime_ns, found.st_size)


def expiry_warning(not_valid_after: datetime, *, now: datetime, setting: str) -> None:
    """One warning line when a certificate in use expires soon: for alerting."""
    days_left = certs.expires_soon(not_valid_after, now=now)
    if days_left is not None:
        log.warning(
            "the TLS certificate expires soon; renew it",
            setting=setting,
            expires_at=not_valid_after.isoformat(),
            days_left=days_left,
        )


class ServingCertificate:
    """The broker's certificate and key as served, and the fetcher gRPC asks."""

    def __init__(
        self,
        certificate: Path,
        private_key: Path,
        ca_certificate: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._certificate = Path(certificate)
        self._private_key = Path(private_key)
        self._ca = ca_certificate
        self._clock = clock
        self._lock = threading.Lock()
        signature = self._signature()
        cert_pem, key_pem = self._read()
        # At start a bad pair stops the broker (ConfigurationError naming the setting).
        parsed = certs.check_key_pair(
            cert_pem, key_pem, ca_certificate, now=clock(), field="certificate"
        )
        self._served: _Signature = signature
        self._refused: _Signature | None = None
        self.not_valid_after = parsed.not_valid_after_utc
        self.fingerprint = certs.certificate_fingerprint(cert_pem)
        self.initial = self._configuration(cert_pem, key_pem)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that ask :meth:`fetch` at each handshake; clients must
        present a certificate of the covenant CA."""
        # gRPC documents None as "no change"; its type stubs do not say so.
        fetcher = cast("Callable[[], grpc.ServerCertificateConfiguration]", self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            self.initial, fetcher, require_client_authentication=True
        )

    def _signature(self) -> _Signature:
        return (_stat(self._certificate), _stat(self._private_key))

    def _read(self) -> tuple[bytes, bytes]:
        try:
            cert_pem = self._certificate.read_bytes()
        except OSError as error:
            raise ConfigurationError(
                f"cannot read certificate {self._certificate}: {error.strerror}",
                field="certificate",
            ) from error
        key_pem = crypto.read_secret_file(
            self._private_key, what="TLS private key", field="private_key"
        )
        return cert_pem, key_pem

    def _configuration(
        self, cert_pem: bytes, key_pem: bytes
    ) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, cert_pem)], root_certificates=self._ca
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and the new pair passes; else None
        (gRPC keeps serving the pair it has). Never raises: a handshake must not fail
        because a replacement is bad."""
        try:
            with self._lock:
                return self._fetch()
        except Exception:  # gRPC's callback must not raise
            log.exception("checking the TLS certificate files failed")
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            signature = self._signature()
        except OSError:  # mid-replacement, or removed: keep serving the pair we have
            return None
        if signature in (self._served, self._refused):
            return None
        try:
            cert_pem, key_pem = self._read()
            parsed = certs.check_key_pair(
                cert_pem, key_pem, self._ca, now=self._clock(), field="certificate"
            )
        except ConfigurationError as error:
            newest = max(signature[0][1], signature[1][1]) / 1e9
            if error.reason == certs.KEY_MISMATCH and time.time() - newest < SETTLE_SECONDS:
                return None  # perhaps the other file is on its way: look again next time
            self._refused = signature
            log.error(
                "the replaced TLS certificate is refused; the one before is still served",
                setting=error.field or "certificate",
                reason=error.message,
            )
            return None
        self._served, self._refused = signature, None
        self.not_valid_after = parsed.not_valid_after_utc
        self.fingerprint = certs.certificate_fingerprint(cert_pem)
        log.info(
            "TLS certificate renewed: served to new connections",
            fingerprint=self.fingerprint,
            expires_at=self.not_valid_after.isoformat(),
        )
        return self._configuration(cert_pem, key_pem)

    def check_expiry(self) -> None:
        """At each sweep: warn when the certificate served expires soon."""
        expiry_warning(self.not_valid_after, now=self._clock(), setting="certificate")
