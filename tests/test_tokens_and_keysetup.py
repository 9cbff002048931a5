"""Tokens from threshold evaluations; dealing, sealing and opening key shares."""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import keysetup, oprf, threshold
from samenloop.node.tokens.derive import TokenDomain
from samenloop.policies import crypto
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import (
    ConfigurationError,
    DecryptionFailed,
    InvalidInput,
    InvalidSignature,
)


@dataclass(frozen=True)
class Ident:
    type: str
    canonical: str


NOW = datetime(2026, 11, 28, tzinfo=UTC)


def dealt(t: int, n: int, covenant: str = "riec-zuid", epoch: int = 1):
    parties = [PartyKeys.generate(f"holder-{i}") for i in range(1, n + 1)]
    key_epoch, sealed = keysetup.deal(
        covenant, epoch, t, [(p.party, p.public().x25519) for p in parties], now=NOW
    )
    shares = [keysetup.open_share(s, key_epoch, p) for s, p in zip(sealed, parties, strict=True)]
    return key_epoch, sealed, parties, shares


def holders_for(shares):
    return {
        s.index: (lambda blinded, rset, s=s: threshold.evaluate_partial(s, blinded, rset))
        for s in shares
    }


def test_tokens_equal_across_partners_and_match_the_single_key_path():
    key_epoch, _, _, shares = dealt(2, 3)
    domain = TokenDomain("riec-zuid", 1)
    idents = [Ident("bsn", "123456782"), Ident("kvk", "12345678")]
    # Two partners, each with its own random blinds and a different pair of holders.
    a = tokens.tokenise_in_process(domain, key_epoch, holders_for(shares[:2]), idents)
    b = tokens.tokenise_in_process(domain, key_epoch, holders_for(shares[1:]), idents)
    assert a == b
    assert all(len(t) == 32 for t in a)
    key = threshold.recover_key(shares[:2])
    assert a == [tokens.token_with_key(domain, key, i) for i in idents]


def test_tokens_are_domain_separated():
    key = oprf.random_scalar()
    ident = Ident("bsn", "123456782")
    base = tokens.token_with_key(TokenDomain("riec-zuid", 1), key, ident)
    assert base != tokens.token_with_key(TokenDomain("riec-noord", 1), key, ident)
    assert base != tokens.token_with_key(TokenDomain("riec-zuid", 2), key, ident)
    assert base != tokens.token_with_key(
        TokenDomain("riec-zuid", 1), key, Ident("rsin", "123456782")
    )
    assert base != tokens.token_with_key(TokenDomain("riec-zuid", 1), oprf.random_scalar(), ident)


def test_hit_proof_keys_are_equal_across_partners_and_unrelated_to_the_tokens():
    key_epoch, _, _, shares = dealt(2, 3)
    domain = TokenDomain("riec-zuid", 1)
    idents = [Ident("bsn", "123456782"), Ident("kvk", "12345678")]

    def made(holders):
        pending = tokens.start(domain, idents)
        evaluated = threshold.evaluate_in_process(key_epoch, holders, pending.blinded_elements)
        return pending, evaluated, tokens.finish_with_proof_keys(pending, evaluated)

    pending, evaluated, a = made(holders_for(shares[:2]))
    _, _, b = made(holders_for(shares[1:]))
    # Two holders of one identifier derive one key; it never equals the token.
    assert [(m.token, m.hit_proof_key) for m in a] == [(m.token, m.hit_proof_key) for m in b]
    assert [m.token for m in a] == tokens.finish(pending, evaluated)
    assert all(len(m.hit_proof_key) == tokens.HIT_PROOF_KEY_BYTES for m in a)
    assert all(m.hit_proof_key != m.token for m in a)
    assert a[0].hit_proof_key != a[1].hit_proof_key
    # The same derivation as the token's, under its own salt (RFC 5869 HKDF).
    output = oprf.evaluate(threshold.recover_key(shares[:2]), tokens.oprf_input(idents[0]))
    assert a[0].hit_proof_key == crypto.hkdf_sha256(
        output,
        salt=b"samenloop/v1 hit proof",
        info=b"\x00\x09riec-zuid" + b"\x00\x00\x00\x01" + b"\x00\x03bsn",
        length=32,
    )
    assert a[0].token == crypto.hkdf_sha256(
        output,
        salt=b"samenloop/v1 token",
        info=b"\x00\x09riec-zuid" + b"\x00\x00\x00\x01" + b"\x00\x03bsn",
        length=32,
    )
    assert a[0].hit_proof_key.hex() not in repr(a[0])
    # Bound to the covenant and the epoch, as tokens are.
    assert a[0].hit_proof_key != tokens.derive_hit_proof_key(
        TokenDomain("riec-zuid", 2), "bsn", output
    )
    with pytest.raises(InvalidInput):
        tokens.derive_hit_proof_key(domain, "bsn", output[:32])


def test_oprf_input_framing_is_unambiguous():
    assert tokens.oprf_input(Ident("bsn", "1x")) != tokens.oprf_input(Ident("bsn1", "x"))


@pytest.mark.parametrize(("cid", "epoch"), [("", 1), ("x" * 65, 1), ("c", 0), ("c", 2**32)])
def test_token_domain_validation(cid, epoch):
    with pytest.raises(InvalidInput):
        TokenDomain(cid, epoch)


def test_finish_checks_lengths_and_epoch_mismatch():
    key_epoch, _, _, shares = dealt(2, 3)
    pending = tokens.start(TokenDomain("riec-zuid", 1), [Ident("bsn", "1")])
    with pytest.raises(InvalidInput):
        tokens.finish(pending, [])
    assert "count=1" in repr(pending)
    assert pending.blinds[0].hex() not in repr(pending)
    with pytest.raises(InvalidInput):
        tokens.tokenise_in_process(
            TokenDomain("other", 1), key_epoch, holders_for(shares), [Ident("bsn", "1")]
        )
    with pytest.raises(InvalidInput):
        tokens.start(TokenDomain("riec-zuid", 1), [])


def test_deal_seals_shares_that_only_their_holder_can_open():
    key_epoch, sealed, parties, shares = dealt(3, 5)
    key_epoch.check_consistency()
    assert [s.index for s in shares] == [1, 2, 3, 4, 5]
    # The whole key is nowhere in what deal returns, yet t shares rebuild k with k*G = group key.
    assert oprf.scalar_mult_gen(threshold.recover_key(shares[:3])) == key_epoch.group_public_key
    with pytest.raises(InvalidInput) as info:
        keysetup.open_share(sealed[0], key_epoch, parties[1])  # another holder's share
    assert info.value.field == "share.holder"
    wrong_party = PartyKeys(parties[0].party, parties[1].ed25519_seed, parties[1].x25519_secret)
    with pytest.raises(DecryptionFailed):
        keysetup.open_share(sealed[0], key_epoch, wrong_party)


def test_share_from_another_epoch_is_refused():
    _key_epoch1, sealed1, parties, _ = dealt(2, 3, epoch=1)
    key_epoch2, _ = keysetup.deal(
        "riec-zuid", 2, 2, [(p.party, p.public().x25519) for p in parties], now=NOW
    )
    with pytest.raises(InvalidInput) as info:
        keysetup.open_share(sealed1[0], key_epoch2, parties[0])
    assert info.value.field == "share.key_epoch"


def test_share_not_matching_commitment_is_refused():
    key_epoch, sealed, parties, _ = dealt(2, 3)
    # A dealer that sealed a share inconsistent with the published commitment.
    bogus = keysetup.SealedShare(
        covenant_id="riec-zuid",
        key_epoch=1,
        holder_index=1,
        holder=parties[0].party,
        commitment=sealed[0].commitment,
        sealed_share=crypto.seal_anonymous(
            parties[0].public().x25519,
            keysetup._share_plaintext("riec-zuid", 1, 1, oprf.random_scalar()),
        ),
    )
    with pytest.raises(InvalidInput) as info:
        keysetup.open_share(bogus, key_epoch, parties[0])
    assert info.value.field == "share.commitment"


def test_signed_epoch_round_trips_and_share_file_permissions(tmp_path):
    key_epoch, sealed, _parties, shares = dealt(2, 3)
    admin = PartyKeys.generate("riec-admin")
    document = keysetup.sign_key_epoch(key_epoch, admin)
    assert keysetup.verify_key_epoch(document, "riec-admin", admin.public()) == key_epoch
    assert keysetup.sealed_share_from_json(keysetup.sealed_share_to_json(sealed[1])) == sealed[1]
    path = tmp_path / "share.json"
    keysetup.save_share(path, key_epoch, shares[0])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keysetup.load_share(path, key_epoch).scalar == shares[0].scalar


def test_epoch_document_must_be_signed_by_the_expected_administrator():
    key_epoch, _, _, _ = dealt(2, 3)
    admin, impostor = PartyKeys.generate("riec-admin"), PartyKeys.generate("riec-admin")
    forged = keysetup.sign_key_epoch(key_epoch, impostor)  # same name, other key
    with pytest.raises(InvalidSignature):
        keysetup.verify_key_epoch(forged, "riec-admin", admin.public())
    signed_by_other = keysetup.sign_key_epoch(key_epoch, PartyKeys.generate("gemeente"))
    with pytest.raises(InvalidSignature):
        keysetup.verify_key_epoch(signed_by_other, "riec-admin", admin.public())


def test_tampered_epoch_document_is_refused():
    key_epoch, _, _, _ = dealt(2, 3)
    admin = PartyKeys.generate("riec-admin")
    doc = json.loads(keysetup.sign_key_epoch(key_epoch, admin))
    body = bytearray(base64.b64decode(doc["body"]))
    body[-5] ^= 1
    doc["body"] = base64.b64encode(bytes(body)).decode()
    with pytest.raises(InvalidSignature):
        keysetup.verify_key_epoch(json.dumps(doc).encode(), "riec-admin", admin.public())
    for garbage in (b"[", b'{"unknown_field": 1}', b"\xff\xfe"):
        with pytest.raises((ConfigurationError, InvalidSignature)):
            keysetup.verify_key_epoch(garbage, "riec-admin", admin.public())


def test_deal_refuses_one_party_or_key_in_two_seats():
    a, b = PartyKeys.generate("politie"), PartyKeys.generate("riec")
    with pytest.raises(InvalidInput):
        keysetup.deal(
            "c", 1, 2, [("politie", a.public().x25519), ("riec", a.public().x25519)], now=NOW
        )
    with pytest.raises(InvalidInput):
        keysetup.deal(
            "c", 1, 2, [("politie", a.public().x25519), ("politie", b.public().x25519)], now=NOW
        )
    with pytest.raises(InvalidInput) as info:
        keysetup.deal(
            "c", 1, 1, [("politie", a.public().x25519), ("riec", b.public().x25519)], now=NOW
        )
    assert info.value.field == "threshold"
    with pytest.raises(InvalidInput) as info:
        keysetup.deal("c", 1, 2, [("politie", bytes(32)), ("riec", b.public().x25519)], now=NOW)
    assert info.value.field == "holders[1].x25519"
