"""RFC 9497 OPRF, ciphersuite ristretto255-SHA512, on libsodium (via ``rbcl``).

Functions carry the RFC's names and take and return bytes: scalars are 32-byte
little-endian, elements 32-byte ristretto255 encodings (RFC 9496). Mode 0
(OPRF) is what tokens use; the DLEQ proof functions (RFC 9497 section 2.2) are
parametrised by mode so that key holders can prove their partial evaluations
exactly as a VOPRF server proves its evaluation (mode 1).

This module is the only place that touches group arithmetic; the threshold
layer (:mod:`samenloop.node.tokens.threshold`) calls the small helpers below.
Sans-IO: randomness may be passed in for test vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

import rbcl

from samenloop.policies.errors import InvalidInput, InvalidProof

MODE_OPRF = 0x00
MODE_VOPRF = 0x01
IDENTIFIER = b"ristretto255-SHA512"

SCALAR_BYTES = 32
ELEMENT_BYTES = 32
OUTPUT_BYTES = 64  # Nh for SHA-512
PROOF_BYTES = 2 * SCALAR_BYTES

#: The group order L = 2^252 + 27742317777372353535851937790883648493.
ORDER = 2**252 + 27742317777372353535851937790883648493

_IDENTITY = bytes(ELEMENT_BYTES)
_ZERO_SCALAR = bytes(SCALAR_BYTES)


def context_string(mode: int) -> bytes:
    """RFC 9497 section 3.1: "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier."""
    return b"OPRFV1-" + bytes([mode]) + b"-" + IDENTIFIER


_CONTEXT = {mode: context_string(mode) for mode in (MODE_OPRF, MODE_VOPRF)}


def _i2osp2(n: int) -> bytes:
    return struct.pack(">H", n)


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512 (b_in_bytes 64, s_in_bytes 128)."""
    b_in_bytes, s_in_bytes = 64, 128
    ell = -(-len_in_bytes // b_in_bytes)
    if ell > 255 or len_in_bytes > 65535 or len(dst) > 255:
        raise InvalidInput("expand_message_xmd parameters out of range", field="len_in_bytes")
    dst_prime = dst + bytes([len(dst)])
    z_pad = bytes(s_in_bytes)
    l_i_b_str = _i2osp2(len_in_bytes)
    b_0 = hashlib.sha512(z_pad + msg + l_i_b_str + b"\x00" + dst_prime).digest()
    b_i = hashlib.sha512(b_0 + b"\x01" + dst_prime).digest()
    uniform = [b_i]
    for i in range(2, ell + 1):
        b_i = hashlib.sha512(
            bytes(x ^ y for x, y in zip(b_0, b_i, strict=True)) + bytes([i]) + dst_prime
        ).digest()
        uniform.append(b_i)
    return b"".join(uniform)[:len_in_bytes]


# --- group helpers ------------------------------------------------------------


def hash_to_group(msg: bytes, mode: int = MODE_OPRF) -> bytes:
    """HashToGroup: hash_to_ristretto255 with DST "HashToGroup-" || contextString."""
    uniform = expand_message_xmd(msg, b"HashToGroup-" + _CONTEXT[mode], 64)
    return bytes(rbcl.crypto_core_ristretto255_from_hash(uniform))


def hash_to_scalar(msg: bytes, mode: int = MODE_OPRF, dst: bytes | None = None) -> bytes:
    """HashToScalar: 64 uniform bytes, little-endian, reduced modulo the group order."""
    if dst is None:
        dst = b"HashToScalar-" + _CONTEXT[mode]
    return bytes(rbcl.crypto_core_ristretto255_scalar_reduce(expand_message_xmd(msg, dst, 64)))


def deserialize_element(data: bytes, *, field: str = "element") -> bytes:
    """RFC 9497 section 4.1 DeserializeElement: a canonical encoding, not the identity.

    Returns the (validated) encoding; raises ``InvalidInput`` naming ``field``.
    """
    if not isinstance(data, bytes | bytearray) or len(data) != ELEMENT_BYTES:
        raise InvalidInput(
            "group element must be 32 bytes", field=field, reason="oprf.element_length"
        )
    data = bytes(data)
    if data == _IDENTITY:
        raise InvalidInput("group element is the identity", field=field, reason="oprf.identity")
    if not rbcl.crypto_core_ristretto255_is_valid_point(data):
        raise InvalidInput(
            "not a valid ristretto255 encoding", field=field, reason="oprf.invalid_element"
        )
    return data


def deserialize_scalar(data: bytes, *, field: str = "scalar", nonzero: bool = False) -> bytes:
    """A canonical scalar: 32 bytes, little-endian, below the group order (and not 0 if asked)."""
    if not isinstance(data, bytes | bytearray) or len(data) != SCALAR_BYTES:
        raise InvalidInput("scalar must be 32 bytes", field=field, reason="oprf.scalar_length")
    if int.from_bytes(data, "little") >= ORDER:
        raise InvalidInput("scalar is not reduced", field=field, reason="oprf.scalar_range")
    if nonzero and is_zero(data):
        raise InvalidInput("scalar must not be zero", field=field, reason="oprf.zero_scalar")
    return bytes(data)


def is_zero(scalar: bytes) -> bool:
    """Whether a (secret) scalar is zero, in constant time."""
    return hmac.compare_digest(scalar, _ZERO_SCALAR)


def scalar_from_int(n: int) -> bytes:
    return (n % ORDER).to_bytes(SCALAR_BYTES, "little")


def scalar_to_int(s: bytes) -> int:
    return int.from_bytes(s, "little")


def random_scalar() -> bytes:
    """A uniformly random non-zero scalar (libsodium's rejection sampling)."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_random())


def scalar_add(a: bytes, b: bytes) -> bytes:
    return bytes(rbcl.crypto_core_ristretto255_scalar_add(a, b))


def scalar_sub(a: bytes, b: bytes) -> bytes:
    return bytes(rbcl.crypto_core_ristretto255_scalar_sub(a, b))


def scalar_mul(a: bytes, b: bytes) -> bytes:
    return bytes(rbcl.crypto_core_ristretto255_scalar_mul(a, b))


def scalar_inverse(a: bytes) -> bytes:
    if is_zero(a):
        raise InvalidInput(
            "cannot invert the zero scalar", field="scalar", reason="oprf.zero_scalar"
        )
    return bytes(rbcl.crypto_core_ristretto255_scalar_invert(a))


def scalar_mult(k: bytes, element: bytes) -> bytes:
    """k * element. Refuses a zero k, an invalid element, or an identity result."""
    try:
        return bytes(rbcl.crypto_scalarmult_ristretto255(k, element))
    except RuntimeError as error:  # libsodium: invalid point, or k * element is the identity
        raise InvalidInput(
            "scalar multiplication refused (zero scalar or invalid element)",
            field="element",
            reason="oprf.invalid_multiplication",
        ) from error


def scalar_mult_gen(k: bytes) -> bytes:
    return bytes(rbcl.crypto_scalarmult_ristretto255_base(k))


def element_add(a: bytes, b: bytes) -> bytes:
    """a + b. Both must be valid encodings: libsodium's add does not report invalid input,
    so callers pass only deserialized elements or results of ``scalar_mult``."""
    return bytes(rbcl.crypto_core_ristretto255_add(a, b))


def batch_inverse(scalars: Sequence[bytes]) -> list[bytes]:
    """Invert many scalars with one inversion (Montgomery's trick)."""
    if not scalars:
        return []
    prefix = [scalars[0]]
    for s in scalars[1:]:
        prefix.append(scalar_mul(prefix[-1], s))
    inv = scalar_inverse(prefix[-1])
    out = [b""] * len(scalars)
    for i in range(len(scalars) - 1, 0, -1):
        out[i] = scalar_mul(inv, prefix[i - 1])
        inv = scalar_mul(inv, scalars[i])
    out[0] = inv
    return out


GENERATOR = scalar_mult_gen(scalar_from_int(1))


# --- RFC 9497 section 3.2: key generation ---------------------------------------


def derive_key_pair(seed: bytes, info: bytes, mode: int = MODE_OPRF) -> tuple[bytes, bytes]:
    """DeriveKeyPair(seed, info) -> (skS, pkS)."""
    derive_input = seed + _i2osp2(len(info)) + info
    dst = b"DeriveKeyPair" + _CONTEXT[mode]
    for counter in range(256):
        sk = hash_to_scalar(derive_input + bytes([counter]), dst=dst)
        if not is_zero(sk):
            return sk, scalar_mult_gen(sk)
    raise InvalidInput("DeriveKeyPairError", field="seed")  # pragma: no cover - probability 2^-2000


# --- RFC 9497 section 3.3.1: the OPRF protocol ----------------------------------


def _input_element(input: bytes, mode: int) -> bytes:
    element = hash_to_group(input, mode)
    if element == _IDENTITY:  # InvalidInputError; unreachable for SHA-512 outputs in practice
        raise InvalidInput(
            "input maps to the identity element", field="input", reason="oprf.invalid_input"
        )
    return element


def blind(input: bytes, blind: bytes | None = None, mode: int = MODE_OPRF) -> tuple[bytes, bytes]:
    """Blind(input) -> (blind, blindedElement). ``blind`` is for test vectors only."""
    r = random_scalar() if blind is None else deserialize_scalar(blind, field="blind", nonzero=True)
    return r, scalar_mult(r, _input_element(input, mode))


def blind_evaluate(sk: bytes, blinded_element: bytes) -> bytes:
    """BlindEvaluate(skS, blindedElement) -> evaluatedElement (validates the input element)."""
    return scalar_mult(sk, deserialize_element(blinded_element, field="blinded_element"))


def _finalize_hash(input: bytes, element: bytes) -> bytes:
    return hashlib.sha512(
        _i2osp2(len(input)) + input + _i2osp2(len(element)) + element + b"Finalize"
    ).digest()


def finalize(input: bytes, blind: bytes, evaluated_element: bytes) -> bytes:
    """Finalize(input, blind, evaluatedElement) -> 64-byte output."""
    evaluated = deserialize_element(evaluated_element, field="evaluated_element")
    return _finalize_hash(input, scalar_mult(scalar_inverse(blind), evaluated))


def evaluate(sk: bytes, input: bytes, mode: int = MODE_OPRF) -> bytes:
    """Evaluate(skS, input): the PRF computed directly by whoever holds the whole key."""
    return _finalize_hash(input, scalar_mult(sk, _input_element(input, mode)))


def finalize_batch(
    inputs: Sequence[bytes], blinds: Sequence[bytes], evaluated_elements: Sequence[bytes]
) -> list[bytes]:
    """Finalize many at once: same outputs as ``finalize``, one scalar inversion in all."""
    if not len(inputs) == len(blinds) == len(evaluated_elements):
        raise InvalidInput(
            "inputs, blinds and evaluations differ in length", field="evaluated_elements"
        )
    inverses = batch_inverse(blinds)
    return [
        _finalize_hash(
            x, scalar_mult(inv, deserialize_element(z, field=f"evaluated_elements[{i}]"))
        )
        for i, (x, inv, z) in enumerate(zip(inputs, inverses, evaluated_elements, strict=True))
    ]


# --- RFC 9497 section 2.2: discrete-log equality proofs ---------------------------


def _composite_seed(b: bytes, mode: int) -> bytes:
    seed_dst = b"Seed-" + _CONTEXT[mode]
    return hashlib.sha512(_i2osp2(len(b)) + b + _i2osp2(len(seed_dst)) + seed_dst).digest()


def _composite_scalars(
    b: bytes, c: Sequence[bytes], d: Sequence[bytes], mode: int, first: int = 0
) -> list[bytes]:
    seed = _composite_seed(b, mode)
    prefix = _i2osp2(len(seed)) + seed
    return [
        hash_to_scalar(
            prefix + _i2osp2(i) + _i2osp2(len(ci)) + ci + _i2osp2(len(di)) + di + b"Composite",
            mode,
        )
        for i, (ci, di) in enumerate(zip(c, d, strict=True), start=first)
    ]


def _weighted_sum(weights: Sequence[bytes], elements: Sequence[bytes]) -> bytes:
    total = scalar_mult(weights[0], elements[0])
    for w, e in zip(weights[1:], elements[1:], strict=True):
        total = element_add(total, scalar_mult(w, e))
    return total


def compute_composites_fast(
    k: bytes, b: bytes, c: Sequence[bytes], d: Sequence[bytes], mode: int = MODE_VOPRF
) -> tuple[bytes, bytes]:
    """ComputeCompositesFast: the prover's (M, Z) using its knowledge of k."""
    m = _weighted_sum(_composite_scalars(b, c, d, mode), c)
    return m, scalar_mult(k, m)


def compute_composites(
    b: bytes, c: Sequence[bytes], d: Sequence[bytes], mode: int = MODE_VOPRF
) -> tuple[bytes, bytes]:
    """ComputeComposites: the verifier's (M, Z)."""
    weights = _composite_scalars(b, c, d, mode)
    return _weighted_sum(weights, c), _weighted_sum(weights, d)


def composites_part(
    b: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    *,
    first: int = 0,
    mode: int = MODE_VOPRF,
    prover: bool = False,
) -> tuple[bytes, bytes | None]:
    """The composites of the slice of C and D that starts at index ``first``.

    M and Z are sums over the elements, so the sums of the slices' parts are
    ``compute_composites``' (M, Z): this is what lets the proofs of a long
    batch be computed and checked in several processes. ``prover``: M only
    (the prover computes Z = k * M), Z is then None.
    """
    if not c or len(c) != len(d):
        raise InvalidInput("composites need equal, non-empty element lists", field="elements")
    weights = _composite_scalars(b, c, d, mode, first)
    return _weighted_sum(weights, c), None if prover else _weighted_sum(weights, d)


def _challenge(b: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes, mode: int) -> bytes:
    transcript = b"".join(_i2osp2(len(x)) + x for x in (b, m, z, t2, t3)) + b"Challenge"
    return hash_to_scalar(transcript, mode)


def generate_proof(
    k: bytes,
    a: bytes,
    b: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    *,
    mode: int = MODE_VOPRF,
    r: bytes | None = None,
) -> bytes:
    """GenerateProof(k, A, B, C, D): a batched proof that k*A == B and k*C[i] == D[i].

    Returns c || s (64 bytes). ``r`` is for test vectors only.
    """
    if not c or len(c) != len(d):
        raise InvalidInput("proof needs equal, non-empty element lists", field="elements")
    m, z = compute_composites_fast(k, b, c, d, mode)
    return proof_from_composites(k, a, b, m, z, mode=mode, r=r)


def proof_from_composites(
    k: bytes,
    a: bytes,
    b: bytes,
    m: bytes,
    z: bytes,
    *,
    mode: int = MODE_VOPRF,
    r: bytes | None = None,
) -> bytes:
    """The rest of ``generate_proof`` once the composites (M, Z = k * M) are summed."""
    r = random_scalar() if r is None else deserialize_scalar(r, field="r")
    t2 = scalar_mult(r, a)
    t3 = scalar_mult(r, m)
    challenge = _challenge(b, m, z, t2, t3, mode)
    s = scalar_sub(r, scalar_mul(challenge, k))
    return challenge + s


def verify_proof(
    a: bytes,
    b: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    proof: bytes,
    *,
    mode: int = MODE_VOPRF,
    field: str = "proof",
) -> None:
    """VerifyProof(A, B, C, D, proof); raises ``InvalidProof`` unless it verifies."""
    if len(proof) != PROOF_BYTES or not c or len(c) != len(d):
        raise InvalidProof("malformed proof", field=field)
    try:
        b = deserialize_element(b, field=field)
        # C and D are checked by the composites' scalar multiplications, which refuse
        # invalid encodings and identity results.
        m, z = compute_composites(b, c, d, mode)
    except (InvalidInput, RuntimeError, ValueError) as error:  # bad scalar or element
        raise InvalidProof("proof does not verify", field=field) from error
    verify_with_composites(a, b, m, z, proof, mode=mode, field=field)


def verify_with_composites(
    a: bytes,
    b: bytes,
    m: bytes,
    z: bytes,
    proof: bytes,
    *,
    mode: int = MODE_VOPRF,
    field: str = "proof",
) -> None:
    """The rest of ``verify_proof`` once the composites (M, Z) are summed."""
    if len(proof) != PROOF_BYTES:
        raise InvalidProof("malformed proof", field=field)
    try:
        challenge = deserialize_scalar(proof[:SCALAR_BYTES], field=field)
        s = deserialize_scalar(proof[SCALAR_BYTES:], field=field)
        a = deserialize_element(a, field=field)
        b = deserialize_element(b, field=field)
        t2 = element_add(_mult_allow_zero(s, a), _mult_allow_zero(challenge, b))
        t3 = element_add(_mult_allow_zero(s, m), _mult_allow_zero(challenge, z))
    except (InvalidInput, RuntimeError, ValueError) as error:  # bad scalar or element
        raise InvalidProof("proof does not verify", field=field) from error
    expected = _challenge(b, m, z, t2, t3, mode)
    if not _equal(expected, challenge):
        raise InvalidProof("proof does not verify", field=field)


def _mult_allow_zero(k: bytes, element: bytes) -> bytes:
    return bytes(rbcl.crypto_scalarmult_ristretto255_allow_scalar_zero(k, element))


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
