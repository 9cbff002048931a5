"""The covenant's limits and the checks its fields share: sizes of keys and names,
addresses to dial, times with a zone, the CA certificate's PEM. Each raises
``InvalidInput`` naming the field it was given.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime

from samenloop.policies import certs, crypto
from samenloop.policies.crypto import PublicKeys
from samenloop.policies.errors import InvalidInput
from samenloop.v1 import common_pb2

KIND = "samenloop.covenant.v1"

MAX_HOLDERS: int = common_pb2.LIMITS_MAX_KEY_HOLDERS
MAX_PARTIES: int = common_pb2.LIMITS_MAX_PARTIES
KEY_BYTES: int = common_pb2.LIMITS_KEY_BYTES
ELEMENT_BYTES: int = common_pb2.LIMITS_ELEMENT_BYTES
MAX_NAME_BYTES = 256
MAX_UINT32 = 2**32 - 1
MAX_UINT63 = 2**63 - 1  # TOML integers are signed 64-bit


# --- field rules -----------------------------------------------------------------------

_PEM_CHARS = re.compile(r"[A-Za-z0-9+/=\n -]*\Z")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def parse_address(text: object, *, field: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raise ``InvalidInput`` naming ``field``.

    ``host`` is a DNS name or an IP address; ``port`` 1..65535 (0 too with
    ``allow_port_zero``, for addresses to listen on: the system picks one).
    Returns the host without brackets.
    """
    if not isinstance(text, str):
        raise InvalidInput("must be a string host:port", field=field)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not port_text.isascii():
        raise InvalidInput("must be host:port, e.g. broker.example.nl:7443", field=field)
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535 or len(port_text) > 5:
        raise InvalidInput("port must be 1..65535", field=field)
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), port
        except ValueError as error:
            raise InvalidInput("not a valid IPv6 address", field=field) from error
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        pass
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise InvalidInput(
            "host must be a DNS name, an IPv4 address or [IPv6] address", field=field
        )
    return host, port


def check_address(text: object, *, field: str) -> str:
    """Return ``text`` if it is a valid ``host:port`` to dial; else raise ``InvalidInput``."""
    parse_address(text, field=field)
    assert isinstance(text, str)
    return text


def check_bytes(value: object, length: int, *, field: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidInput(f"must be {length} bytes", field=field)
    return value


def check_name(value: object, *, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("must be a non-empty string", field=field)
    if len(value.encode("utf-8")) > MAX_NAME_BYTES or value != value.strip():
        raise InvalidInput(
            f"must be at most {MAX_NAME_BYTES} bytes, without surrounding spaces", field=field
        )
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise InvalidInput("must not contain control characters", field=field)
    return value


def check_public_keys(keys: object, *, field: str) -> PublicKeys:
    if not isinstance(keys, PublicKeys):
        raise InvalidInput("must be the party's public keys", field=field)
    check_bytes(keys.ed25519, KEY_BYTES, field=f"{field}.ed25519")
    crypto.check_x25519_public(keys.x25519, field=f"{field}.x25519")
    return keys


def check_time(value: object, *, field: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput("must be a timezone-aware date-time (UTC)", field=field)
    return value


def check_pem(value: object, *, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidInput("must be PEM bytes", field=field)
    if not _PEM_CHARS.match(value.decode("ascii", "replace")):
        raise InvalidInput("must be one PEM certificate and nothing else", field=field)
    if value.count(b"-----BEGIN") != 1 or not value.startswith(b"-----BEGIN CERTIFICATE-----"):
        raise InvalidInput("must be one PEM certificate and nothing else", field=field)
    certs.check_ca_certificate(value, field=field)
    return value
