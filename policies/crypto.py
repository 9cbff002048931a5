"""All of Samenloop's cryptography outside the OPRF, behind one small API.

- ``sign`` / ``verify``: Ed25519 (RFC 8032, libsodium via PyNaCl) over
  domain-separated bytes, with a context string per message kind, so that a
  signature made for one kind of message can never be replayed as another.
- ``seal_signed`` / ``open_signed``: what parties send each other end to end —
  a message signed for its recipient, then sealed with NaCl ``crypto_box``
  (X25519 + XSalsa20-Poly1305) from the sender's static key to the
  recipient's: only the recipient can read it, and it proves its sender.
  ``seal`` / ``open_sealed`` are the bare box underneath.
- ``seal_anonymous`` / ``open_anonymous``: NaCl sealed boxes, for key shares
  dealt to a key holder and attribute keys dealt to the parties, by an
  administrator who has no party key.
- ``secretbox_key``, ``secretbox_seal`` / ``secretbox_open``: NaCl secretbox under a key the
  covenant's parties share (the attribute key), for what the broker stores
  and forwards unread.
- ``additive_shares`` / ``add_shares``: additive secret sharing of a vector of
  integers modulo 2^64 between two parties (the regional picture's secure
  aggregation): one share drawn uniformly from the operating system's CSPRNG,
  the other the vector minus it; either share alone is uniformly random.
- ``hkdf_sha256``: key derivation (RFC 5869), used to derive tokens and hit proof keys.
- ``mac`` / ``verify_mac``: HMAC-SHA256 (RFC 2104), with which a disclosure
  requester proves that it holds the subject of a hit.
- ``equal``: constant-time comparison of secrets; ``digest``: SHA-256, to recognise
  bytes seen before (a key holder's answered requests) without keeping them.
- Key files written atomically with owner-only permissions, and refused when
  anyone else can read them or another account owns them (``check_owner_only``,
  the same check the daemons run on their data directories at start, and, in its
  ``others_may_read`` form, on the files they take their orders from).

Like pyca/cryptography's Fernet, every failure raises one exception per
operation (``InvalidSignature``, ``DecryptionFailed``) and says nothing else:
no error oracle. Nothing here logs or reprs a secret.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import json
import os
import stat
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import numpy as np
from cryptography.exceptions import InvalidSignature as _BadMac
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from samenloop.policies.errors import (
    ConfigurationError,
    DecryptionFailed,
    InvalidInput,
    InvalidSignature,
)
from samenloop.v1 import common_pb2

#: Prefix of every byte string we sign; version it with the protocol.
SIGNATURE_DOMAIN = b"samenloop/v1 signed message\x00"

ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
X25519_KEY_BYTES = 32
BOX_NONCE_BYTES = nacl.bindings.crypto_box_NONCEBYTES
#: What a NaCl sealed box adds to its plaintext: the ephemeral public key and the MAC.
SEALED_BOX_OVERHEAD: int = nacl.bindings.crypto_box_SEALBYTES


class SignatureContext(enum.StrEnum):
    """The kinds of signed message (``Signed.context`` on the wire). A signature binds its context.

    The list matches the one in ``proto/samenloop/v1/common.proto``.
    """

    OPRF_REQUEST = "oprf-request"
    OPRF_RESPONSE = "oprf-response"
    HIT_NOTICE = "hit-notice"
    COVENANT = "covenant"
    AUDIT_CHECKPOINT = "audit-checkpoint"
    DISCLOSURE_REQUEST = "disclosure-request"
    DISCLOSURE_RESPONSE = "disclosure-response"
    PICTURE_REQUEST = "picture-request"
    PICTURE_CONTRIBUTION = "picture-contribution"
    PICTURE_SHARE = "picture-share"
    PICTURE_SUM_REQUEST = "picture-sum-request"
    PICTURE_SUM = "picture-sum"
    CASE_MESSAGE = "case-message"
    NETWORK_LINK = "network-link"
    KEY_EPOCH = "key-epoch"
    COVENANT_TIMESTAMP = "covenant-timestamp"


def frame(data: bytes) -> bytes:
    """``data`` behind its 2-byte big-endian length, so that no two sequences of framed
    parts share an encoding (signed bytes, OPRF inputs, MAC'd messages)."""
    if len(data) > 0xFFFF:
        raise InvalidInput("a framed part is at most 65,535 bytes", field="data")
    return struct.pack(">H", len(data)) + data


def signing_bytes(context: SignatureContext, message: bytes, *, audience: str = "") -> bytes:
    """The exact bytes an Ed25519 signature covers.

    Domain, framed context, framed audience (the recipient's party id for a
    sealed message; empty for a message anyone may verify), then the message.
    """
    return (
        SIGNATURE_DOMAIN
        + frame(context.value.encode("ascii"))
        + frame(audience.encode("utf-8"))
        + message
    )


#: An Ed25519 signing key (PyNaCl's). Outside this module it is only held and handed back to
#: ``sign``; ``signing_public_key`` gives its public half.
SigningKey: TypeAlias = nacl.signing.SigningKey


def signing_public_key(signing_key: SigningKey) -> bytes:
    """The 32-byte Ed25519 public key that verifies ``signing_key``'s signatures."""
    return bytes(signing_key.verify_key)


def sign(
    signing_key: SigningKey,
    context: SignatureContext,
    message: bytes,
    *,
    audience: str = "",
) -> bytes:
    """Sign ``message`` for ``context`` (and ``audience``); returns the 64-byte signature."""
    return bytes(signing_key.sign(signing_bytes(context, message, audience=audience)).signature)


def verify(
    public_key: bytes,
    context: SignatureContext,
    message: bytes,
    signature: bytes,
    *,
    audience: str = "",
    field: str = "signature",
) -> None:
    """Raise ``InvalidSignature`` unless ``signature`` is valid for this key, context and message.

    A malformed key or signature raises the same error as a wrong one.
    """
    try:
        if len(public_key) != ED25519_PUBLIC_KEY_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
            raise ValueError("wrong length")
        nacl.signing.VerifyKey(public_key).verify(
            signing_bytes(context, message, audience=audience), signature
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as error:
        raise InvalidSignature("signature does not verify", field=field) from error


@dataclass(frozen=True, slots=True)
class SealedBox:
    """A message sealed from one party's X25519 key to another's."""

    nonce: bytes
    ciphertext: bytes


def seal(
    sender_secret: bytes,
    recipient_public: bytes,
    plaintext: bytes,
    *,
    nonce: bytes | None = None,
) -> SealedBox:
    """Encrypt ``plaintext`` so that only the recipient can read it and knows the sender.

    ``nonce`` is for test vectors only; by default a fresh random 24-byte nonce
    is used (safe for XSalsa20's 192-bit nonces).
    """
    check_x25519_public(recipient_public, field="recipient_public")
    nonce = nonce if nonce is not None else os.urandom(BOX_NONCE_BYTES)
    try:
        ciphertext = nacl.bindings.crypto_box(plaintext, nonce, recipient_public, sender_secret)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as error:
        raise InvalidInput("cannot seal to this key", field="recipient_public") from error
    return SealedBox(nonce=nonce, ciphertext=bytes(ciphertext))


def open_sealed(
    recipient_secret: bytes,
    sender_public: bytes,
    box: SealedBox,
    *,
    field: str = "ciphertext",
) -> bytes:
    """Decrypt a ``SealedBox``; raise ``DecryptionFailed`` on any failure."""
    try:
        return bytes(
            nacl.bindings.crypto_box_open(
                box.ciphertext, box.nonce, sender_public, recipient_secret
            )
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as error:
        raise DecryptionFailed("cannot open sealed message", field=field) from error


def seal_anonymous(recipient_public: bytes, plaintext: bytes) -> bytes:
    """Encrypt to a recipient with an ephemeral sender key (NaCl sealed box)."""
    check_x25519_public(recipient_public, field="recipient_public")
    try:
        return bytes(nacl.bindings.crypto_box_seal(plaintext, recipient_public))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as error:
        raise InvalidInput("cannot seal to this key", field="recipient_public") from error


def check_x25519_public(key: bytes, *, field: str) -> bytes:
    """Refuse a public key that cannot be sealed to: wrong length, or a low-order point.

    libsodium refuses a shared secret of all zeros; a probe exchange with a
    fixed scalar detects such keys up front, with the field named.
    """
    if not isinstance(key, bytes) or len(key) != X25519_KEY_BYTES:
        raise InvalidInput("X25519 public key must be 32 bytes", field=field)
    try:
        nacl.bindings.crypto_scalarmult(_PROBE_SCALAR, key)
    except (nacl.exceptions.CryptoError, ValueError) as error:
        raise InvalidInput("not a usable X25519 public key (low order)", field=field) from error
    return key


_PROBE_SCALAR = hashlib.sha256(b"samenloop/v1 x25519 key probe").digest()


def seal_signed(
    sender: PartyKeys,
    recipient: str,
    recipient_x25519: bytes,
    context: SignatureContext,
    body: bytes,
) -> SealedBox:
    """Sign ``body`` for ``recipient`` and seal the signed message to it.

    The plaintext is a ``samenloop.v1.Signed``; the signature also covers the
    recipient's party id, so a sealed message can be neither reflected back to
    its sender nor re-sealed by its recipient to a third party.
    """
    signed = common_pb2.Signed(
        body=body,
        signer=sender.party,
        context=context.value,
        signature=sender.sign(context, body, audience=recipient),
    )
    return sender.seal(recipient_x25519, signed.SerializeToString())


def open_signed(
    recipient: PartyKeys,
    sender: str,
    sender_keys: PublicKeys,
    box: SealedBox,
    *,
    expect: SignatureContext | None = None,
) -> tuple[SignatureContext, bytes]:
    """Open a message sealed with ``seal_signed``; return its context and verified body.

    Raises ``DecryptionFailed`` if it cannot be opened or parsed, and
    ``InvalidSignature`` unless it is signed by ``sender`` for this recipient
    (and, with ``expect``, for that context).
    """
    plaintext = recipient.open(sender_keys.x25519, box)
    signed = common_pb2.Signed()
    try:
        signed.ParseFromString(plaintext)
        context = SignatureContext(signed.context)
    except (DecodeError, ValueError) as error:
        raise DecryptionFailed("cannot open sealed message", field="ciphertext") from error
    if signed.signer != sender or (expect is not None and context is not expect):
        raise InvalidSignature("signature does not verify", field="signature")
    verify(sender_keys.ed25519, context, signed.body, signed.signature, audience=recipient.party)
    return context, signed.body


def open_anonymous(
    recipient_secret: bytes, ciphertext: bytes, *, field: str = "ciphertext"
) -> bytes:
    """Open a NaCl sealed box; raise ``DecryptionFailed`` on any failure."""
    try:
        recipient_public = nacl.bindings.crypto_scalarmult_base(recipient_secret)
        return bytes(
            nacl.bindings.crypto_box_seal_open(ciphertext, recipient_public, recipient_secret)
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as error:
        raise DecryptionFailed("cannot open sealed message", field=field) from error


SECRETBOX_KEY_BYTES = nacl.bindings.crypto_secretbox_KEYBYTES
SECRETBOX_NONCE_BYTES = nacl.bindings.crypto_secretbox_NONCEBYTES


def secretbox_key() -> bytes:
    """A fresh random secretbox key (32 bytes from the operating system's CSPRNG)."""
    return os.urandom(SECRETBOX_KEY_BYTES)


def secretbox_seal(
    key: bytes, plaintext: bytes, *, nonce: bytes | None = None
) -> tuple[bytes, bytes]:
    """NaCl secretbox (XSalsa20-Poly1305) under a shared key; returns (nonce, ciphertext).

    ``nonce`` is for test vectors only; by default a fresh random 24-byte nonce.
    """
    if len(key) != SECRETBOX_KEY_BYTES:
        raise InvalidInput("secretbox key must be 32 bytes", field="key")
    nonce = nonce if nonce is not None else os.urandom(SECRETBOX_NONCE_BYTES)
    return nonce, bytes(nacl.bindings.crypto_secretbox(plaintext, nonce, key))


def secretbox_open(key: bytes, nonce: bytes, ciphertext: bytes, *, field: str) -> bytes:
    """Open a secretbox; raise ``DecryptionFailed`` on any failure."""
    try:
        return bytes(nacl.bindings.crypto_secretbox_open(ciphertext, nonce, key))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as error:
        raise DecryptionFailed("cannot open sealed message", field=field) from error


#: Bytes per value of an additively shared vector: unsigned 64-bit, little-endian.
SHARE_WORD_BYTES = 8
_WORDS = np.dtype("<u8")


def additive_shares(values: Sequence[int]) -> tuple[bytes, bytes]:
    """Split ``values`` (integers, negatives allowed, read modulo 2^64) into two additive
    shares: ``s1`` uniformly random from ``os.urandom`` and ``s2 = values - s1`` modulo
    2^64, each as little-endian unsigned 64-bit words. Either share alone is uniformly
    distributed whatever the values; ``add_shares([s1, s2])`` gives them back."""
    try:
        x = np.array([v % 2**64 for v in values], dtype=_WORDS)
    except (TypeError, OverflowError) as error:
        raise InvalidInput("must be integers", field="values") from error
    s1 = np.frombuffer(os.urandom(len(x) * SHARE_WORD_BYTES), dtype=_WORDS)
    s2 = x - s1  # uint64 arithmetic wraps: modulo 2^64
    return s1.tobytes(), s2.astype(_WORDS).tobytes()


def add_shares(shares: Iterable[bytes], *, length: int, field: str = "share") -> bytes:
    """The sum modulo 2^64 of equally long shared vectors of ``length`` words
    (``InvalidInput`` naming ``field`` if one has another length)."""
    total = np.zeros(length, dtype=_WORDS)
    for share in shares:
        if len(share) != length * SHARE_WORD_BYTES:
            raise InvalidInput(
                f"a share has {length} values of {SHARE_WORD_BYTES} bytes", field=field
            )
        total += np.frombuffer(share, dtype=_WORDS)
    return total.tobytes()


def share_values(data: bytes, *, signed: bool = True, field: str = "share") -> list[int]:
    """The words of a shared vector (or of a sum) as integers: two's complement signed
    64-bit by default (sums of noisy counts may be negative), else unsigned."""
    if len(data) % SHARE_WORD_BYTES:
        raise InvalidInput(f"a whole number of {SHARE_WORD_BYTES}-byte values", field=field)
    words = np.frombuffer(data, dtype=_WORDS)
    return [int(v) for v in (words.view("<i8") if signed else words)]


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869), from pyca/cryptography."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


MAC_BYTES = 32


def mac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``message`` under ``key``: 32 bytes, from pyca/cryptography.

    Any key length is valid HMAC; Samenloop's own MAC keys are 32-byte HKDF outputs.
    """
    h = _hmac.HMAC(key, hashes.SHA256())
    h.update(message)
    return h.finalize()


def verify_mac(key: bytes, message: bytes, tag: bytes, *, field: str = "mac") -> None:
    """Raise ``InvalidSignature`` unless ``tag`` is the HMAC-SHA256 of ``message`` under
    ``key``. The comparison takes constant time (``HMAC.verify``); a tag of the wrong
    length fails exactly like a wrong tag."""
    try:
        h = _hmac.HMAC(key, hashes.SHA256())
        h.update(message)
        h.verify(tag)
    except (_BadMac, ValueError, TypeError) as error:
        raise InvalidSignature("MAC does not verify", field=field) from error


def equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in constant time (for secrets, MACs, tokens)."""
    return hmac.compare_digest(a, b)


DIGEST_BYTES = 32


def digest(data: bytes) -> bytes:
    """SHA-256 of ``data`` (32 bytes): to recognise bytes seen before without keeping them."""
    return hashlib.sha256(data).digest()


def fingerprint(public_key: bytes) -> str:
    """A short, stable, printable name for a public key (first 16 hex of SHA-256)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


# --- party keys ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """A party's public keys, as the covenant lists them."""

    ed25519: bytes
    x25519: bytes

    KIND = "samenloop.public-keys.v1"

    def to_json(self, party: str) -> bytes:
        doc = {
            "kind": self.KIND,
            "party": party,
            "ed25519": b64encode(self.ed25519),
            "x25519": b64encode(self.x25519),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, source: str = "public keys") -> tuple[str, PublicKeys]:
        """Parse a public keys file; returns (party, keys)."""
        try:
            doc: Any = json.loads(data)
            if not isinstance(doc, dict) or doc.get("kind") != cls.KIND:
                raise ValueError("not a Samenloop public keys file")
            keys = cls(ed25519=b64decode(doc["ed25519"], 32), x25519=b64decode(doc["x25519"], 32))
            nacl.signing.VerifyKey(keys.ed25519)
            check_x25519_public(keys.x25519, field=f"{source}: x25519")
            return str(doc["party"]), keys
        except (
            ValueError,
            KeyError,
            TypeError,
            InvalidInput,
            nacl.exceptions.CryptoError,
        ) as error:
            raise ConfigurationError(f"{source} is not a public keys file", field=source) from error


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class PartyKeys:
    """A party's secret keys: Ed25519 for signing, X25519 for sealing.

    Held only by the party itself; ``repr`` shows fingerprints, never secrets,
    and there is no ``==`` (compare ``public()`` instead).
    """

    party: str
    ed25519_seed: bytes
    x25519_secret: bytes
    # Derived once: a broker signs every hit notice, and deriving costs as much as signing.
    _signing_key: SigningKey = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_signing_key", nacl.signing.SigningKey(self.ed25519_seed))

    @classmethod
    def generate(cls, party: str) -> PartyKeys:
        return cls(
            party=party,
            ed25519_seed=os.urandom(32),
            x25519_secret=bytes(nacl.public.PrivateKey.generate()),
        )

    @property
    def signing_key(self) -> SigningKey:
        return self._signing_key

    def public(self) -> PublicKeys:
        return PublicKeys(
            ed25519=signing_public_key(self.signing_key),
            x25519=bytes(nacl.bindings.crypto_scalarmult_base(self.x25519_secret)),
        )

    def sign(self, context: SignatureContext, message: bytes, *, audience: str = "") -> bytes:
        return sign(self.signing_key, context, message, audience=audience)

    def seal(self, recipient_public: bytes, plaintext: bytes) -> SealedBox:
        return seal(self.x25519_secret, recipient_public, plaintext)

    def open(self, sender_public: bytes, box: SealedBox) -> bytes:
        return open_sealed(self.x25519_secret, sender_public, box)

    def __repr__(self) -> str:
        pub = self.public()
        return (
            f"PartyKeys(party={self.party!r}, ed25519={fingerprint(pub.ed25519)}, "
            f"x25519={fingerprint(pub.x25519)})"
        )

    # Serialisation: a small JSON document, written owner-only.

    KIND = "samenloop.party-keys.v1"

    def to_json(self) -> bytes:
        doc = {
            "kind": self.KIND,
            "party": self.party,
            "ed25519_seed": b64encode(self.ed25519_seed),
            "x25519_secret": b64encode(self.x25519_secret),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, source: str = "key file") -> PartyKeys:
        try:
            doc: Any = json.loads(data)
            if not isinstance(doc, dict) or doc.get("kind") != cls.KIND:
                raise ValueError("not a Samenloop party key file")
            keys = cls(
                party=str(doc["party"]),
                ed25519_seed=b64decode(doc["ed25519_seed"], 32),
                x25519_secret=b64decode(doc["x25519_secret"], 32),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(
                f"{source} is not a valid party key file", field=source
            ) from error
        return keys

    def save(self, path: Path) -> None:
        write_secret_file(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> PartyKeys:
        return cls.from_json(read_secret_file(path), source=str(path))


def b64encode(data: bytes) -> str:
    """Standard base64 text, as our JSON documents carry keys and ciphertexts."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, length: int | None = None) -> bytes:
    """Strict base64 decoding; raises ``ValueError`` on bad text or the wrong length."""
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    raw = base64.b64decode(text, validate=True)
    if length is not None and len(raw) != length:
        raise ValueError(f"expected {length} bytes")
    return raw


# --- key files ----------------------------------------------------------------


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable and writable by the owner only."""
    write_file_atomically(path, data, mode=0o600)


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old file or the new
    one whole: written to a file of ``mode`` in the same directory, fsynced, renamed over
    the target, and the directory fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_secret_file(path: Path, *, what: str = "key file", field: str | None = None) -> bytes:
    """Read a secret file; refuse it, as ssh does, if group or others may read or write it
    or another account owns it (:func:`check_owner_only`, on the file as opened)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            check_owner_only(os.fstat(handle.fileno()), path, what=what, field=field)
            return handle.read()
    except FileNotFoundError as error:
        raise ConfigurationError(
            f"{what} {path} does not exist", field=field or str(path)
        ) from error
    except IsADirectoryError as error:
        raise ConfigurationError(
            f"{what} {path} is a directory", field=field or str(path)
        ) from error
    except PermissionError as error:
        raise ConfigurationError(
            f"cannot read {what} {path}: permission denied; run as the account that owns it",
            field=field or str(path),
        ) from error


def check_owner_only(
    found: Path | os.stat_result,
    path: Path | None = None,
    *,
    what: str = "key file",
    field: str | None = None,
    others_may_read: bool = False,
) -> None:
    """Refuse a secret file or a private directory that group or others may read, write or
    enter, or that an account other than this process's owns: the one check behind every
    key file, token and data directory. ``found`` is the path, or the ``os.stat`` of a file
    already opened (``path`` then names it). The error names the path and the fix.

    With ``others_may_read`` it is the check of a file that is not secret but decides
    what the process trusts (its configuration, the covenant, the CA certificate), and of
    the directory that holds it: others may read it, but only this account or root may
    own it and nobody else may write it, as ssh checks its configuration. A directory
    with the sticky bit (``/tmp``) may be writable by others: they cannot replace a file
    in it that is not theirs."""
    if isinstance(found, os.stat_result):
        info, named = found, Path(path or "?")
    else:
        named = Path(found)
        try:
            info = named.stat()
        except FileNotFoundError as error:
            raise ConfigurationError(
                f"{what} {named} does not exist", field=field or str(named)
            ) from error
    me = os.geteuid()
    if info.st_uid != me and not (others_may_read and info.st_uid == 0):
        raise ConfigurationError(
            f"{what} {named} belongs to another account (uid {info.st_uid}); run as that "
            f"account, or give it to this one: chown {me} {named}",
            field=field or str(named),
        )
    if others_may_read:
        sticky_directory = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_directory:
            raise ConfigurationError(
                f"{what} {named} may be written by others "
                f"(mode {stat.S_IMODE(info.st_mode):o}); run chmod go-w {named}",
                field=field or str(named),
            )
        return
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        fix = "700" if stat.S_ISDIR(info.st_mode) else "600"
        raise ConfigurationError(
            f"{what} {named} is accessible by others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run chmod {fix} {named}",
            field=field or str(named),
        )
