"""RFC 9497 / RFC 9380 / RFC 9496 test vectors for the OPRF module, byte for byte."""

from __future__ import annotations

import pytest

from samenloop.node.tokens import oprf
from samenloop.policies.errors import InvalidInput, InvalidProof

SEED = bytes.fromhex("a3" * 32)
KEY_INFO = bytes.fromhex("74657374206b6579")  # "test key"

# RFC 9497 Appendix A.1.1: OPRF(ristretto255, SHA-512), mode 0.
OPRF_SKSM = "5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e"
OPRF_VECTORS = [
    {
        "input": "00",
        "blind": "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
        "blinded": "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
        "evaluated": "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
        "output": "527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3"
        "ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6",
    },
    {
        "input": "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "blind": "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
        "blinded": "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
        "evaluated": "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
        "output": "f4a74c9c592497375e796aa837e907b1a045d34306a749db9f34221f7e750cb4"
        "f2a6413a6bf6fa5e19ba6348eb673934a722a7ede2e7621306d18951e7cf2c73",
    },
]

# RFC 9497 Appendix A.1.2: VOPRF(ristretto255, SHA-512), mode 1 (for the DLEQ proofs).
VOPRF_SKSM = "e6f73f344b79b379f1a0dd37e07ff62e38d9f71345ce62ae3a9bc60b04ccd909"
VOPRF_PKSM = "c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e"
VOPRF_VECTORS = [
    {
        "inputs": ["00"],
        "blinds": ["64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"],
        "blinded": ["863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945"],
        "evaluated": ["aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e"],
        "proof": "ddef93772692e535d1a53903db24367355cc2cc78de93b3be5a8ffcc6985dd06"
        "6d4346421d17bf5117a2a1ff0fcb2a759f58a539dfbe857a40bce4cf49ec600d",
        "proof_r": "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e",
        "outputs": [
            "b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7d"
            "a4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c"
        ],
    },
    {
        "inputs": ["5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"],
        "blinds": ["64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"],
        "blinded": ["cc0b2a350101881d8a4cba4c80241d74fb7dcbfde4a61fde2f91443c2bf9ef0c"],
        "evaluated": ["60a59a57208d48aca71e9e850d22674b611f752bed48b36f7a91b372bd7ad468"],
        "proof": "401a0da6264f8cf45bb2f5264bc31e109155600babb3cd4e5af7d181a2c9dc0a"
        "67154fabf031fd936051dec80b0b6ae29c9503493dde7393b722eafdf5a50b02",
        "proof_r": "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e",
        "outputs": [
            "8a9a2f3c7f085b65933594309041fc1898d42d0858e59f90814ae90571a6df60"
            "356f4610bf816f27afdd84f47719e480906d27ecd994985890e5f539e7ea74b6"
        ],
    },
    {
        "inputs": ["00", "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"],
        "blinds": [
            "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
            "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e",
        ],
        "blinded": [
            "863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945",
            "90a0145ea9da29254c3a56be4fe185465ebb3bf2a1801f7124bbbadac751e654",
        ],
        "evaluated": [
            "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e",
            "cc5ac221950a49ceaa73c8db41b82c20372a4c8d63e5dded2db920b7eee36a2a",
        ],
        "proof": "cc203910175d786927eeb44ea847328047892ddf8590e723c37205cb74600b0a"
        "5ab5337c8eb4ceae0494c2cf89529dcf94572ed267473d567aeed6ab873dee08",
        "proof_r": "419c4f4f5052c53c45f3da494d2b67b220d02118e0857cdbcf037f9ea84bbe0c",
        "outputs": [
            "b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7d"
            "a4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c",
            "8a9a2f3c7f085b65933594309041fc1898d42d0858e59f90814ae90571a6df60"
            "356f4610bf816f27afdd84f47719e480906d27ecd994985890e5f539e7ea74b6",
        ],
    },
]

# RFC 9380 Appendix K.3: expand_message_xmd(SHA-512), DST below, len_in_bytes 0x20.
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_VECTORS = [
    (b"", "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (b"abcdef0123456789", "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58"),
    (b"q128_" + b"q" * 128, "7336234ee9983902440f6bc35b348352013becd88938d2afec44311caf8356b3"),
]

# RFC 9496 Appendix A.2: encodings that a decoder must reject.
BAD_ENCODINGS = [
    # non-canonical field encodings
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    # negative field elements
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "ed57ffd8c914fb201471d1c3d245ce3c746fcbe63a3679d51b6a516ebebe0e20",
    "c34c4e1826e5d403b78e246e88aa051c36ccf0aafebffe137d148a2bf9104562",
    "c940e5a4404157cfb1628b108db051a8d439e1a421394ec4ebccb9ec92a8ac78",
    "47cfc5497c53dc8e61c91d17fd626ffb1c49e2bca94eed052281b510b1117a24",
    "f1c6165d33367351b0da8f6e4511010c68174a03b6581212c71c0e1d026c3c72",
    "87260f7a2f12495118360f02c26a470f450dadf34a413d21042b43b9d93e1309",
    # non-square x^2
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
    "de6a7b00deadc788eb6b6c8d20c0ae96c2f2019078fa604fee5b87d6e989ad7b",
    "bcab477be20861e01e4a0e295284146a510150d9817763caf1a6f4b422d67042",
    "2a292df7e32cababbd9de088d1d1abec9fc0440f637ed2fba145094dc14bea08",
    "f4a9e534fc0d216c44b218fa0c42d99635a0127ee2e53c712f70609649fdff22",
    "8268436f8c4126196cf64b3c7ddbda90746a378625f9813dd9b8457077256731",
    "2810e5cbc2cc4d4eece54f61c6f69758e289aa7ab440b3cbeaa21995c2f4232b",
    # s = -1, which causes y = 0
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]

# RFC 9496 Appendix A.1: encodings of small multiples of the generator (B, 2B, 3B).
GENERATOR_MULTIPLES = [
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
]


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_context_string_is_the_rfcs():
    assert oprf.context_string(oprf.MODE_OPRF) == b"OPRFV1-\x00-ristretto255-SHA512"
    assert oprf.context_string(oprf.MODE_VOPRF) == b"OPRFV1-\x01-ristretto255-SHA512"


@pytest.mark.parametrize(("msg", "expected"), XMD_VECTORS)
def test_expand_message_xmd_sha512(msg, expected):
    assert oprf.expand_message_xmd(msg, XMD_DST, 0x20).hex() == expected


def test_expand_message_xmd_sha512_two_blocks():
    # RFC 9380 Appendix K.3, msg "", len_in_bytes 0x80 (ell = 2: the chained-block path).
    expected = (
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
        "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
        "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
        "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961"
    )
    assert oprf.expand_message_xmd(b"", XMD_DST, 0x80).hex() == expected


def test_derive_key_pair_oprf_mode():
    sk, pk = oprf.derive_key_pair(SEED, KEY_INFO)
    assert sk.hex() == OPRF_SKSM
    assert pk == oprf.scalar_mult_gen(sk)


def test_derive_key_pair_voprf_mode():
    sk, pk = oprf.derive_key_pair(SEED, KEY_INFO, mode=oprf.MODE_VOPRF)
    assert sk.hex() == VOPRF_SKSM
    assert pk.hex() == VOPRF_PKSM


@pytest.mark.parametrize("vector", OPRF_VECTORS, ids=["vector1", "vector2"])
def test_oprf_vectors(vector):
    sk = h(OPRF_SKSM)
    blind, blinded = oprf.blind(h(vector["input"]), h(vector["blind"]))
    assert blind.hex() == vector["blind"]
    assert blinded.hex() == vector["blinded"]
    evaluated = oprf.blind_evaluate(sk, blinded)
    assert evaluated.hex() == vector["evaluated"]
    assert oprf.finalize(h(vector["input"]), blind, evaluated).hex() == vector["output"]
    assert oprf.evaluate(sk, h(vector["input"])).hex() == vector["output"]


@pytest.mark.parametrize("vector", VOPRF_VECTORS, ids=["vector1", "vector2", "batch2"])
def test_voprf_vectors_blind_evaluate_and_proof(vector):
    sk, pk = h(VOPRF_SKSM), h(VOPRF_PKSM)
    blinded = []
    for x, r, expected in zip(vector["inputs"], vector["blinds"], vector["blinded"], strict=True):
        _, b = oprf.blind(h(x), h(r), mode=oprf.MODE_VOPRF)
        assert b.hex() == expected
        blinded.append(b)
    evaluated = [oprf.blind_evaluate(sk, b) for b in blinded]
    assert [e.hex() for e in evaluated] == vector["evaluated"]
    proof = oprf.generate_proof(sk, oprf.GENERATOR, pk, blinded, evaluated, r=h(vector["proof_r"]))
    assert proof.hex() == vector["proof"]
    oprf.verify_proof(oprf.GENERATOR, pk, blinded, evaluated, proof)
    outputs = oprf.finalize_batch(
        [h(x) for x in vector["inputs"]], [h(r) for r in vector["blinds"]], evaluated
    )
    assert [o.hex() for o in outputs] == vector["outputs"]


def test_verify_proof_rejects_a_wrong_evaluation():
    sk, pk = h(VOPRF_SKSM), h(VOPRF_PKSM)
    _, b = oprf.blind(b"x", mode=oprf.MODE_VOPRF)
    good = oprf.blind_evaluate(sk, b)
    proof = oprf.generate_proof(sk, oprf.GENERATOR, pk, [b], [good])
    wrong = oprf.blind_evaluate(oprf.random_scalar(), b)
    with pytest.raises(InvalidProof):
        oprf.verify_proof(oprf.GENERATOR, pk, [b], [wrong], proof)
    with pytest.raises(InvalidProof):
        oprf.verify_proof(oprf.GENERATOR, pk, [b], [good], proof[:32] + bytes(32))
    with pytest.raises(InvalidProof):
        oprf.verify_proof(oprf.GENERATOR, pk, [b], [good], proof[:-1])


def test_generator_multiples():
    for n, expected in enumerate(GENERATOR_MULTIPLES, start=1):
        assert oprf.scalar_mult_gen(oprf.scalar_from_int(n)).hex() == expected
    assert oprf.GENERATOR.hex() == GENERATOR_MULTIPLES[0]


@pytest.mark.parametrize("encoding", BAD_ENCODINGS)
def test_deserialize_element_rejects_rfc9496_bad_encodings(encoding):
    with pytest.raises(InvalidInput) as info:
        oprf.deserialize_element(h(encoding), field="blinded_elements[0]")
    assert info.value.field == "blinded_elements[0]"
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(h(OPRF_SKSM), h(encoding))


def test_deserialize_element_rejects_identity_and_wrong_lengths():
    with pytest.raises(InvalidInput) as info:
        oprf.deserialize_element(bytes(32))
    assert info.value.reason == "oprf.identity"
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(InvalidInput):
            oprf.deserialize_element(bad)
    with pytest.raises(InvalidInput):
        oprf.finalize(b"x", oprf.random_scalar(), bytes(32))


def test_deserialize_scalar_rejects_unreduced():
    with pytest.raises(InvalidInput):
        oprf.deserialize_scalar(oprf.ORDER.to_bytes(32, "little"))
    assert oprf.deserialize_scalar(oprf.scalar_from_int(5)) == oprf.scalar_from_int(5)


def test_batch_inverse_matches_single_inverses():
    scalars = [oprf.random_scalar() for _ in range(7)]
    assert oprf.batch_inverse(scalars) == [oprf.scalar_inverse(s) for s in scalars]
    assert oprf.batch_inverse([]) == []


def test_blind_is_randomised_but_finalises_to_evaluate():
    sk = oprf.random_scalar()
    r1, b1 = oprf.blind(b"123456782")
    r2, b2 = oprf.blind(b"123456782")
    assert b1 != b2
    assert r1 != r2
    out1 = oprf.finalize(b"123456782", r1, oprf.blind_evaluate(sk, b1))
    out2 = oprf.finalize(b"123456782", r2, oprf.blind_evaluate(sk, b2))
    assert out1 == out2 == oprf.evaluate(sk, b"123456782")


def _valid_proof():
    sk, pk = h(VOPRF_SKSM), h(VOPRF_PKSM)
    _, b = oprf.blind(b"x", mode=oprf.MODE_VOPRF)
    z = oprf.blind_evaluate(sk, b)
    return pk, b, z, oprf.generate_proof(sk, oprf.GENERATOR, pk, [b], [z])


@pytest.mark.parametrize("part", ["c", "s"])
def test_verify_proof_rejects_unreduced_scalars_with_the_same_error(part):
    pk, b, z, proof = _valid_proof()
    c, s = proof[:32], proof[32:]
    # c + L (or s + L) is the same scalar mod L but not canonical: must be refused.
    bumped = (oprf.scalar_to_int(c if part == "c" else s) + oprf.ORDER).to_bytes(32, "little")
    forged = bumped + s if part == "c" else c + bumped
    with pytest.raises(InvalidProof):
        oprf.verify_proof(oprf.GENERATOR, pk, [b], [z], forged)


@pytest.mark.parametrize("bad", [BAD_ENCODINGS[0], "00" * 32])
def test_verify_proof_rejects_invalid_elements_with_the_same_error(bad):
    pk, b, z, proof = _valid_proof()
    for args in ([h(bad), pk, [b], [z]], [oprf.GENERATOR, h(bad), [b], [z]]):
        with pytest.raises(InvalidProof):
            oprf.verify_proof(*args, proof)
    with pytest.raises(InvalidProof):
        oprf.verify_proof(oprf.GENERATOR, pk, [b], [h(bad)], proof)
    with pytest.raises(InvalidProof):
        oprf.verify_proof(oprf.GENERATOR, pk, [h(bad)], [z], proof)


def test_zero_scalars_are_refused_cleanly():
    with pytest.raises(InvalidInput):
        oprf.blind(b"x", bytes(32))
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(bytes(32), oprf.GENERATOR)
    with pytest.raises(InvalidInput):
        oprf.deserialize_scalar(bytes(32), nonzero=True)
    assert oprf.is_zero(bytes(32))
    assert not oprf.is_zero(oprf.scalar_from_int(1))
