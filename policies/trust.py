"""The signed covenant and the trust state that accepts new versions, as TUF does for metadata.

A signed covenant is the covenant's canonical bytes (``covenant_to_toml``,
exactly) and Ed25519 signatures over them by the covenant's signers, each
under the ``covenant`` signature context. Verifiers check the signatures over
the bytes they received and only then parse them; the parsed covenant must
serialise back to the very same bytes, so there is one byte form per covenant.

:class:`TrustState` holds the covenant a party trusts and decides on a new
version (``update``), doing no I/O and taking ``now`` from the caller. A new
version is accepted only if

* it is signed by at least the threshold of the signers of the version held
  (so the old signers authorise the change) and of its own signers (so the new
  signer set is real), and by nobody the covenant does not list;
* it is for the same covenant id, with a higher version number;
* its attribute key version is not lower than the held one, and higher if
  it removes a party or gives a party a new X25519 key (the removed party,
  or whoever holds the old key, holds every older version); under an
  unchanged version every continuing party keeps its box byte for byte;
* its validity period covers ``now``.

Every refusal is a ``CovenantRejected`` whose ``reason`` names the rule:
``covenant.malformed``, ``covenant.not_canonical``, ``covenant.wrong_id``,
``covenant.rollback``, ``covenant.unknown_signer``, ``covenant.bad_signature``
(tampered bytes or a wrong key), ``covenant.under_signed``,
``covenant.attribute_key_kept``, ``covenant.attribute_key_rollback``,
``covenant.attribute_key_changed``, ``covenant.not_yet_valid``,
``covenant.expired``; the attribute key refusals name the covenant field at
fault (``attribute_key_version``, ``parties[i].sealed_attribute_key``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from samenloop.policies import crypto
from samenloop.policies.covenant import Covenant, covenant_from_toml, covenant_to_toml
from samenloop.policies.crypto import SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    CovenantRejected,
    InvalidInput,
    InvalidSignature,
    MessageTooLarge,
)
from samenloop.policies.policy import Signing
from samenloop.v1 import common_pb2

__all__ = [
    "CovenantSignature",
    "HeldCovenant",
    "SignedCovenant",
    "TrustState",
    "Update",
    "check_attribute_key",
    "check_validity",
    "load_signed_covenant",
    "sign_covenant",
    "verify_self_signed",
]

SIGNED_KIND = "samenloop.signed-covenant.v1"
MAX_COVENANT_BYTES = 1 << 20
MAX_SIGNATURES = 64


@dataclass(frozen=True, slots=True)
class CovenantSignature:
    """One signer's Ed25519 signature over a covenant's canonical bytes."""

    signer: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedCovenant:
    """The envelope: canonical covenant bytes and the signatures over them (TUF's ``Signed``)."""

    body: bytes
    signatures: tuple[CovenantSignature, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.body, bytes) or not self.body:
            raise InvalidInput("must be the covenant's bytes", field="body")
        if len(self.body) > MAX_COVENANT_BYTES:
            raise MessageTooLarge(f"at most {MAX_COVENANT_BYTES} bytes", field="body")
        if len(self.signatures) > MAX_SIGNATURES:
            raise MessageTooLarge(f"at most {MAX_SIGNATURES} signatures", field="signatures")

    @classmethod
    def of(cls, covenant: Covenant) -> SignedCovenant:
        """An unsigned envelope of ``covenant``'s canonical bytes."""
        return cls(body=covenant_to_toml(covenant))

    def with_signature(self, signature: CovenantSignature) -> SignedCovenant:
        """This envelope with ``signature`` added, replacing an earlier one by the same signer."""
        kept = tuple(s for s in self.signatures if s.signer != signature.signer)
        return replace(self, signatures=(*kept, signature))

    def unverified(self) -> Covenant:
        """Parse the body without checking signatures: for showing and diffing drafts only."""
        return _parse(self.body)

    # Wire and file forms.

    def to_proto(self) -> common_pb2.SignedCovenant:
        return common_pb2.SignedCovenant(
            body=self.body,
            signatures=[
                common_pb2.CovenantSignature(signer=s.signer, signature=s.signature)
                for s in self.signatures
            ],
        )

    @classmethod
    def from_proto(cls, message: common_pb2.SignedCovenant) -> SignedCovenant:
        return cls(
            body=bytes(message.body),
            signatures=tuple(
                CovenantSignature(signer=s.signer, signature=bytes(s.signature))
                for s in message.signatures
            ),
        )

    def to_json(self) -> bytes:
        """The file form: JSON with the canonical TOML as text, so that people can read it."""
        doc = {
            "kind": SIGNED_KIND,
            "covenant": self.body.decode("utf-8"),
            "signatures": [
                {"signer": s.signer, "signature": crypto.b64encode(s.signature)}
                for s in self.signatures
            ],
        }
        return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> SignedCovenant:
        """Parse the file form; ``InvalidInput`` naming ``source`` if it is not one."""
        try:
            doc: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidInput(f"{source} is not JSON", field=source) from error
        if not isinstance(doc, dict) or doc.get("kind") != SIGNED_KIND:
            raise InvalidInput(f"{source} is not a signed covenant ({SIGNED_KIND})", field=source)
        body = doc.get("covenant")
        signatures = doc.get("signatures")
        if not isinstance(body, str):
            raise InvalidInput("must be the covenant's TOML text", field=f"{source}: covenant")
        if not isinstance(signatures, list):
            raise InvalidInput("must be a list", field=f"{source}: signatures")
        parsed = []
        for i, item in enumerate(signatures):
            at = f"{source}: signatures[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("signer"), str):
                raise InvalidInput("must have a signer and a signature", field=at)
            try:
                signature = crypto.b64decode(item.get("signature"), 64)
            except ValueError as error:
                raise InvalidInput("must be standard base64 of 64 bytes", field=at) from error
            parsed.append(CovenantSignature(signer=item["signer"], signature=signature))
        return cls(body=body.encode("utf-8"), signatures=tuple(parsed))


def load_signed_covenant(path: Path) -> SignedCovenant:
    """Read a signed covenant file; ``ConfigurationError`` if it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read signed covenant {path}: {error.strerror}", field=str(path)
        ) from error
    return SignedCovenant.from_json(data, source=str(path))


def sign_covenant(
    signed: SignedCovenant, signer: str, signing_key: crypto.SigningKey
) -> SignedCovenant:
    """Add ``signer``'s signature over the canonical bytes (refuses a non-canonical body)."""
    covenant = _parse(signed.body)
    if covenant.signing.signer(signer) is None:
        raise InvalidInput(
            f"{signer!r} is not a signer of covenant {covenant.id} version {covenant.version}",
            field="signer",
        )
    listed = covenant.signing.signer(signer)
    assert listed is not None
    if crypto.signing_public_key(signing_key) != listed.ed25519:
        raise InvalidInput(
            f"this key is not the key the covenant lists for signer {signer!r}", field="key"
        )
    signature = crypto.sign(signing_key, SignatureContext.COVENANT, signed.body)
    return signed.with_signature(CovenantSignature(signer=signer, signature=signature))


# --- verification ----------------------------------------------------------------------


def _reject(reason: str, message: str, *, field: str = "covenant") -> CovenantRejected:
    return CovenantRejected(message, field=field, reason=reason)


def _parse(body: bytes) -> Covenant:
    try:
        covenant = covenant_from_toml(body, source="covenant")
    except InvalidInput as error:
        raise _reject(
            "covenant.malformed", f"not a valid covenant: {error.field}: {error.message}"
        ) from error
    if covenant_to_toml(covenant) != body:
        raise _reject(
            "covenant.not_canonical",
            "the covenant's bytes are not in canonical form (sign what `covenant sign` writes)",
        )
    return covenant


def _count_valid(signed: SignedCovenant, signing: Signing, *, whose: str) -> int:
    """How many distinct listed signers signed ``signed.body``; a bad signature by a listed
    signer rejects the whole covenant (tampered bytes or a wrong key)."""
    seen: set[str] = set()
    for signature in signed.signatures:
        listed = signing.signer(signature.signer)
        if listed is None:
            continue
        if signature.signer in seen:
            raise _reject("covenant.malformed", f"two signatures by {signature.signer!r}")
        seen.add(signature.signer)
        try:
            crypto.verify(
                listed.ed25519, SignatureContext.COVENANT, signed.body, signature.signature
            )
        except InvalidSignature as error:
            raise _reject(
                "covenant.bad_signature",
                f"the signature of {signature.signer!r} ({whose} signer) does not verify: "
                "the covenant was altered or signed with another key",
            ) from error
    return len(seen)


def _check_signatures(signed: SignedCovenant, covenant: Covenant, held: Covenant | None) -> None:
    known = {s.id for s in covenant.signing.signers}
    if held is not None:
        known |= {s.id for s in held.signing.signers}
    for signature in signed.signatures:
        if signature.signer not in known:
            raise _reject(
                "covenant.unknown_signer",
                f"signed by {signature.signer!r}, who is not a signer of this covenant",
            )
    checks = [(covenant.signing, f"version {covenant.version}")]
    if held is not None:
        checks.insert(0, (held.signing, f"held version {held.version}"))
    for signing, whose in checks:
        valid = _count_valid(signed, signing, whose=whose)
        if valid < signing.threshold:
            raise _reject(
                "covenant.under_signed",
                f"{valid} valid signature(s) of the {whose} signers; "
                f"the threshold is {signing.threshold}",
            )


def check_attribute_key(held: Covenant, covenant: Covenant) -> None:
    """Refuse a successor that leaves a removed party (or a replaced key) able to read on.

    A party removed, or a party's X25519 key replaced, needs a higher
    ``attribute_key_version``: whoever held the old key holds every version
    dealt so far. The version never goes down, and under the same version a
    continuing party's box stays the same bytes (one key per version).
    """
    version, before = covenant.attribute_key_version, held.attribute_key_version
    if version < before:
        raise _reject(
            "covenant.attribute_key_rollback",
            f"attribute key version {version} is lower than the held version's {before}",
            field="attribute_key_version",
        )
    if version > before:
        return
    removed = sorted(held.party_ids - covenant.party_ids)
    if removed:
        raise _reject(
            "covenant.attribute_key_kept",
            f"version {covenant.version} removes {', '.join(removed)} but keeps attribute key "
            f"version {version}, which they hold: deal a new one ('samenloop covenant "
            "remove-party' does; or 'covenant rotate-attribute-key')",
            field="attribute_key_version",
        )
    for i, party in enumerate(covenant.parties):
        if not held.is_party(party.id):
            continue
        was = held.party(party.id)
        if was.keys.x25519 != party.keys.x25519:
            raise _reject(
                "covenant.attribute_key_kept",
                f"{party.id} has a new x25519 key but attribute key version {version} stays, "
                "which its old key opens: deal a new one ('covenant rotate-attribute-key')",
                field="attribute_key_version",
            )
        if was.sealed_attribute_key != party.sealed_attribute_key:
            raise _reject(
                "covenant.attribute_key_changed",
                f"another box for {party.id} under the same attribute key version {version}: "
                "a new key needs a new version ('covenant rotate-attribute-key')",
                field=f"parties[{i}].sealed_attribute_key",
            )


def check_key_epochs(held: Covenant, covenant: Covenant) -> None:
    """Refuse a successor that moves the OPRF key without the stage-then-switch rotation.

    While an epoch is staged the nodes re-tokenise under it, so the staged
    epoch cannot be replaced (withdraw it first, by a version without
    ``next_key_epoch``), and a version that changes the current epoch (its
    number or group key) must make the staged one current (``covenant
    switch-key-epoch``): a switch to an epoch that was never staged would
    leave every token unmatched.
    """
    staged = held.next_key_epoch
    current = covenant.key_epoch
    if (current.epoch, current.group_public_key) != (
        held.key_epoch.epoch,
        held.key_epoch.group_public_key,
    ):
        if staged is None or (current.epoch, current.group_public_key) != (
            staged.epoch,
            staged.group_public_key,
        ):
            raise _reject(
                "covenant.key_epoch_unstaged",
                f"version {covenant.version} changes key epoch {held.key_epoch.epoch} to "
                f"{covenant.key_epoch.epoch}, which the held version {held.version} has not "
                "staged: stage it first ('samenloop covenant stage-key-epoch')",
                field="key_epoch",
            )
        return
    following = covenant.next_key_epoch
    if (
        staged is not None
        and following is not None
        and following.group_public_key != staged.group_public_key
    ):
        raise _reject(
            "covenant.key_epoch_restaged",
            f"version {covenant.version} replaces staged key epoch {staged.epoch}: withdraw "
            "it first, by a version without next_key_epoch",
            field="next_key_epoch",
        )


def check_validity(covenant: Covenant, now: datetime) -> None:
    """Raise ``CovenantRejected`` unless ``now`` lies in the covenant's validity period."""
    if now < covenant.valid_from:
        raise _reject(
            "covenant.not_yet_valid",
            f"version {covenant.version} is valid from {covenant.valid_from.isoformat()}",
        )
    if now >= covenant.valid_until:
        raise _reject(
            "covenant.expired",
            f"version {covenant.version} expired at {covenant.valid_until.isoformat()}",
        )


def verify_self_signed(signed: SignedCovenant, *, now: datetime | None = None) -> Covenant:
    """Check a covenant against its own signers (and, with ``now``, its validity): the first
    version a party trusts, which it received out of band like TUF's root."""
    covenant = _parse(signed.body)
    _check_signatures(signed, covenant, None)
    if now is not None:
        check_validity(covenant, now)
    return covenant


@dataclass(frozen=True, slots=True)
class Update:
    """What ``TrustState.update`` did: the covenant now held and whether it changed."""

    covenant: Covenant
    changed: bool
    previous: Covenant


class TrustState:
    """The covenant a party trusts, and the rules for replacing it. No I/O."""

    def __init__(self, root: SignedCovenant) -> None:
        self._covenant = verify_self_signed(root)
        self._signed = root

    @property
    def covenant(self) -> Covenant:
        return self._covenant

    @property
    def signed(self) -> SignedCovenant:
        return self._signed

    def check_in_force(self, now: datetime) -> Covenant:
        """The held covenant, if ``now`` lies in its validity period; else ``CovenantRejected``."""
        check_validity(self._covenant, now)
        return self._covenant

    def verify(
        self, signed: SignedCovenant, *, now: datetime, check_time: bool = True
    ) -> Covenant | None:
        """Check ``signed`` as a successor of the held version without accepting it.

        Returns the new covenant, or ``None`` when it is the version already
        held, byte for byte (publishing twice is not an error).
        """
        held = self._covenant
        if signed.body == self._signed.body:
            return None
        # Verify with the keys we already trust before parsing what we received: the
        # signers of the held version must authorise any successor.
        whose = f"held version {held.version}"
        valid = _count_valid(signed, held.signing, whose=whose)
        if valid < held.signing.threshold:
            raise _reject(
                "covenant.under_signed",
                f"{valid} valid signature(s) of the {whose} signers; "
                f"the threshold is {held.signing.threshold}",
            )
        covenant = _parse(signed.body)
        if covenant.id != held.id:
            raise _reject("covenant.wrong_id", f"this is covenant {covenant.id!r}, not {held.id!r}")
        if covenant.version <= held.version:
            raise _reject(
                "covenant.rollback",
                f"version {covenant.version} is not newer than the held version {held.version}",
            )
        _check_signatures(signed, covenant, held)
        check_attribute_key(held, covenant)
        check_key_epochs(held, covenant)
        if check_time:
            check_validity(covenant, now)
        return covenant

    def update(self, signed: SignedCovenant, *, now: datetime, check_time: bool = True) -> Update:
        """Accept ``signed`` if it is a valid successor; else ``CovenantRejected`` (reason)."""
        previous = self._covenant
        covenant = self.verify(signed, now=now, check_time=check_time)
        if covenant is None:
            return Update(covenant=previous, changed=False, previous=previous)
        self._covenant = covenant
        self._signed = signed
        return Update(covenant=covenant, changed=True, previous=previous)


class HeldCovenant:
    """The covenant a daemon holds, shared by its threads: call it for the current version.

    Wraps a :class:`TrustState` behind a lock, so that request handlers read
    one consistent version while an update is decided.
    """

    def __init__(self, state: TrustState) -> None:
        self._state = state
        self._lock = threading.Lock()

    def __call__(self) -> Covenant:
        with self._lock:
            return self._state.covenant

    @property
    def signed(self) -> SignedCovenant:
        with self._lock:
            return self._state.signed

    def verify(self, signed: SignedCovenant, *, now: datetime) -> Covenant | None:
        with self._lock:
            return self._state.verify(signed, now=now)

    def update(self, signed: SignedCovenant, *, now: datetime) -> Update:
        with self._lock:
            return self._state.update(signed, now=now)

    def replay(self, signed: SignedCovenant) -> Update:
        """Re-apply a version accepted earlier (from the daemon's store, at start): signatures
        and version order are checked again, validity is not — it was when it was accepted."""
        with self._lock:
            return self._state.update(signed, now=self._state.covenant.valid_from, check_time=False)
