"""The covenant-wide attribute key and its boxes.

``AttributeKey`` is the secretbox key under which nodes seal a token entry's
``MemberAttributes`` (``seal_attributes`` / ``open_attributes``, padded so the
length does not tell the category). Each party gets it in a NaCl sealed box to its
X25519 key, framed with the covenant id and key version
(``seal_attribute_key_for`` / ``open_attribute_key``), so a box of another
covenant or version does not open as this one. Dealing it into a covenant version
and holding the versions a node was dealt is :mod:`.dealing`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from samenloop.policies import crypto
from samenloop.policies.certs import check_id
from samenloop.policies.covenant.fields import MAX_UINT32, check_bytes
from samenloop.policies.crypto import PartyKeys, PublicKeys
from samenloop.policies.errors import DecryptionFailed, InvalidInput, MessageTooLarge
from samenloop.policies.policy import check_int as _check_int
from samenloop.v1 import common_pb2

# --- the attribute key ---------------------------------------------------------------

ATTRIBUTE_KEY_BYTES = 32
#: Sealed attributes are padded to a multiple of this, so that their length
#: does not tell which category they hold.
ATTRIBUTES_BLOCK_BYTES = 32
MAX_ATTRIBUTES_BYTES: int = common_pb2.LIMITS_MAX_TEXT_BYTES
_ATTRIBUTE_KEY_DOMAIN = b"samenloop/v1 attribute key\x00"


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class AttributeKey:
    """The covenant-wide secretbox key for ``MemberAttributes``. Secret: no repr, no ``==``."""

    covenant_id: str
    version: int
    key: bytes

    def __post_init__(self) -> None:
        check_id(self.covenant_id, field="covenant_id")
        _check_int(self.version, 1, MAX_UINT32, field="version")
        check_bytes(self.key, ATTRIBUTE_KEY_BYTES, field="key")

    def __repr__(self) -> str:
        return (
            f"AttributeKey(covenant_id={self.covenant_id!r}, version={self.version}, "
            "key=<redacted>)"
        )


def new_attribute_key(covenant_id: str, version: int) -> AttributeKey:
    """A fresh random attribute key for ``covenant_id`` at ``version``."""
    return AttributeKey(covenant_id=covenant_id, version=version, key=crypto.secretbox_key())


def _attribute_key_plaintext(covenant_id: str, version: int, key: bytes) -> bytes:
    cid = covenant_id.encode("utf-8")
    return (
        _ATTRIBUTE_KEY_DOMAIN + struct.pack(">H", len(cid)) + cid + struct.pack(">I", version) + key
    )


def seal_attribute_key_for(party_keys: PublicKeys, key: AttributeKey) -> bytes:
    """Seal ``key`` to a party's X25519 key (NaCl sealed box), framed with covenant and version."""
    return crypto.seal_anonymous(
        party_keys.x25519, _attribute_key_plaintext(key.covenant_id, key.version, key.key)
    )


def open_attribute_key(
    party_keys: PartyKeys,
    sealed: bytes,
    *,
    covenant_id: str,
    version: int,
    field: str = "attribute_key",
) -> AttributeKey:
    """Open a sealed attribute key and check it is for ``covenant_id`` at ``version``.

    ``DecryptionFailed`` if it was not sealed to ``party_keys``; ``InvalidInput``
    if it belongs to another covenant or key version.
    """
    plaintext = crypto.open_anonymous(party_keys.x25519_secret, sealed, field=field)
    key = plaintext[-ATTRIBUTE_KEY_BYTES:]
    expected = _attribute_key_plaintext(covenant_id, version, key)
    if len(plaintext) != len(expected) or not crypto.equal(plaintext, expected):
        raise InvalidInput(
            f"attribute key is not for covenant {covenant_id} key version {version}", field=field
        )
    return AttributeKey(covenant_id=covenant_id, version=version, key=key)


def seal_attributes(
    key: AttributeKey, plaintext: bytes, *, nonce: bytes | None = None
) -> tuple[bytes, bytes]:
    """Encrypt serialized ``MemberAttributes`` under the attribute key: (nonce, ciphertext).

    The plaintext is framed (2-byte big-endian length, the bytes) and
    zero-padded to a multiple of 32 bytes before sealing, as ``SecretBox``
    requires. ``nonce`` is for tests only.
    """
    if not isinstance(plaintext, bytes):
        raise InvalidInput("must be bytes", field="attributes")
    if len(plaintext) > MAX_ATTRIBUTES_BYTES:
        raise MessageTooLarge(f"at most {MAX_ATTRIBUTES_BYTES} bytes", field="attributes")
    framed = struct.pack(">H", len(plaintext)) + plaintext
    padded = framed + bytes(-len(framed) % ATTRIBUTES_BLOCK_BYTES)
    return crypto.secretbox_seal(key.key, padded, nonce=nonce)


def open_attributes(
    key: AttributeKey, nonce: bytes, ciphertext: bytes, *, field: str = "sealed_attributes"
) -> bytes:
    """Decrypt and unpad sealed attributes; ``DecryptionFailed`` on any failure, whatever it is."""
    padded = crypto.secretbox_open(key.key, nonce, ciphertext, field=field)
    if len(padded) < 2 or len(padded) % ATTRIBUTES_BLOCK_BYTES:
        raise DecryptionFailed("cannot open sealed message", field=field)
    (length,) = struct.unpack(">H", padded[:2])
    end = 2 + length
    expected_size = end + (-end % ATTRIBUTES_BLOCK_BYTES)
    if expected_size != len(padded) or any(padded[end:]):
        raise DecryptionFailed("cannot open sealed message", field=field)
    return padded[2:end]


def sealed_attribute_key_bytes(covenant_id: str) -> int:
    """The exact size of an attribute key of ``covenant_id`` sealed to a party."""
    return crypto.SEALED_BOX_OVERHEAD + len(_attribute_key_plaintext(covenant_id, 1, bytes(32)))
