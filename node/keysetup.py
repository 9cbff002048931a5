"""Key setup: deal a covenant key epoch to its key holders.

The dealer draws the key, splits it t-of-n, seals each share to its holder's
X25519 public key and publishes only the public side (group public key and
per-holder commitments). The whole key exists only in the dealer's memory
for the duration of ``deal``; it is never written anywhere. A holder opens
its share and checks it against its published commitment before using it.

The files are small JSON documents; the share file is ciphertext and may be
sent over any channel, the accepted share is written owner-only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samenloop.node import oprf, threshold
from samenloop.policies import crypto
from samenloop.policies.errors import ConfigurationError, InvalidInput

_SHARE_DOMAIN = b"samenloop/v1 key share"


@dataclass(frozen=True, slots=True)
class SealedShare:
    """One holder's share, sealed to its X25519 key, with what it must match."""

    covenant_id: str
    epoch: int
    holder_index: int
    party: str
    commitment: bytes
    ciphertext: bytes


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
    holders: list[tuple[str, bytes]],
) -> tuple[threshold.KeyEpoch, list[SealedShare]]:
    """Generate a fresh key for ``epoch`` and seal one share per holder.

    ``holders`` lists (party id, X25519 public key) in index order 1..n.
    """
    if len({party for party, _ in holders}) != len(holders):
        raise InvalidInput("a party can hold only one share", field="holders")
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
    )
    del secret
    sealed = [
        SealedShare(
            covenant_id=covenant_id,
            epoch=epoch,
            holder_index=s.index,
            party=party,
            commitment=s.commitment,
            ciphertext=crypto.seal_anonymous(
                public, _share_plaintext(covenant_id, epoch, s.index, s.scalar)
            ),
        )
        for s, (party, public) in zip(shares, holders, strict=True)
    ]
    key_epoch.check_consistency()
    return key_epoch, sealed


def open_share(
    sealed: SealedShare, key_epoch: threshold.KeyEpoch, keys: crypto.PartyKeys
) -> threshold.Share:
    """Open a sealed share and check it against the published commitment.

    Raises ``DecryptionFailed`` if it is not sealed to ``keys``, and
    ``InvalidInput`` if it does not belong to this covenant, epoch and holder
    or does not match the commitment.
    """
    holder = key_epoch.holder(sealed.holder_index)
    if (sealed.covenant_id, sealed.epoch) != (key_epoch.covenant_id, key_epoch.epoch):
        raise InvalidInput("share belongs to another covenant or epoch", field="share.epoch")
    if holder.party != keys.party or sealed.party != keys.party:
        raise InvalidInput(
            f"share {sealed.holder_index} is for {holder.party}, not {keys.party}",
            field="share.party",
        )
    plaintext = crypto.open_anonymous(
        keys.x25519_secret, sealed.ciphertext, field="share.ciphertext"
    )
    scalar = plaintext[-oprf.SCALAR_BYTES :]
    expected = _share_plaintext(key_epoch.covenant_id, key_epoch.epoch, holder.index, scalar)
    if not crypto.equal(plaintext, expected):
        raise InvalidInput("share metadata does not match", field="share.ciphertext")
    share = threshold.Share(
        index=holder.index, scalar=oprf.deserialize_scalar(scalar, field="share")
    )
    if not crypto.equal(share.commitment, holder.commitment):
        raise InvalidInput(
            "share does not match its published commitment", field="share.commitment"
        )
    return share


# --- JSON documents -------------------------------------------------------------


_b64 = crypto.b64encode


def _unb64(value: Any, field: str) -> bytes:
    try:
        return crypto.b64decode(value)
    except ValueError as error:
        raise InvalidInput("not valid base64", field=field) from error


def key_epoch_to_json(key_epoch: threshold.KeyEpoch) -> bytes:
    doc = {
        "kind": "samenloop.key-epoch.v1",
        "covenant_id": key_epoch.covenant_id,
        "epoch": key_epoch.epoch,
        "threshold": key_epoch.threshold,
        "group_public_key": _b64(key_epoch.group_public_key),
        "holders": [
            {"index": h.index, "party": h.party, "commitment": _b64(h.commitment)}
            for h in key_epoch.holders
        ],
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def key_epoch_from_json(data: bytes, *, source: str = "key epoch") -> threshold.KeyEpoch:
    doc = _load(data, "samenloop.key-epoch.v1", source)
    try:
        key_epoch = threshold.KeyEpoch(
            covenant_id=str(doc["covenant_id"]),
            epoch=int(doc["epoch"]),
            threshold=int(doc["threshold"]),
            group_public_key=_unb64(doc["group_public_key"], "group_public_key"),
            holders=tuple(
                threshold.Holder(
                    index=int(h["index"]),
                    party=str(h["party"]),
                    commitment=_unb64(h["commitment"], f"holders[{h['index']}].commitment"),
                )
                for h in doc["holders"]
            ),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(
            f"{source} is missing or has malformed fields", field=source
        ) from error
    key_epoch.check_consistency()
    return key_epoch


def sealed_share_to_json(share: SealedShare) -> bytes:
    doc = {
        "kind": "samenloop.sealed-share.v1",
        "covenant_id": share.covenant_id,
        "epoch": share.epoch,
        "holder_index": share.holder_index,
        "party": share.party,
        "commitment": _b64(share.commitment),
        "ciphertext": _b64(share.ciphertext),
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def sealed_share_from_json(data: bytes, *, source: str = "share") -> SealedShare:
    doc = _load(data, "samenloop.sealed-share.v1", source)
    try:
        return SealedShare(
            covenant_id=str(doc["covenant_id"]),
            epoch=int(doc["epoch"]),
            holder_index=int(doc["holder_index"]),
            party=str(doc["party"]),
            commitment=_unb64(doc["commitment"], "commitment"),
            ciphertext=_unb64(doc["ciphertext"], "ciphertext"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(
            f"{source} is missing or has malformed fields", field=source
        ) from error


def save_share(path: Path, key_epoch: threshold.KeyEpoch, share: threshold.Share) -> None:
    """Store an accepted share, owner-only."""
    doc = {
        "kind": "samenloop.key-share.v1",
        "covenant_id": key_epoch.covenant_id,
        "epoch": key_epoch.epoch,
        "holder_index": share.index,
        "share": _b64(share.scalar),
    }
    crypto.write_secret_file(path, json.dumps(doc, indent=2).encode() + b"\n")


def load_share(path: Path, key_epoch: threshold.KeyEpoch) -> threshold.Share:
    """Load an accepted share and check it still matches the epoch's commitment."""
    doc = _load(crypto.read_secret_file(path), "samenloop.key-share.v1", str(path))
    try:
        if (str(doc["covenant_id"]), int(doc["epoch"])) != (key_epoch.covenant_id, key_epoch.epoch):
            raise InvalidInput("share belongs to another covenant or epoch", field=str(path))
        share = threshold.Share(
            index=int(doc["holder_index"]),
            scalar=oprf.deserialize_scalar(_unb64(doc["share"], "share"), field="share"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(
            f"{path} is not a valid key share file", field=str(path)
        ) from error
    if not crypto.equal(share.commitment, key_epoch.holder(share.index).commitment):
        raise InvalidInput("stored share does not match its commitment", field=str(path))
    return share


def _load(data: bytes, kind: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as error:
        raise ConfigurationError(f"{source} is not JSON", field=source) from error
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise ConfigurationError(f"{source} is not a {kind} document", field=source)
    return doc
