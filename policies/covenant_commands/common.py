"""What the covenant commands share: argument parsing that names the field, reading
and writing drafts and signed covenants, the signers whose signatures verify.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from samenloop.policies import crypto
from samenloop.policies.covenant import Covenant, covenant_from_toml, covenant_to_toml
from samenloop.policies.crypto import PublicKeys, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    CovenantRejected,
    InvalidInput,
    InvalidSignature,
)
from samenloop.policies.policy import Role, Signing
from samenloop.policies.trust import SignedCovenant

_T = TypeVar("_T")


def iso_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_time(text: str, *, field: str) -> datetime:
    try:
        return iso_time(text)
    except argparse.ArgumentTypeError as error:
        raise InvalidInput(f"{error}; e.g. 2027-01-01T00:00:00Z", field=field) from error


def read_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {path}: {error.strerror}", field=str(path)
        ) from error


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a crash leaves the old or the new file)."""
    crypto.write_file_atomically(path, data)


def public_keys_file(path: Path, *, field: str, owner: str | None = None) -> PublicKeys:
    """A public keys file's keys; if ``owner`` is given, the file must be that party's."""
    party, keys = PublicKeys.from_json(read_file(path), source=str(path))
    if owner is not None and party != owner:
        raise InvalidInput(f"{path} holds the public keys of {party!r}, not {owner!r}", field=field)
    return keys


def parse_role(text: str, *, field: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise InvalidInput(
            f"unknown role {text!r}; must be one of: {', '.join(Role)}", field=field
        ) from None


def split_spec(value: str, parts: int, *, field: str, form: str) -> list[str]:
    """Split ``ID:...:FILE``: the first and last parts at the outer colons (names may hold one)."""
    head, sep, rest = value.partition(":")
    middle, sep2, tail = rest.rpartition(":")
    pieces = [head, *(middle.rsplit(":", parts - 3) if parts > 3 else [middle]), tail]
    if not sep or not sep2 or len(pieces) != parts or not all(p.strip() for p in pieces):
        raise InvalidInput(f"expected {form}, got {value!r}", field=field)
    return pieces


def build_checked(build: Callable[[], _T], *, field: str) -> _T:
    """Construct a model value, naming ``field`` in front of the field it names."""
    try:
        return build()
    except InvalidInput as error:
        inner = f"{field}.{error.field}" if error.field else field
        raise InvalidInput(error.message, field=inner, reason=error.reason) from error


def is_json(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{"


def load_any(path: Path) -> tuple[Covenant, SignedCovenant | None]:
    """A draft (TOML) or a signed covenant (JSON, parsed without checking signatures)."""
    data = read_file(path)
    if is_json(data):
        signed = SignedCovenant.from_json(data, source=str(path))
        return signed.unverified(), signed
    return covenant_from_toml(data, source=str(path)), None


def load_draft(path: Path) -> Covenant:
    data = read_file(path)
    if is_json(data):
        raise InvalidInput(
            f"{path} is a signed covenant: edit the draft TOML (or write it with "
            "'covenant show --toml') and sign it again",
            field=str(path),
        )
    return covenant_from_toml(data, source=str(path))


def save_draft(path: Path, covenant: Covenant) -> None:
    write_file(path, covenant_to_toml(covenant))


def load_signed(path: Path) -> SignedCovenant:
    return SignedCovenant.from_json(read_file(path), source=str(path))


def rejected(error: CovenantRejected, path: Path) -> CovenantRejected:
    """The rejection with its reason in the message, about the file ``path``."""
    field = str(path) if error.field in (None, "", "covenant") else f"{path}: {error.field}"
    return CovenantRejected(
        f"REJECTED ({error.reason}): {error.message}", field=field, reason=error.reason
    )


def valid_signers(signed: SignedCovenant, signing: Signing) -> list[str]:
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
