"""The crypto module: RFC 8032, RFC 7748, NaCl box, RFC 5869 and RFC 4231 vectors; failures say
nothing."""

from __future__ import annotations

import os
import stat

import nacl.signing
import pytest

from samenloop.policies import crypto
from samenloop.policies.crypto import PartyKeys, SealedBox, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    DecryptionFailed,
    InvalidInput,
    InvalidSignature,
)

# RFC 8032 section 7.1, TEST 1-3: (secret key, public key, message, signature).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]

# RFC 7748 section 6.1 (X25519) and the NaCl crypto_box vector ("Cryptography in NaCl").
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
BOX_NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
BOX_PLAINTEXT = bytes.fromhex(
    "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc"
    "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31"
    "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde"
    "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864"
    "5e0705"
)
BOX_CIPHERTEXT = bytes.fromhex(
    "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce"
    "48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c972"
    "71d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae"
    "90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b3"
    "7973f622a43d14a6599b1f654cb45a74e355a5"
)


@pytest.mark.parametrize(("sk", "pk", "msg", "sig"), RFC8032)
def test_ed25519_rfc8032_vectors(sk, pk, msg, sig):
    key = nacl.signing.SigningKey(bytes.fromhex(sk))
    assert bytes(key.verify_key).hex() == pk
    assert crypto.signing_public_key(key).hex() == pk
    # The primitive itself, without our domain separation, reproduces the RFC signature...
    assert bytes(key.sign(bytes.fromhex(msg)).signature).hex() == sig
    # ...and our API signs the domain-separated bytes with that same primitive.
    ours = crypto.sign(key, SignatureContext.CASE_MESSAGE, bytes.fromhex(msg))
    signed = crypto.signing_bytes(SignatureContext.CASE_MESSAGE, bytes.fromhex(msg))
    assert ours == bytes(key.sign(signed).signature)
    crypto.verify(bytes.fromhex(pk), SignatureContext.CASE_MESSAGE, bytes.fromhex(msg), ours)


def test_digest_and_fingerprint_are_sha256_fips_180_vectors():
    # FIPS 180-2 appendix B.1 and B.2: the one hash every module outside the crypto modules uses.
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert crypto.digest(b"abc").hex() == abc
    two_blocks = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
    assert crypto.digest(two_blocks).hex() == (
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    )
    assert crypto.fingerprint(b"abc") == abc[:16]
    assert len(crypto.digest(b"")) == crypto.DIGEST_BYTES


def test_signature_is_bound_to_its_context():
    keys = PartyKeys.generate("gemeente")
    sig = keys.sign(SignatureContext.HIT_NOTICE, b"body")
    crypto.verify(keys.public().ed25519, SignatureContext.HIT_NOTICE, b"body", sig)
    with pytest.raises(InvalidSignature):
        crypto.verify(keys.public().ed25519, SignatureContext.DISCLOSURE_REQUEST, b"body", sig)
    with pytest.raises(InvalidSignature):
        crypto.verify(keys.public().ed25519, SignatureContext.HIT_NOTICE, b"bodY", sig)


@pytest.mark.parametrize(
    ("key", "sig"),
    [
        (b"short", bytes(64)),
        (bytes(32), bytes(63)),
        (PartyKeys.generate("x").public().ed25519, bytes(64)),
        (PartyKeys.generate("y").public().ed25519, os.urandom(64)),
    ],
)
def test_every_bad_signature_raises_the_same_error(key, sig):
    with pytest.raises(InvalidSignature) as info:
        crypto.verify(key, SignatureContext.COVENANT, b"m", sig, field="covenant.signatures[0]")
    assert info.value.field == "covenant.signatures[0]"
    assert str(info.value) == "covenant.signatures[0]: signature does not verify"


def test_x25519_rfc7748_public_keys():
    keys = PartyKeys(party="alice", ed25519_seed=bytes(32), x25519_secret=ALICE_SK)
    assert keys.public().x25519 == ALICE_PK
    bob = PartyKeys(party="bob", ed25519_seed=bytes(32), x25519_secret=BOB_SK)
    assert bob.public().x25519 == BOB_PK


def test_nacl_box_vector():
    box = crypto.seal(ALICE_SK, BOB_PK, BOX_PLAINTEXT, nonce=BOX_NONCE)
    assert box.ciphertext == BOX_CIPHERTEXT
    assert crypto.open_sealed(BOB_SK, ALICE_PK, box) == BOX_PLAINTEXT


def test_sealed_message_only_opens_for_the_recipient_from_the_sender():
    alice, bob, eve = (PartyKeys.generate(p) for p in ("alice", "bob", "eve"))
    box = alice.seal(bob.public().x25519, b"details")
    assert bob.open(alice.public().x25519, box) == b"details"
    with pytest.raises(DecryptionFailed):
        eve.open(alice.public().x25519, box)  # not the recipient
    with pytest.raises(DecryptionFailed):
        bob.open(eve.public().x25519, box)  # claims the wrong sender
    tampered = SealedBox(box.nonce, box.ciphertext[:-1] + bytes([box.ciphertext[-1] ^ 1]))
    with pytest.raises(DecryptionFailed):
        bob.open(alice.public().x25519, tampered)
    with pytest.raises(DecryptionFailed):
        bob.open(alice.public().x25519, SealedBox(b"short", box.ciphertext))


def test_anonymous_seal_round_trip_and_failure():
    bob = PartyKeys.generate("bob")
    ct = crypto.seal_anonymous(bob.public().x25519, b"share")
    assert crypto.open_anonymous(bob.x25519_secret, ct) == b"share"
    with pytest.raises(DecryptionFailed):
        crypto.open_anonymous(PartyKeys.generate("eve").x25519_secret, ct)


def test_hkdf_rfc5869_test_case_1():
    okm = crypto.hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


# RFC 4231 section 4, test cases 1-7, HMAC-SHA-256: (key, data, MAC). Test case 5's MAC is
# given truncated to 128 bits.
RFC4231 = [
    (
        "0b" * 20,
        b"Hi There".hex(),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        b"Jefe".hex(),
        b"what do ya want for nothing?".hex(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        "aa" * 20,
        "dd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        "0102030405060708090a0b0c0d0e0f10111213141516171819",
        "cd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    ("0c" * 20, b"Test With Truncation".hex(), "a3b6167473100ee06e0c796c2955552b"),
    (
        "aa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        "aa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size "
        b"data. The key needs to be hashed before being used by the HMAC algorithm.".hex(),
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]


@pytest.mark.parametrize(("key", "data", "tag"), RFC4231)
def test_hmac_sha256_rfc4231_vectors(key, data, tag):
    key, data, tag = bytes.fromhex(key), bytes.fromhex(data), bytes.fromhex(tag)
    full = crypto.mac(key, data)
    assert len(full) == crypto.MAC_BYTES
    assert full[: len(tag)] == tag
    crypto.verify_mac(key, data, full)


@pytest.mark.parametrize(
    "case", ["wrong tag", "truncated tag", "empty tag", "other key", "other data"]
)
def test_every_bad_mac_raises_the_same_error(case):
    key, data, _ = RFC4231[1]
    key, data = bytes.fromhex(key), bytes.fromhex(data)
    tag = crypto.mac(key, data)
    changed = {
        "wrong tag": (key, data, bytes([tag[0] ^ 1]) + tag[1:]),
        "truncated tag": (key, data, tag[:16]),
        "empty tag": (key, data, b""),
        "other key": (key + b"!", data, tag),
        "other data": (key, data + b"!", tag),
    }[case]
    with pytest.raises(InvalidSignature) as refused:
        crypto.verify_mac(*changed, field="hit_proof")
    assert (refused.value.field, refused.value.message) == ("hit_proof", "MAC does not verify")


def test_equal_is_constant_time_compare():
    assert crypto.equal(b"abc", b"abc")
    assert not crypto.equal(b"abc", b"abd")
    assert not crypto.equal(b"abc", b"ab")


def test_party_keys_file_is_owner_only_and_round_trips(tmp_path):
    keys = PartyKeys.generate("politie")
    path = tmp_path / "keys" / "politie.json"
    keys.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = PartyKeys.load(path)
    assert loaded.party == keys.party
    assert loaded.public() == keys.public()
    assert [p.name for p in path.parent.iterdir()] == ["politie.json"]  # no temp files left


def test_party_keys_repr_shows_no_secret():
    keys = PartyKeys.generate("politie")
    text = repr(keys)
    assert keys.ed25519_seed.hex() not in text
    assert keys.x25519_secret.hex() not in text
    assert "politie" in text


def test_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "k.json"
    PartyKeys.generate("a").save(path)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError) as info:
        PartyKeys.load(path)
    assert "chmod 600" in str(info.value)


@pytest.mark.parametrize(
    "content", [b"", b"{}", b"not json", b'{"kind": "samenloop.party-keys.v1"}']
)
def test_malformed_key_file_is_refused(tmp_path, content):
    path = tmp_path / "k.json"
    crypto.write_secret_file(path, content)
    with pytest.raises(ConfigurationError):
        PartyKeys.load(path)


def test_missing_key_file(tmp_path):
    with pytest.raises(ConfigurationError):
        PartyKeys.load(tmp_path / "absent.json")


def test_signature_contexts_match_the_wire_format():
    import re
    from pathlib import Path

    proto = (Path(__file__).parents[1] / "proto/samenloop/v1/common.proto").read_text()
    listed = set(re.findall(r'^//\s+"([a-z-]+)"\s+->', proto, flags=re.MULTILINE))
    assert listed == {c.value for c in SignatureContext}


def test_seal_signed_round_trip_and_binding():
    from samenloop.policies.crypto import open_signed, seal_signed

    alice, bob, carol = (PartyKeys.generate(p) for p in ("gemeente", "politie", "riec"))
    box = seal_signed(
        alice, "politie", bob.public().x25519, SignatureContext.DISCLOSURE_REQUEST, b"q"
    )
    assert open_signed(bob, "gemeente", alice.public(), box) == (
        SignatureContext.DISCLOSURE_REQUEST,
        b"q",
    )
    # Expecting another kind of message fails.
    with pytest.raises(InvalidSignature):
        open_signed(bob, "gemeente", alice.public(), box, expect=SignatureContext.CASE_MESSAGE)
    # Reflection: the static-static box opens for the sender too, but it was signed for bob.
    with pytest.raises(InvalidSignature):
        open_signed(alice, "politie", bob.public(), box)
    # Claiming another sender fails (the box does not open for that pair).
    with pytest.raises(DecryptionFailed):
        open_signed(bob, "riec", carol.public(), box)


def test_open_signed_refuses_a_message_resealed_by_its_recipient():
    from samenloop.policies.crypto import open_signed, seal_signed
    from samenloop.v1 import common_pb2

    alice, bob, carol = (PartyKeys.generate(p) for p in ("gemeente", "politie", "riec"))
    box = seal_signed(alice, "politie", bob.public().x25519, SignatureContext.CASE_MESSAGE, b"m")
    inner = bob.open(alice.public().x25519, box)  # bob reads alice's signed message...
    resealed = bob.seal(carol.public().x25519, inner)  # ...and passes it to carol as bob
    with pytest.raises(InvalidSignature):
        open_signed(carol, "politie", bob.public(), resealed)  # signer is alice, not bob
    forged = common_pb2.Signed.FromString(inner)
    forged.signer = "politie"  # relabelled: the signature is still alice's, for bob
    with pytest.raises(InvalidSignature):
        open_signed(
            carol,
            "politie",
            bob.public(),
            bob.seal(carol.public().x25519, forged.SerializeToString()),
        )


def test_open_signed_refuses_garbage_plaintext():
    from samenloop.policies.crypto import open_signed

    alice, bob = PartyKeys.generate("a"), PartyKeys.generate("b")
    with pytest.raises(DecryptionFailed):
        open_signed(bob, "a", alice.public(), alice.seal(bob.public().x25519, b"\xff\xfe garbage"))


@pytest.mark.parametrize("key", [bytes(32), bytes([1]) + bytes(31), b"short"])
def test_sealing_to_an_unusable_key_names_the_field(key):
    with pytest.raises(InvalidInput) as info:
        crypto.seal_anonymous(key, b"share")
    assert info.value.field == "recipient_public"


def test_secretbox_nacl_vector_and_failures():
    # The NaCl secretbox vector: the box's shared key for Alice and Bob, same nonce and message.
    import nacl.bindings

    shared = nacl.bindings.crypto_box_beforenm(BOB_PK, ALICE_SK)
    assert shared.hex() == "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389"
    nonce, ciphertext = crypto.secretbox_seal(shared, BOX_PLAINTEXT, nonce=BOX_NONCE)
    assert ciphertext == BOX_CIPHERTEXT
    assert crypto.secretbox_open(shared, nonce, ciphertext, field="attributes") == BOX_PLAINTEXT
    with pytest.raises(DecryptionFailed) as info:
        crypto.secretbox_open(bytes(32), nonce, ciphertext, field="attributes")
    assert info.value.field == "attributes"
    with pytest.raises(InvalidInput):
        crypto.secretbox_seal(b"short", b"x")


def test_secretbox_keys_are_fresh_and_fit_the_box():
    first, second = crypto.secretbox_key(), crypto.secretbox_key()
    assert len(first) == len(second) == crypto.SECRETBOX_KEY_BYTES
    assert first != second
    nonce, ciphertext = crypto.secretbox_seal(first, b"category")
    assert crypto.secretbox_open(first, nonce, ciphertext, field="attributes") == b"category"
    with pytest.raises(DecryptionFailed):
        crypto.secretbox_open(second, nonce, ciphertext, field="attributes")
