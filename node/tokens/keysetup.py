"""Key setup: deal a covenant key epoch to its key holders.

The dealer (a covenant administrator) draws the key, splits it t-of-n, seals
each share to its holder's X25519 public key and publishes only the public
side — the group public key and the per-holder commitments — signed with the
administrator's Ed25519 key. The whole key exists only in the dealer's memory
for the duration of ``deal``; it is never written anywhere. A holder accepts
its share only from an epoch document that the administrator it trusts
signed, and only if the share matches its published commitment.

The files are the wire format's own messages (``samenloop.v1.KeyEpoch`` inside
a ``Signed``, and ``SealedShare``) in protobuf's JSON mapping. The accepted
share is a local file, written owner-only.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from samenloop.node.tokens import oprf, threshold
from samenloop.policies import crypto
from samenloop.policies.crypto import PartyKeys, PublicKeys, SignatureContext
from samenloop.policies.errors import ConfigurationError, InvalidInput, InvalidSignature
from samenloop.v1 import common_pb2, keyholder_pb2

_SHARE_DOMAIN = b"samenloop/v1 key share"
DEFAULT_LIFETIME = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class SealedShare:
    """One holder's share, sealed to its X25519 key (``samenloop.v1.SealedShare``)."""

    covenant_id: str
    key_epoch: int
    holder_index: int
    holder: str
    commitment: bytes
    sealed_share: bytes


def _share_plaintext(covenant_id: str, epoch: int, index: int, scalar: bytes) -> bytes:
    cid = covenant_id.encode("utf-8")
    return (
        _SHARE_DOMAIN
        + b"\x00"
        + struct.pack(">H", len(cid))
        + cid
        + struct.pack(">II", epoch, index)
        + scalar
    )


def deal(
    covenant_id: str,
    epoch: int,
    threshold_t: int,
    holders: Sequence[tuple[str, bytes]],
    *,
    now: datetime,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> tuple[threshold.KeyEpoch, list[SealedShare]]:
    """Generate a fresh key for ``epoch`` and seal one share per holder.

    ``holders`` lists (party id, X25519 public key) in index order 1..n; every
    party and every key must be distinct, so that no party holds two seats.
    """
    keys = [public for _, public in holders]
    for i, public in enumerate(keys):
        crypto.check_x25519_public(public, field=f"holders[{i + 1}].x25519")
    if len(set(keys)) != len(keys):
        raise InvalidInput("two holders have the same X25519 key", field="holders")
    secret = oprf.random_scalar()
    shares = threshold.split_key(secret, threshold_t, len(holders))
    key_epoch = threshold.KeyEpoch(
        covenant_id=covenant_id,
        epoch=epoch,
        threshold=threshold_t,
        group_public_key=oprf.scalar_mult_gen(secret),
        holders=tuple(
            threshold.Holder(index=s.index, party=party, commitment=s.commitment)
            for s, (party, _) in zip(shares, holders, strict=True)
        ),
        created_at=now,
        retire_after=now + lifetime,
    )
    del secret
    sealed = [
        SealedShare(
            covenant_id=covenant_id,
            key_epoch=epoch,
            holder_index=s.index,
            holder=party,
            commitment=s.commitment,
            sealed_share=crypto.seal_anonymous(
                public, _share_plaintext(covenant_id, epoch, s.index, s.scalar)
            ),
        )
        for s, (party, public) in zip(shares, holders, strict=True)
    ]
    key_epoch.check_consistency()
    return key_epoch, sealed


def open_share(
    sealed: SealedShare, key_epoch: threshold.KeyEpoch, keys: PartyKeys
) -> threshold.Share:
    """Open a sealed share and check it against the published commitment.

    Raises ``DecryptionFailed`` if it is not sealed to ``keys``, and
    ``InvalidInput`` if it does not belong to this covenant, epoch and holder
    or does not match the commitment.
    """
    holder = key_epoch.holder(sealed.holder_index)
    if (sealed.covenant_id, sealed.key_epoch) != (key_epoch.covenant_id, key_epoch.epoch):
        raise InvalidInput("share belongs to another covenant or epoch", field="share.key_epoch")
    if holder.party != keys.party or sealed.holder != keys.party:
        raise InvalidInput(
            f"share {sealed.holder_index} is for {holder.party}, not {keys.party}",
            field="share.holder",
        )
    plaintext = crypto.open_anonymous(
        keys.x25519_secret, sealed.sealed_share, field="share.sealed_share"
    )
    scalar = plaintext[-oprf.SCALAR_BYTES :]
    expected = _share_plaintext(key_epoch.covenant_id, key_epoch.epoch, holder.index, scalar)
    if not crypto.equal(plaintext, expected):
        raise InvalidInput("share framing does not match", field="share.sealed_share")
    share = threshold.Share(
        index=holder.index, scalar=oprf.deserialize_scalar(scalar, field="share", nonzero=True)
    )
    if not crypto.equal(share.commitment, holder.commitment):
        raise InvalidInput(
            "share does not match its published commitment", field="share.commitment"
        )
    return share


# --- the signed epoch document ---------------------------------------------------


def key_epoch_to_proto(key_epoch: threshold.KeyEpoch) -> keyholder_pb2.KeyEpoch:
    message = keyholder_pb2.KeyEpoch(
        covenant_id=key_epoch.covenant_id,
        epoch=key_epoch.epoch,
        threshold=key_epoch.threshold,
        group_public_key=key_epoch.group_public_key,
        holders=[
            keyholder_pb2.KeyHolder(index=h.index, party=h.party, commitment=h.commitment)
            for h in key_epoch.holders
        ],
    )
    message.created_at.FromDatetime(key_epoch.created_at)
    message.retire_after.FromDatetime(key_epoch.retire_after)
    return message


def key_epoch_from_proto(message: keyholder_pb2.KeyEpoch) -> threshold.KeyEpoch:
    """Parse at the boundary: the wire message becomes a validated, consistent ``KeyEpoch``."""
    key_epoch = threshold.KeyEpoch(
        covenant_id=message.covenant_id,
        epoch=message.epoch,
        threshold=message.threshold,
        group_public_key=message.group_public_key,
        holders=tuple(
            threshold.Holder(index=h.index, party=h.party, commitment=h.commitment)
            for h in message.holders
        ),
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
        retire_after=message.retire_after.ToDatetime(tzinfo=UTC),
    )
    key_epoch.check_consistency()
    return key_epoch


def sign_key_epoch(key_epoch: threshold.KeyEpoch, admin: PartyKeys) -> bytes:
    """The epoch document: a ``Signed`` key epoch, by the administrator, as JSON."""
    body = key_epoch_to_proto(key_epoch).SerializeToString()
    signed = common_pb2.Signed(
        body=body,
        signer=admin.party,
        context=SignatureContext.KEY_EPOCH.value,
        signature=admin.sign(SignatureContext.KEY_EPOCH, body),
    )
    return _to_json(signed)


def verify_key_epoch(
    data: bytes, admin: str, admin_keys: PublicKeys, *, source: str = "key epoch"
) -> threshold.KeyEpoch:
    """Check the administrator's signature over the bytes received, then parse them."""
    signed = _from_json(data, common_pb2.Signed(), source)
    if signed.context != SignatureContext.KEY_EPOCH.value or signed.signer != admin:
        raise InvalidSignature(
            f"{source} is not a key epoch signed by {admin}", field=f"{source}: signer"
        )
    crypto.verify(
        admin_keys.ed25519,
        SignatureContext.KEY_EPOCH,
        signed.body,
        signed.signature,
        field=f"{source}: signature",
    )
    message = keyholder_pb2.KeyEpoch()
    try:
        message.ParseFromString(signed.body)
    except DecodeError as error:
        raise InvalidInput(f"{source} has a malformed body", field=source) from error
    return key_epoch_from_proto(message)


# --- sealed share files ------------------------------------------------------------


def sealed_share_to_json(share: SealedShare) -> bytes:
    return _to_json(
        keyholder_pb2.SealedShare(
            covenant_id=share.covenant_id,
            key_epoch=share.key_epoch,
            holder_index=share.holder_index,
            holder=share.holder,
            commitment=share.commitment,
            sealed_share=share.sealed_share,
        )
    )


def sealed_share_from_json(data: bytes, *, source: str = "share") -> SealedShare:
    message = _from_json(data, keyholder_pb2.SealedShare(), source)
    return SealedShare(
        covenant_id=message.covenant_id,
        key_epoch=message.key_epoch,
        holder_index=message.holder_index,
        holder=message.holder,
        commitment=message.commitment,
        sealed_share=message.sealed_share,
    )


def _to_json(message: Message) -> bytes:
    return json_format.MessageToJson(message, preserving_proto_field_name=True).encode() + b"\n"


_M = TypeVar("_M", bound=Message)


def _from_json(data: bytes, message: _M, source: str) -> _M:
    try:
        json_format.Parse(data, message)
    except (json_format.ParseError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"{source} is not a valid document: {error}", field=source
        ) from error
    return message


# --- the accepted share, stored locally ------------------------------------------------


def save_share(path: Path, key_epoch: threshold.KeyEpoch, share: threshold.Share) -> None:
    """Store an accepted share, owner-only."""
    doc = {
        "kind": "samenloop.key-share.v1",
        "covenant_id": key_epoch.covenant_id,
        "epoch": key_epoch.epoch,
        "holder_index": share.index,
        "share": crypto.b64encode(share.scalar),
    }
    crypto.write_secret_file(path, json.dumps(doc, indent=2).encode() + b"\n")


def load_share(path: Path, key_epoch: threshold.KeyEpoch) -> threshold.Share:
    """Load an accepted share and check it still matches the epoch's commitment."""
    source = str(path)
    try:
        doc = json.loads(crypto.read_secret_file(path))
        if not isinstance(doc, dict) or doc.get("kind") != "samenloop.key-share.v1":
            raise ValueError("not a key share file")
        if (str(doc["covenant_id"]), int(doc["epoch"])) != (key_epoch.covenant_id, key_epoch.epoch):
            raise InvalidInput("share belongs to another covenant or epoch", field=source)
        scalar = crypto.b64decode(doc["share"], oprf.SCALAR_BYTES)
        share = threshold.Share(
            index=int(doc["holder_index"]),
            scalar=oprf.deserialize_scalar(scalar, field=source, nonzero=True),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(f"{path} is not a valid key share file", field=source) from error
    if not crypto.equal(share.commitment, key_epoch.holder(share.index).commitment):
        raise InvalidInput("stored share does not match its commitment", field=source)
    return share


def share_path(base: Path, epoch: int) -> Path:
    """Where a holder keeps its share of ``epoch`` beside the configured ``key_share`` file:
    ``key-share.json`` -> ``key-share.epoch-2.json``. ``keyholder accept`` of a staged epoch
    writes there; the node loads the share of each epoch it serves from there, or from
    ``base`` itself when that holds the epoch."""
    return base.with_name(f"{base.stem}.epoch-{epoch}{base.suffix}")


def share_epoch(path: Path) -> int | None:
    """The epoch a stored share file names, or None if it cannot be read as one."""
    try:
        doc = json.loads(crypto.read_secret_file(path))
        return int(doc["epoch"]) if isinstance(doc, dict) else None
    except (OSError, KeyError, TypeError, ValueError, ConfigurationError):
        return None


def forget_share(path: Path) -> None:
    """Delete a retired share: overwritten with zeros and flushed before it is unlinked, so
    the file system's free blocks keep no copy of it (on a plain overwrite-in-place file
    system; copies in backups and snapshots are the operator's to remove). Gone already
    is fine."""
    try:
        size = path.stat().st_size
        with path.open("r+b") as file:
            file.write(b"\0" * size)
            file.flush()
            os.fsync(file.fileno())
        path.unlink()
    except FileNotFoundError:
        return


def load_epoch_share(base: Path, epoch: threshold.KeyEpoch) -> threshold.Share | None:
    """The accepted share of ``epoch``: at ``base`` (the configured ``key_share``) or beside
    it (:func:`share_path`); None if neither holds that epoch (not accepted yet).
    ``ConfigurationError`` naming the file and the ``chmod`` if the file beside is there
    but open to other accounts (or theirs), as the configured share is refused."""
    beside = share_path(base, epoch.epoch)
    for path in (base, beside):
        if share_epoch(path) == epoch.epoch:
            return load_share(path, epoch)
    if beside.exists():
        crypto.read_secret_file(beside, what="key share")  # refuses one others may read
    return None


def retire_share(base: Path, retired: int, current: int) -> None:
    """Delete the share of a ``retired`` epoch, and put the ``current`` epoch's share at
    ``base`` if it was kept beside it. The old share is overwritten before the new one
    takes its name; a crash in between leaves ``base`` unreadable, which
    :func:`load_epoch_share` passes over for the file beside it."""
    if share_epoch(base) == retired:
        forget_share(base)
    forget_share(share_path(base, retired))
    beside = share_path(base, current)
    if beside.exists() and share_epoch(base) != current:
        os.replace(beside, base)
