"""Tokens: what a node submits to the broker instead of an identifier.

token = HKDF-SHA256(ikm = OPRF output, salt = "samenloop/v1 token",
                    info = covenant id || key epoch || identifier type), 32 bytes.

hit proof key = HKDF-SHA256(ikm = OPRF output, salt = "samenloop/v1 hit proof",
                            info = the token's info), 32 bytes.

The hit proof key is a second key from the same OPRF output under its own
label: every party that holds the identifier (and so shares the token) can
compute it, nobody else can, and it never leaves the node, so the broker, which
knows the tokens, cannot. A disclosure requester MACs its request with it and
the owner checks the MAC with its own (``node/disclosure/protocol.py``): a hit that the
owner can check without trusting the broker.

The OPRF input itself is framed with the identifier type, so one string that
is valid under two types (a 9-digit BSN and a 9-digit RSIN) gives unrelated
tokens; the HKDF info binds the covenant and the key epoch, so tokens from
different covenants or epochs never match by accident.

Tokenising is split in two sans-IO steps around the key holders: ``start``
normalises nothing (identifiers arrive parsed) but blinds, ``finish`` unblinds,
finalises and derives (:func:`finish` the tokens, :func:`finish_with_proof_keys`
the tokens and their hit proof keys). The holders' round trip happens in
between, elsewhere.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from samenloop.node.tokens import oprf, threshold
from samenloop.policies import crypto
from samenloop.policies.crypto import hkdf_sha256
from samenloop.policies.errors import InvalidInput

TOKEN_BYTES = 32
HIT_PROOF_KEY_BYTES = 32
_INPUT_DOMAIN = b"samenloop/v1 identifier"
_TOKEN_SALT = b"samenloop/v1 token"
_HIT_PROOF_SALT = b"samenloop/v1 hit proof"


class Tokenisable(Protocol):
    """A parsed identifier: its type name and canonical form."""

    @property
    def type(self) -> str: ...

    @property
    def canonical(self) -> str: ...


@dataclass(frozen=True, slots=True)
class TokenDomain:
    """What a token is bound to besides the identifier: the covenant and the key epoch."""

    covenant_id: str
    key_epoch: int

    def __post_init__(self) -> None:
        if not 0 < len(self.covenant_id.encode("utf-8")) <= threshold.MAX_ID_BYTES:
            raise InvalidInput(
                f"covenant id must be 1..{threshold.MAX_ID_BYTES} bytes", field="covenant_id"
            )
        if not 1 <= self.key_epoch < 2**32:
            raise InvalidInput("key epoch must be 1..2^32-1", field="key_epoch")


def oprf_input(identifier: Tokenisable) -> bytes:
    """The OPRF input for an identifier: domain, type and canonical form, each framed."""
    return (
        crypto.frame(_INPUT_DOMAIN)
        + crypto.frame(str(identifier.type).encode("ascii"))
        + crypto.frame(identifier.canonical.encode("utf-8"))
    )


def _info(domain: TokenDomain, identifier_type: str, oprf_output: bytes) -> bytes:
    if len(oprf_output) != oprf.OUTPUT_BYTES:
        raise InvalidInput("OPRF output must be 64 bytes", field="oprf_output")
    return (
        crypto.frame(domain.covenant_id.encode("utf-8"))
        + struct.pack(">I", domain.key_epoch)
        + crypto.frame(str(identifier_type).encode("ascii"))
    )


def derive_token(domain: TokenDomain, identifier_type: str, oprf_output: bytes) -> bytes:
    """Derive the 32-byte token from a 64-byte OPRF output."""
    info = _info(domain, identifier_type, oprf_output)
    return hkdf_sha256(oprf_output, salt=_TOKEN_SALT, info=info, length=TOKEN_BYTES)


def derive_hit_proof_key(domain: TokenDomain, identifier_type: str, oprf_output: bytes) -> bytes:
    """Derive the 32-byte hit proof key from a 64-byte OPRF output: the token's info under
    its own salt, so that knowing the token tells nothing of the key."""
    info = _info(domain, identifier_type, oprf_output)
    return hkdf_sha256(oprf_output, salt=_HIT_PROOF_SALT, info=info, length=HIT_PROOF_KEY_BYTES)


@dataclass(frozen=True, slots=True, repr=False)
class TokenKeys:
    """A token and the hit proof key of the same OPRF output. The key is secret: it stays
    on the node, is never sent and never logged."""

    token: bytes
    hit_proof_key: bytes

    def __repr__(self) -> str:
        return "TokenKeys(token=..., hit_proof_key=...)"


@dataclass(frozen=True, slots=True, repr=False)
class PendingTokens:
    """The node's state between blinding and finishing. Holds secrets: never persisted or logged."""

    domain: TokenDomain
    types: tuple[str, ...]
    inputs: tuple[bytes, ...]
    blinds: tuple[bytes, ...]
    blinded_elements: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"PendingTokens(domain={self.domain!r}, count={len(self.inputs)})"


def start(domain: TokenDomain, identifiers: Sequence[Tokenisable]) -> PendingTokens:
    """Blind every identifier; the blinded elements go to the key holders."""
    if not identifiers:
        raise InvalidInput("no identifiers to tokenise", field="identifiers")
    inputs = tuple(oprf_input(i) for i in identifiers)
    blinded = [oprf.blind(x) for x in inputs]
    return PendingTokens(
        domain=domain,
        types=tuple(str(i.type) for i in identifiers),
        inputs=inputs,
        blinds=tuple(b for b, _ in blinded),
        blinded_elements=tuple(e for _, e in blinded),
    )


def _outputs(pending: PendingTokens, evaluated_elements: Sequence[bytes]) -> list[bytes]:
    if len(evaluated_elements) != len(pending.inputs):
        raise InvalidInput("wrong number of evaluated elements", field="evaluated_elements")
    return oprf.finalize_batch(pending.inputs, pending.blinds, evaluated_elements)


def finish(pending: PendingTokens, evaluated_elements: Sequence[bytes]) -> list[bytes]:
    """Unblind and finalise the combined evaluations, then derive the tokens."""
    outputs = _outputs(pending, evaluated_elements)
    return [
        derive_token(pending.domain, t, out) for t, out in zip(pending.types, outputs, strict=True)
    ]


def finish_with_proof_keys(
    pending: PendingTokens, evaluated_elements: Sequence[bytes]
) -> list[TokenKeys]:
    """As :func:`finish`, with each token's hit proof key: what a node stores for its own
    signals, so that it can prove a hit when it asks for details."""
    outputs = _outputs(pending, evaluated_elements)
    return [
        TokenKeys(
            derive_token(pending.domain, t, out), derive_hit_proof_key(pending.domain, t, out)
        )
        for t, out in zip(pending.types, outputs, strict=True)
    ]


def token_with_key(domain: TokenDomain, key: bytes, identifier: Tokenisable) -> bytes:
    """The token computed with the whole key. Only for tests that check the threshold path."""
    return derive_token(domain, str(identifier.type), oprf.evaluate(key, oprf_input(identifier)))


def tokenise_in_process(
    domain: TokenDomain,
    epoch: threshold.KeyEpoch,
    holders: Mapping[int, threshold.HolderFunction],
    identifiers: Sequence[Tokenisable],
) -> list[bytes]:
    """The whole pipeline with in-process key holders (tests, benchmark, demo)."""
    if (epoch.covenant_id, epoch.epoch) != (domain.covenant_id, domain.key_epoch):
        raise InvalidInput("key epoch does not belong to this token domain", field="key_epoch")
    pending = start(domain, identifiers)
    evaluated = threshold.evaluate_in_process(epoch, holders, pending.blinded_elements)
    return finish(pending, evaluated)
