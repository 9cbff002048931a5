"""Sealed envelopes: how a node's messages to another node travel through the broker.

Disclosures, picture requests and contributions, and case messages are each a
protobuf message signed by the sender for one recipient and sealed to that
recipient's X25519 key (``crypto.seal_signed``); the broker relays the
``Sealed`` and reads nothing in it. Sans-IO.
"""

from __future__ import annotations

from dataclasses import dataclass

from samenloop.policies import crypto
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.v1 import common_pb2

__all__ = ["Envelope", "seal"]


@dataclass(frozen=True, slots=True, repr=False)
class Envelope:
    """A sealed message for the broker to relay: its idempotency id, recipient and bytes."""

    message_id: bytes
    recipient: str
    sealed: common_pb2.Sealed

    def __repr__(self) -> str:
        return f"Envelope(recipient={self.recipient!r}, bytes={self.sealed.ByteSize()})"


def seal(
    keys: PartyKeys,
    covenant: Covenant,
    recipient: str,
    context: SignatureContext,
    body: bytes,
    message_id: bytes,
) -> Envelope:
    """``body`` signed by ``keys`` for ``recipient`` under ``context`` and sealed to it, as an
    envelope with ``message_id`` (the broker's idempotency key)."""
    box = crypto.seal_signed(keys, recipient, covenant.public_keys(recipient).x25519, context, body)
    sealed = common_pb2.Sealed(
        sender=keys.party,
        recipient=recipient,
        covenant_version=covenant.version,
        nonce=box.nonce,
        ciphertext=box.ciphertext,
    )
    return Envelope(message_id=message_id, recipient=recipient, sealed=sealed)
