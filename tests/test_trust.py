"""The signed covenant and the TUF-style trust rules for accepting a new version.

Each refusal is a ``CovenantRejected`` whose ``reason`` names the rule, and a
refused version leaves the held one untouched. The clock is never read: every
check gets ``now`` (a fixed ``NOW``, moved by passing other values).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from samenloop.node.tokens import keysetup
from samenloop.policies import certs, crypto
from samenloop.policies.covenant import (
    BrokerInfo,
    Covenant,
    KeyHolderSeat,
    OprfKeyEpoch,
    Party,
    Role,
    covenant_to_toml,
    deal_attribute_key,
    seal_attribute_key_for,
    with_new_attribute_key,
)
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    CovenantRejected,
    InvalidInput,
    MessageTooLarge,
)
from samenloop.policies.policy import Signer, Signing, example_policy
from samenloop.policies.trust import (
    MAX_COVENANT_BYTES,
    MAX_SIGNATURES,
    CovenantSignature,
    HeldCovenant,
    SignedCovenant,
    TrustState,
    check_validity,
    load_signed_covenant,
    sign_covenant,
    verify_self_signed,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PARTIES = (
    ("gemeente-tilburg", Role.GEMEENTE),
    ("politie", Role.POLITIE),
    ("riec", Role.RIEC),
)


# --- building and signing covenants ------------------------------------------------


@functools.cache
def _keys(name: str) -> PartyKeys:
    """One key pair per name for the whole module: signers keep their keys across versions."""
    return PartyKeys.generate(name)


def _signing(threshold: int, *names: str) -> Signing:
    return Signing(
        threshold,
        tuple(Signer(n, f"Beheerder {n}", _keys(n).public().ed25519) for n in names),
        _keys("timestamp").public().ed25519,
    )


@functools.cache
def _v1() -> Covenant:
    """Version 1: valid from a day before NOW for 90 days, signers A and B, both must sign."""
    holders = [p for p, _ in PARTIES[:2]]
    epoch, _ = keysetup.deal(
        "riec-test", 1, 2, [(h, _keys(h).public().x25519) for h in holders], now=NOW
    )
    return Covenant(
        id="riec-test",
        version=1,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=90),
        signing=_signing(2, "beheer-a", "beheer-b"),
        policy=example_policy(),
        broker=BrokerInfo("broker", "localhost:7443", _keys("broker").public().ed25519),
        parties=deal_attribute_key(
            "riec-test",
            1,
            (Party(p, f"Partij {p}", role, _keys(p).public()) for p, role in PARTIES),
        ),
        key_epoch=OprfKeyEpoch(
            epoch=1,
            threshold=2,
            group_public_key=epoch.group_public_key,
            holders=tuple(KeyHolderSeat(h.index, h.party, h.commitment) for h in epoch.holders),
            created_at=NOW,
            retire_after=NOW + timedelta(days=365),
        ),
        ca_certificate=certs.CertificateAuthority.create("riec-test", now=NOW).cert_pem,
        attribute_key_version=1,
    )


def _sign(covenant: Covenant, *signers: str) -> SignedCovenant:
    signed = SignedCovenant.of(covenant)
    for name in signers:
        signed = sign_covenant(signed, name, _keys(name).signing_key)
    return signed


def _raw_signature(name: str, body: bytes) -> CovenantSignature:
    """A signature made without sign_covenant's checks (an attacker's, or over odd bytes)."""
    return CovenantSignature(
        name, crypto.sign(_keys(name).signing_key, SignatureContext.COVENANT, body)
    )


def _raw_sign(body: bytes, *signers: str) -> SignedCovenant:
    return SignedCovenant(body, tuple(_raw_signature(n, body) for n in signers))


def _v2(**changes: object) -> Covenant:
    return replace(_v1(), version=2, **changes)


def _other_covenant() -> Covenant:
    """Version 2 of another covenant (its attribute key dealt for its own id)."""
    return _v2(
        id="ander-convenant", parties=deal_attribute_key("ander-convenant", 1, _v1().parties)
    )


def _state() -> TrustState:
    return TrustState(_sign(_v1(), "beheer-a", "beheer-b"))


def _rejected(state: TrustState, signed: SignedCovenant, reason: str, *, now: datetime = NOW):
    """Assert ``update`` refuses ``signed`` for ``reason`` and leaves the held version as it was."""
    before, before_signed = state.covenant, state.signed
    with pytest.raises(CovenantRejected) as caught:
        state.update(signed, now=now)
    assert caught.value.reason == reason, caught.value
    assert caught.value.field == "covenant"
    assert state.covenant == before
    assert state.signed == before_signed
    return caught.value


def _tamper(body: bytes) -> bytes:
    """The same covenant bytes with one byte of a party's name changed: still canonical."""
    marker = b"Partij gemeente-tilburg"
    assert body.count(marker) == 1
    return body.replace(marker, b"Partij gemeente-tilburh")


# --- canonical bytes ----------------------------------------------------------------


def test_a_signed_covenant_carries_its_canonical_bytes() -> None:
    signed = _sign(_v1(), "beheer-a", "beheer-b")
    assert signed.body == covenant_to_toml(_v1())
    assert signed.unverified() == _v1()
    assert [s.signer for s in signed.signatures] == ["beheer-a", "beheer-b"]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        pytest.param(lambda b: b + b"# a comment\n", "covenant.not_canonical", id="comment"),
        pytest.param(
            lambda b: b.replace(b"version = 1\n", b"version  = 1\n", 1),
            "covenant.not_canonical",
            id="extra-space",
        ),
        pytest.param(lambda b: b.replace(b"\n", b"\r\n"), "covenant.not_canonical", id="crlf"),
        pytest.param(lambda b: b"\xff\x00 garbage", "covenant.malformed", id="garbage"),
        pytest.param(lambda b: b'kind = "iets anders"\n', "covenant.malformed", id="other-toml"),
        pytest.param(lambda b: b[: len(b) // 2], "covenant.malformed", id="truncated"),
    ],
)
def test_bytes_must_be_the_canonical_covenant(edit, reason: str) -> None:
    body = edit(covenant_to_toml(_v1()))
    with pytest.raises(CovenantRejected) as caught:
        verify_self_signed(_raw_sign(body, "beheer-a", "beheer-b"))
    assert caught.value.reason == reason
    with pytest.raises(CovenantRejected) as caught:
        sign_covenant(SignedCovenant(body), "beheer-a", _keys("beheer-a").signing_key)
    assert caught.value.reason == reason


def test_a_not_canonical_successor_is_rejected_even_with_valid_signatures() -> None:
    state = _state()
    body = covenant_to_toml(_v2()) + b"\n"
    _rejected(state, _raw_sign(body, "beheer-a", "beheer-b"), "covenant.not_canonical")


# --- signatures on the first (self-signed) version -----------------------------------


def test_signed_by_the_threshold_verifies() -> None:
    assert verify_self_signed(_sign(_v1(), "beheer-a", "beheer-b")) == _v1()
    assert verify_self_signed(_sign(_v1(), "beheer-b", "beheer-a"), now=NOW) == _v1()


def _moved(signed: SignedCovenant) -> SignedCovenant:
    a, b = signed.signatures
    return replace(
        signed, signatures=(replace(a, signer="beheer-b"), replace(b, signer="beheer-a"))
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: _sign(_v1(), "beheer-a"), "covenant.under_signed", id="one-of-two"),
        pytest.param(lambda: _sign(_v1()), "covenant.under_signed", id="unsigned"),
        pytest.param(
            lambda: _sign(_v1(), "beheer-a").with_signature(
                _raw_signature("mallory", covenant_to_toml(_v1()))
            ),
            "covenant.unknown_signer",
            id="unknown-signer",
        ),
        pytest.param(
            lambda: _sign(_v1(), "beheer-a", "beheer-b").with_signature(
                _raw_signature("mallory", covenant_to_toml(_v1()))
            ),
            "covenant.unknown_signer",
            id="unknown-signer-besides-threshold",
        ),
        pytest.param(
            lambda: (lambda s: replace(s, body=_tamper(s.body)))(
                _sign(_v1(), "beheer-a", "beheer-b")
            ),
            "covenant.bad_signature",
            id="one-byte-changed-after-signing",
        ),
        pytest.param(
            lambda: _moved(_sign(_v1(), "beheer-a", "beheer-b")),
            "covenant.bad_signature",
            id="signatures-moved-between-signers",
        ),
        pytest.param(
            lambda: SignedCovenant(
                covenant_to_toml(_v1()),
                (replace(_raw_signature("beheer-a", covenant_to_toml(_v1())), signer="beheer-b"),),
            ),
            "covenant.bad_signature",
            id="signature-relabelled",
        ),
        pytest.param(
            lambda: SignedCovenant(
                covenant_to_toml(_v1()),
                (
                    CovenantSignature(
                        "beheer-a",
                        crypto.sign(
                            _keys("beheer-a").signing_key,
                            SignatureContext.HIT_NOTICE,
                            covenant_to_toml(_v1()),
                        ),
                    ),
                    _raw_signature("beheer-b", covenant_to_toml(_v1())),
                ),
            ),
            "covenant.bad_signature",
            id="signature-under-another-context",
        ),
        pytest.param(
            lambda: SignedCovenant(
                covenant_to_toml(_v1()),
                (
                    _raw_signature("beheer-a", covenant_to_toml(_v1())),
                    _raw_signature("beheer-a", covenant_to_toml(_v1())),
                ),
            ),
            "covenant.malformed",
            id="same-signer-twice",
        ),
    ],
)
def test_self_signed_refusals(make, reason: str) -> None:
    with pytest.raises(CovenantRejected) as caught:
        verify_self_signed(make())
    assert caught.value.reason == reason
    with pytest.raises(CovenantRejected) as caught:
        TrustState(make())
    assert caught.value.reason == reason


def test_sign_covenant_refuses_a_signer_not_in_the_covenant() -> None:
    with pytest.raises(InvalidInput) as caught:
        sign_covenant(SignedCovenant.of(_v1()), "mallory", _keys("mallory").signing_key)
    assert caught.value.field == "signer"


def test_sign_covenant_refuses_a_key_that_is_not_the_listed_key() -> None:
    with pytest.raises(InvalidInput) as caught:
        sign_covenant(SignedCovenant.of(_v1()), "beheer-a", _keys("beheer-b").signing_key)
    assert caught.value.field == "key"


def test_signing_again_replaces_the_signers_earlier_signature() -> None:
    signed = _sign(_v1(), "beheer-a", "beheer-b", "beheer-a")
    assert sorted(s.signer for s in signed.signatures) == ["beheer-a", "beheer-b"]
    assert verify_self_signed(signed) == _v1()


# --- validity period ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        pytest.param(
            NOW - timedelta(days=1, microseconds=1), "covenant.not_yet_valid", id="before"
        ),
        pytest.param(NOW - timedelta(days=1), None, id="at-valid-from"),
        pytest.param(NOW, None, id="now"),
        pytest.param(NOW + timedelta(days=90, microseconds=-1), None, id="last-moment"),
        pytest.param(NOW + timedelta(days=90), "covenant.expired", id="at-valid-until"),
    ],
)
def test_check_validity(now: datetime, reason: str | None) -> None:
    if reason is None:
        check_validity(_v1(), now)
        assert _state().check_in_force(now) == _v1()
        assert verify_self_signed(_sign(_v1(), "beheer-a", "beheer-b"), now=now) == _v1()
        return
    with pytest.raises(CovenantRejected) as caught:
        check_validity(_v1(), now)
    assert caught.value.reason == reason
    with pytest.raises(CovenantRejected) as caught:
        _state().check_in_force(now)
    assert caught.value.reason == reason


# --- TrustState.update ---------------------------------------------------------------


def test_a_newer_version_signed_by_the_threshold_is_accepted() -> None:
    state = _state()
    signed = _sign(_v2(), "beheer-a", "beheer-b")
    update = state.update(signed, now=NOW)
    assert update.changed
    assert update.previous == _v1()
    assert update.covenant == _v2()
    assert state.covenant == _v2()
    assert state.signed == signed

    again = state.update(signed, now=NOW)
    assert not again.changed
    assert again.covenant == _v2()
    assert state.signed == signed


def test_versions_may_skip_numbers() -> None:
    state = _state()
    assert state.update(_sign(replace(_v1(), version=9), "beheer-a", "beheer-b"), now=NOW).changed
    assert state.covenant.version == 9


def test_the_held_bytes_with_other_signatures_are_not_a_change() -> None:
    state = _state()
    signed = _sign(_v1(), "beheer-b", "beheer-a")
    assert state.verify(signed, now=NOW) is None
    assert not state.update(signed, now=NOW).changed


def test_an_older_version_after_a_newer_one_is_a_rollback() -> None:
    state = _state()
    state.update(_sign(_v2(), "beheer-a", "beheer-b"), now=NOW)
    _rejected(state, _sign(_v1(), "beheer-a", "beheer-b"), "covenant.rollback")
    assert state.covenant.version == 2


def test_the_same_version_with_another_body_is_a_rollback() -> None:
    state = _state()
    state.update(_sign(_v2(), "beheer-a", "beheer-b"), now=NOW)
    other = _v2(valid_until=NOW + timedelta(days=30))
    _rejected(state, _sign(other, "beheer-a", "beheer-b"), "covenant.rollback")
    _rejected(
        state,
        _sign(replace(_v1(), valid_until=NOW + timedelta(days=30)), "beheer-a", "beheer-b"),
        "covenant.rollback",
    )


def _replace_party(covenant: Covenant, index: int, **changes: object) -> tuple[Party, ...]:
    parties = list(covenant.parties)
    parties[index] = replace(parties[index], **changes)
    return tuple(parties)


def _v1_with_another_box() -> Covenant:
    """Version 2 with the riec's box resealed: another key under the same version."""
    other = deal_attribute_key("riec-test", 1, _v1().parties[2:])[0].sealed_attribute_key
    return _v2(parties=_replace_party(_v1(), 2, sealed_attribute_key=other))


def _v1_with_a_new_riec_key() -> Covenant:
    """Version 2 where the riec has a new key pair but the attribute key version stays."""
    new = PartyKeys.generate("riec").public()
    key = _v1().attribute_key_for(_keys("riec"))
    box = seal_attribute_key_for(new, key)
    return _v2(parties=_replace_party(_v1(), 2, keys=new, sealed_attribute_key=box))


@pytest.mark.parametrize(
    ("make", "reason", "field"),
    [
        pytest.param(
            lambda: _v2(parties=_v1().parties[:2]),
            "covenant.attribute_key_kept",
            "attribute_key_version",
            id="removal-keeps-the-key",
        ),
        pytest.param(
            _v1_with_a_new_riec_key,
            "covenant.attribute_key_kept",
            "attribute_key_version",
            id="new-x25519-keeps-the-key",
        ),
        pytest.param(
            _v1_with_another_box,
            "covenant.attribute_key_changed",
            "parties[2].sealed_attribute_key",
            id="another-key-under-the-same-version",
        ),
    ],
)
def test_a_successor_must_renew_the_attribute_key_when_a_party_leaves(
    make: Callable[[], Covenant], reason: str, field: str
) -> None:
    state = _state()
    with pytest.raises(CovenantRejected) as caught:
        state.update(_sign(make(), "beheer-a", "beheer-b"), now=NOW)
    assert (caught.value.reason, caught.value.field) == (reason, field), caught.value
    assert state.covenant == _v1()


def test_the_attribute_key_version_never_goes_back() -> None:
    state = _state()
    v2 = with_new_attribute_key(_v1(), version=2)
    assert state.update(_sign(v2, "beheer-a", "beheer-b"), now=NOW).changed
    back = replace(
        v2,
        version=3,
        attribute_key_version=1,
        parties=deal_attribute_key("riec-test", 1, v2.parties),
    )
    with pytest.raises(CovenantRejected) as caught:
        state.update(_sign(back, "beheer-a", "beheer-b"), now=NOW)
    assert (caught.value.reason, caught.value.field) == (
        "covenant.attribute_key_rollback",
        "attribute_key_version",
    )
    assert state.covenant == v2


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: with_new_attribute_key(_v1(), _v1().parties[:2], version=2),
            id="removal-with-a-new-key",
        ),
        pytest.param(lambda: with_new_attribute_key(_v1(), version=2), id="rotation"),
        pytest.param(
            lambda: _v2(
                parties=(
                    *_v1().parties,
                    Party(
                        "woco",
                        "Woningcorporatie",
                        Role.WONINGCORPORATIE,
                        _keys("woco").public(),
                        seal_attribute_key_for(
                            _keys("woco").public(), _v1().attribute_key_for(_keys("riec"))
                        ),
                    ),
                )
            ),
            id="a-party-added-under-the-same-version",
        ),
        pytest.param(lambda: _v2(), id="no-party-change"),
    ],
)
def test_successors_that_keep_the_attribute_key_rules(make: Callable[[], Covenant]) -> None:
    state = _state()
    assert state.update(_sign(make(), "beheer-a", "beheer-b"), now=NOW).changed


def test_another_covenant_is_refused() -> None:
    other = _v2(
        id="ander-convenant", parties=deal_attribute_key("ander-convenant", 1, _v1().parties)
    )
    _rejected(_state(), _sign(other, "beheer-a", "beheer-b"), "covenant.wrong_id")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param(
            {"valid_from": NOW - timedelta(days=30), "valid_until": NOW - timedelta(days=1)},
            "covenant.expired",
            id="expired",
        ),
        pytest.param({"valid_until": NOW}, "covenant.expired", id="expires-at-now"),
        pytest.param(
            {"valid_from": NOW + timedelta(days=1)}, "covenant.not_yet_valid", id="not-yet-valid"
        ),
    ],
)
def test_a_successor_must_be_valid_now(changes: dict[str, datetime], reason: str) -> None:
    _rejected(_state(), _sign(_v2(**changes), "beheer-a", "beheer-b"), reason)


def test_moving_the_clock_makes_a_future_version_acceptable() -> None:
    state = _state()
    signed = _sign(_v2(valid_from=NOW + timedelta(days=1)), "beheer-a", "beheer-b")
    _rejected(state, signed, "covenant.not_yet_valid", now=NOW)
    _rejected(state, signed, "covenant.not_yet_valid", now=NOW + timedelta(hours=23))
    assert state.update(signed, now=NOW + timedelta(days=1)).changed
    assert state.covenant.version == 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: _sign(_v2(), "beheer-a"), "covenant.under_signed", id="one-of-two"),
        pytest.param(lambda: _sign(_v2()), "covenant.under_signed", id="unsigned"),
        pytest.param(
            lambda: _sign(_v2(), "beheer-a", "beheer-b").with_signature(
                _raw_signature("mallory", covenant_to_toml(_v2()))
            ),
            "covenant.unknown_signer",
            id="unknown-signer",
        ),
        pytest.param(
            lambda: (lambda s: replace(s, body=_tamper(s.body)))(
                _sign(_v2(), "beheer-a", "beheer-b")
            ),
            "covenant.bad_signature",
            id="one-byte-changed",
        ),
        pytest.param(
            lambda: (lambda s: replace(s, body=b"\xff" + s.body[1:]))(
                _sign(_v2(), "beheer-a", "beheer-b")
            ),
            "covenant.bad_signature",
            id="signatures-checked-before-parsing",
        ),
        pytest.param(
            lambda: _moved(_sign(_v2(), "beheer-a", "beheer-b")),
            "covenant.bad_signature",
            id="signatures-moved",
        ),
    ],
)
def test_update_signature_refusals(make, reason: str) -> None:
    _rejected(_state(), make(), reason)


# Replacing the signer set: the old signers must authorise the change and the new ones
# must show that they hold their keys.


def test_new_signers_need_the_old_threshold_and_their_own() -> None:
    new_signers = _v2(signing=_signing(2, "beheer-c", "beheer-d"))
    state = _state()
    _rejected(state, _sign(new_signers, "beheer-c", "beheer-d"), "covenant.under_signed")
    only_old = _raw_sign(covenant_to_toml(new_signers), "beheer-a", "beheer-b")
    _rejected(state, only_old, "covenant.under_signed")
    half = _raw_sign(covenant_to_toml(new_signers), "beheer-a", "beheer-b", "beheer-c")
    _rejected(state, half, "covenant.under_signed")

    both = _raw_sign(covenant_to_toml(new_signers), "beheer-a", "beheer-b", "beheer-c", "beheer-d")
    assert state.update(both, now=NOW).changed
    assert state.covenant.signing == new_signers.signing

    # From now on the old signers count for nothing: they cannot publish version 3 ...
    v3 = replace(new_signers, version=3)
    _rejected(
        state, _raw_sign(covenant_to_toml(v3), "beheer-a", "beheer-b"), "covenant.under_signed"
    )
    # ... not even with the new signers' threshold beside them (they are unknown now) ...
    _rejected(
        state,
        _raw_sign(covenant_to_toml(v3), "beheer-a", "beheer-c", "beheer-d"),
        "covenant.unknown_signer",
    )
    # ... and the new ones can.
    assert state.update(_sign(v3, "beheer-c", "beheer-d"), now=NOW).changed


def test_adding_a_signer_needs_the_old_threshold() -> None:
    grown = _v2(signing=_signing(2, "beheer-a", "beheer-b", "beheer-c"))
    state = _state()
    # Two of the new set, but only one of the old: under-signed for the held version.
    _rejected(state, _sign(grown, "beheer-a", "beheer-c"), "covenant.under_signed")
    assert state.update(_sign(grown, "beheer-a", "beheer-b"), now=NOW).changed
    # Now any two of the three will do.
    assert state.update(_sign(replace(grown, version=3), "beheer-b", "beheer-c"), now=NOW).changed


def test_raising_the_threshold_binds_the_new_version() -> None:
    three = _v2(signing=_signing(3, "beheer-a", "beheer-b", "beheer-c"))
    state = _state()
    _rejected(state, _sign(three, "beheer-a", "beheer-b"), "covenant.under_signed")
    assert state.update(_sign(three, "beheer-a", "beheer-b", "beheer-c"), now=NOW).changed
    _rejected(
        state, _sign(replace(three, version=3), "beheer-a", "beheer-b"), "covenant.under_signed"
    )


def test_verify_checks_without_accepting() -> None:
    state = _state()
    signed = _sign(_v2(), "beheer-a", "beheer-b")
    assert state.verify(signed, now=NOW) == _v2()
    assert state.covenant == _v1()
    with pytest.raises(CovenantRejected) as caught:
        state.verify(_sign(_v2(), "beheer-a"), now=NOW)
    assert caught.value.reason == "covenant.under_signed"


# --- HeldCovenant --------------------------------------------------------------------


def test_held_covenant_updates_and_refuses_like_its_state() -> None:
    held = HeldCovenant(_state())
    assert held() == _v1()
    signed = _sign(_v2(), "beheer-a", "beheer-b")
    assert held.verify(signed, now=NOW) == _v2()
    assert held() == _v1()
    assert held.update(signed, now=NOW).changed
    assert held() == _v2()
    assert held.signed == signed
    with pytest.raises(CovenantRejected) as caught:
        held.update(_sign(_v1(), "beheer-a", "beheer-b"), now=NOW)
    assert caught.value.reason == "covenant.rollback"
    assert held() == _v2()


def test_replay_accepts_an_expired_intermediate_version() -> None:
    """A daemon restarting re-applies every version it accepted, in order; one that has
    expired since is still a valid step (it was checked when it was accepted)."""
    v2 = _v2(valid_from=NOW - timedelta(days=30), valid_until=NOW - timedelta(days=1))
    v3 = replace(_v1(), version=3)
    signed_v2 = _sign(v2, "beheer-a", "beheer-b")
    held = HeldCovenant(_state())
    with pytest.raises(CovenantRejected) as caught:
        held.update(signed_v2, now=NOW)
    assert caught.value.reason == "covenant.expired"
    assert held() == _v1()

    assert held.replay(signed_v2).changed
    assert held() == v2
    assert not held.replay(signed_v2).changed  # replaying the held version changes nothing
    assert held.update(_sign(v3, "beheer-a", "beheer-b"), now=NOW).changed
    assert held().version == 3


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda: _sign(
                _v2(valid_until=NOW - timedelta(days=1), valid_from=NOW - timedelta(days=9)),
                "beheer-a",
            ),
            "covenant.under_signed",
            id="under-signed",
        ),
        pytest.param(
            lambda: replace(
                _sign(_v2(), "beheer-a", "beheer-b"),
                body=_tamper(covenant_to_toml(_v2())),
            ),
            "covenant.bad_signature",
            id="tampered",
        ),
        pytest.param(
            lambda: _sign(_other_covenant(), "beheer-a", "beheer-b"),
            "covenant.wrong_id",
            id="wrong-id",
        ),
    ],
)
def test_replay_still_checks_signatures(make, reason: str) -> None:
    held = HeldCovenant(_state())
    with pytest.raises(CovenantRejected) as caught:
        held.replay(make())
    assert caught.value.reason == reason
    assert held() == _v1()


def test_replay_still_checks_the_order() -> None:
    held = HeldCovenant(_state())
    held.replay(_sign(replace(_v1(), version=3), "beheer-a", "beheer-b"))
    with pytest.raises(CovenantRejected) as caught:
        held.replay(_sign(_v2(), "beheer-a", "beheer-b"))
    assert caught.value.reason == "covenant.rollback"
    assert held().version == 3


# --- file and wire forms -------------------------------------------------------------


def test_json_round_trip(tmp_path: Path) -> None:
    signed = _sign(_v1(), "beheer-a", "beheer-b")
    data = signed.to_json()
    doc = json.loads(data)
    assert doc["kind"] == "samenloop.signed-covenant.v1"
    assert doc["covenant"].encode() == signed.body  # readable TOML, not base64
    assert SignedCovenant.from_json(data, source="covenant.json") == signed
    path = tmp_path / "covenant.json"
    path.write_bytes(data)
    assert load_signed_covenant(path) == signed
    assert verify_self_signed(load_signed_covenant(path)) == _v1()


def test_proto_round_trip() -> None:
    signed = _sign(_v1(), "beheer-a", "beheer-b")
    wire = signed.to_proto().SerializeToString()
    parsed = type(signed.to_proto()).FromString(wire)
    assert SignedCovenant.from_proto(parsed) == signed
    assert verify_self_signed(SignedCovenant.from_proto(parsed)) == _v1()


def _doc(**changes: object) -> bytes:
    doc = json.loads(_sign(_v1(), "beheer-a").to_json())
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param(b"\x00\xff not json", "signed.json", id="not-json"),
        pytest.param(b"[1, 2]", "signed.json", id="not-an-object"),
        pytest.param(b'{"kind": "samenloop.covenant.v1"}', "signed.json", id="wrong-kind"),
        pytest.param(_doc(covenant=42), "signed.json: covenant", id="covenant-not-text"),
        pytest.param(_doc(signatures={}), "signed.json: signatures", id="signatures-not-a-list"),
        pytest.param(
            _doc(signatures=["x"]), "signed.json: signatures[0]", id="signature-not-object"
        ),
        pytest.param(
            _doc(signatures=[{"signer": "beheer-a", "signature": "AAAA"}]),
            "signed.json: signatures[0]",
            id="signature-too-short",
        ),
        pytest.param(
            _doc(signatures=[{"signer": "beheer-a", "signature": "not base64!"}]),
            "signed.json: signatures[0]",
            id="signature-not-base64",
        ),
        pytest.param(
            _doc(signatures=[{"signature": "A" * 86 + "=="}]),
            "signed.json: signatures[0]",
            id="signature-without-signer",
        ),
        pytest.param(_doc(covenant=""), "body", id="empty-covenant"),
    ],
)
def test_from_json_rejects_garbage_naming_the_source(data: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        SignedCovenant.from_json(data, source="signed.json")
    assert caught.value.field == field


def test_load_signed_covenant_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_signed_covenant(tmp_path / "missing.json")
    assert caught.value.field == str(tmp_path / "missing.json")


def test_oversized_envelopes_are_refused() -> None:
    with pytest.raises(MessageTooLarge) as caught:
        SignedCovenant(b"x" * (MAX_COVENANT_BYTES + 1))
    assert caught.value.field == "body"
    assert SignedCovenant(b"x" * MAX_COVENANT_BYTES).body  # the limit itself is allowed
    with pytest.raises(MessageTooLarge) as caught:
        SignedCovenant.from_json(_doc(covenant="x" * (MAX_COVENANT_BYTES + 1)), source="big.json")
    assert caught.value.field == "body"
    signature = CovenantSignature("beheer-a", bytes(64))
    with pytest.raises(MessageTooLarge) as caught:
        SignedCovenant(b"x", (signature,) * (MAX_SIGNATURES + 1))
    assert caught.value.field == "signatures"
    big = _sign(_v1(), "beheer-a").to_proto()
    big.body = b"x" * (MAX_COVENANT_BYTES + 1)
    with pytest.raises(MessageTooLarge):
        SignedCovenant.from_proto(big)
