"""Covenant timestamps and freshness (TUF's timestamp role for the covenant), sans IO.

A table of scenarios, one line each, as python-tuf tests its trusted metadata
set: what a received timestamp means for a party that holds a given version,
and whether it is fresh afterwards. The clock is never read: every check gets
``now`` (a fixed ``NOW``, moved by passing other values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nacl.signing
import pytest

from samenloop.node.provision import PartySpec, provision
from samenloop.policies import crypto
from samenloop.policies.covenant import Covenant, Role, covenant_to_toml
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    CovenantStale,
    InvalidInput,
    MessageTooLarge,
    TimestampRejected,
)
from samenloop.policies.freshness import (
    TIMESTAMP_SIGNER,
    CovenantTimestamp,
    FreshnessState,
    Observed,
    covenant_digest,
    issue_timestamp,
    verify_current,
)
from samenloop.v1 import common_pb2

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SPECS = (
    PartySpec("gemeente", "Gemeente", Role.GEMEENTE),
    PartySpec("politie", "Politie", Role.POLITIE),
    PartySpec("riec", "RIEC", Role.RIEC),
)


@dataclasses.dataclass(frozen=True)
class World:
    """A covenant (version 1, its bytes), the timestamp key, and version 2 of it."""

    v1: Covenant
    key: nacl.signing.SigningKey

    @property
    def body(self) -> bytes:
        return covenant_to_toml(self.v1)

    @property
    def v2(self) -> Covenant:
        return dataclasses.replace(self.v1, version=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("freshness")
    provisioned = provision(root, "riec-fresh", SPECS, ["gemeente", "politie"], 2, now=NOW)
    return World(provisioned.covenant, PartyKeys.load(provisioned.timestamp_key).signing_key)


def stamp(
    world: World,
    *,
    issued: datetime = NOW,
    lifetime: timedelta = DAY,
    version: int | None = None,
    covenant_id: str | None = None,
    digest: bytes | None = None,
    key: nacl.signing.SigningKey | None = None,
    context: str = SignatureContext.COVENANT_TIMESTAMP.value,
    signer: str = TIMESTAMP_SIGNER,
) -> CovenantTimestamp:
    """A timestamp of ``world``'s version 1 as the timestamp job signs it, with any field
    changed as a faulty job or a forger would."""
    body = common_pb2.CovenantTimestamp(
        covenant_id=covenant_id or world.v1.id,
        version=version or world.v1.version,
        covenant_sha256=covenant_digest(world.body) if digest is None else digest,
    )
    body.issued_at.FromDatetime(issued)
    body.expires_at.FromDatetime(issued + lifetime)
    encoded = body.SerializeToString()
    signing = key or world.key
    signed = common_pb2.Signed(
        body=encoded,
        signer=signer,
        context=context,
        signature=crypto.sign(signing, SignatureContext.COVENANT_TIMESTAMP, encoded),
    )
    return CovenantTimestamp.parse(signed.SerializeToString())


OTHER_KEY = PartyKeys.generate("someone").signing_key

# (what, how to make the timestamp, now, what observe says or the refusal's reason, fresh)
Make = Callable[[World], CovenantTimestamp]
SECOND = timedelta(seconds=1)
SCENARIOS: list[tuple[str, Make, datetime, str, bool]] = [
    ("fresh", lambda w: stamp(w), NOW, "newer", True),
    ("fresh a second before expiry", lambda w: stamp(w), NOW + DAY - SECOND, "newer", True),
    ("expired: kept, but stale", lambda w: stamp(w, issued=NOW - 2 * DAY), NOW, "newer", False),
    ("expires exactly now", lambda w: stamp(w, issued=NOW - DAY), NOW, "newer", False),
    ("wrong key", lambda w: stamp(w, key=OTHER_KEY), NOW, "timestamp.bad_signature", False),
    ("wrong digest", lambda w: stamp(w, digest=bytes(32)), NOW, "timestamp.wrong_digest", False),
    ("older version", lambda w: stamp(w, version=1), NOW, "older", False),
    ("newer version announced", lambda w: stamp(w, version=3), NOW, "announces", False),
    (
        "another covenant",
        lambda w: stamp(w, covenant_id="riec-elders"),
        NOW,
        "timestamp.wrong_covenant",
        False,
    ),
    (
        "longer than the freshness period",
        lambda w: stamp(w, lifetime=DAY + SECOND),
        NOW,
        "timestamp.too_long",
        False,
    ),
    (
        "expires before it is issued",
        lambda w: stamp(w, lifetime=-SECOND),
        NOW,
        "timestamp.too_long",
        False,
    ),
    (
        "expires as it is issued",
        lambda w: stamp(w, lifetime=timedelta(0)),
        NOW,
        "timestamp.too_long",
        False,
    ),
    (
        "issued beyond the clock skew",
        lambda w: stamp(w, issued=NOW + 61 * SECOND),
        NOW,
        "timestamp.issued_in_future",
        False,
    ),
    (
        "issued within the clock skew",
        lambda w: stamp(w, issued=NOW + 60 * SECOND),
        NOW,
        "newer",
        True,
    ),
    ("another context", lambda w: stamp(w, context="covenant"), NOW, "timestamp.malformed", False),
    ("another signer name", lambda w: stamp(w, signer="broker"), NOW, "timestamp.malformed", False),
    ("a short digest", lambda w: stamp(w, digest=bytes(31)), NOW, "timestamp.malformed", False),
]


@pytest.mark.parametrize(
    ("make", "now", "outcome", "fresh"),
    [
        pytest.param(make, now, outcome, fresh, id=what)
        for what, make, now, outcome, fresh in SCENARIOS
    ],
)
def test_scenarios(world: World, make: Make, now: datetime, outcome: str, fresh: bool) -> None:
    """A party holding version 1 observes one timestamp (for "older", a party holding
    version 2 observes one of version 1); a malformed one is refused as it is parsed."""
    state = FreshnessState()
    held = world.v2 if outcome == "older" else world.v1
    body = covenant_to_toml(held)
    if outcome.startswith("timestamp."):
        with pytest.raises(TimestampRejected) as caught:
            state.observe(make(world), held, body, now=now)
        assert caught.value.reason == outcome, caught.value.message
        assert (caught.value.field or "").startswith("covenant_timestamp")
        assert state.newest is None  # a refused timestamp changes nothing
    else:
        made = make(world)
        observed = state.observe(made, held, body, now=now)
        assert observed.value == outcome
        assert (state.newest is made) == (observed is Observed.NEWER)
    assert state.check(held, body, now=now).fresh is fresh


def test_a_garbage_message_is_malformed() -> None:
    for data in (b"\xff\xff", common_pb2.Signed(context="covenant-timestamp").SerializeToString()):
        with pytest.raises(TimestampRejected) as caught:
            CovenantTimestamp.parse(data)
        assert caught.value.reason == "timestamp.malformed"
    with pytest.raises(MessageTooLarge):
        CovenantTimestamp.parse(b"\x00" * 2000)


def test_the_newest_wins_and_a_repeat_or_an_older_one_changes_nothing(world: World) -> None:
    state = FreshnessState()
    first, later = stamp(world, issued=NOW - timedelta(hours=1)), stamp(world)
    assert state.observe(later, world.v1, world.body, now=NOW) is Observed.NEWER
    assert state.observe(first, world.v1, world.body, now=NOW) is Observed.KNOWN
    assert state.observe(later, world.v1, world.body, now=NOW) is Observed.KNOWN
    assert state.newest is later
    # A later one that expires sooner still supersedes: the timestamp job's word is its newest.
    short = stamp(world, issued=NOW + timedelta(minutes=1), lifetime=timedelta(minutes=1))
    assert state.observe(short, world.v1, world.body, now=NOW) is Observed.NEWER
    assert not state.check(world.v1, world.body, now=NOW + timedelta(minutes=2)).fresh


def test_a_new_version_is_stale_until_its_own_timestamp_arrives(world: World) -> None:
    state = FreshnessState()
    state.observe(stamp(world), world.v1, world.body, now=NOW)
    v2, body2 = world.v2, covenant_to_toml(world.v2)
    freshness = state.check(v2, body2, now=NOW)
    assert not freshness.fresh
    assert freshness.until is None
    assert "no covenant timestamp for version 2" in freshness.reason
    with pytest.raises(CovenantStale) as caught:
        state.require(v2, body2, now=NOW)
    assert caught.value.reason == "covenant.stale"
    assert caught.value.field == "covenant"
    announced = stamp(world, version=2, digest=covenant_digest(body2))
    assert state.observe(announced, world.v1, world.body, now=NOW) is Observed.ANNOUNCES
    assert state.observe(announced, v2, body2, now=NOW) is Observed.NEWER  # once v2 is held
    assert state.check(v2, body2, now=NOW).fresh
    state.require(v2, body2, now=NOW)


def test_a_timestamp_of_other_bytes_under_the_held_version_number_is_no_proof(
    world: World,
) -> None:
    """A party that holds a different version 1 (say, one the broker forged with the
    signers' threshold it does not have) is not made fresh by the real version 1's
    timestamp: the digest binds the bytes."""
    state = FreshnessState()
    state.observe(stamp(world), world.v1, world.body, now=NOW)
    other = dataclasses.replace(world.v1, valid_until=world.v1.valid_until + DAY)
    assert not state.check(other, covenant_to_toml(other), now=NOW).fresh


def test_the_stale_reason_says_when_it_expired(world: World) -> None:
    state = FreshnessState()
    expired = stamp(world, issued=NOW - 2 * DAY)
    state.observe(expired, world.v1, world.body, now=NOW)
    freshness = state.check(world.v1, world.body, now=NOW)
    assert not freshness.fresh
    assert freshness.until == expired.expires_at
    assert expired.expires_at.isoformat() in freshness.reason
    assert "withheld" in freshness.reason


@pytest.mark.parametrize(
    ("make", "reason", "field"),
    [
        (lambda w: stamp(w, version=2), "timestamp.unknown_version", "version"),
        (lambda w: stamp(w, version=1), "timestamp.older_version", "version"),
        (lambda w: stamp(w, issued=NOW - 2 * DAY), "timestamp.expired", "expires_at"),
        (lambda w: stamp(w, key=OTHER_KEY), "timestamp.bad_signature", "signature"),
        (lambda w: stamp(w, digest=bytes(32)), "timestamp.wrong_digest", "covenant_sha256"),
    ],
    ids=["unknown-version", "older-version", "expired", "bad-signature", "wrong-digest"],
)
def test_what_the_broker_refuses_to_hand_out(
    world: World, make: Make, reason: str, field: str
) -> None:
    held = world.v2 if reason == "timestamp.older_version" else world.v1
    with pytest.raises(TimestampRejected) as caught:
        verify_current(make(world), held, covenant_to_toml(held), now=NOW)
    assert (caught.value.reason, caught.value.field) == (reason, f"covenant_timestamp.{field}")


def test_the_broker_takes_a_good_one(world: World) -> None:
    verify_current(stamp(world), world.v1, world.body, now=NOW)


def test_issue_timestamp_signs_what_the_nodes_accept(world: World) -> None:
    issued = issue_timestamp(world.key, world.v1, world.body, now=NOW)
    assert (issued.version, issued.issued_at, issued.expires_at) == (1, NOW, NOW + DAY)
    assert issued.covenant_sha256 == covenant_digest(world.body)
    short = issue_timestamp(world.key, world.v1, world.body, now=NOW, lifetime=timedelta(hours=1))
    assert short.expires_at == NOW + timedelta(hours=1)
    state = FreshnessState()
    assert state.observe(issued, world.v1, world.body, now=NOW) is Observed.NEWER


@pytest.mark.parametrize(
    ("key", "lifetime", "field"),
    [
        (OTHER_KEY, None, "key"),
        (None, DAY + timedelta(seconds=1), "lifetime"),
        (None, timedelta(0), "lifetime"),
    ],
    ids=["not-the-timestamp-key", "longer-than-the-period", "zero"],
)
def test_issue_timestamp_refusals(
    world: World, key: nacl.signing.SigningKey | None, lifetime: timedelta | None, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        issue_timestamp(key or world.key, world.v1, world.body, now=NOW, lifetime=lifetime)
    assert caught.value.field == field


def test_the_file_form_round_trips_and_only_its_signed_bytes_count(
    world: World, tmp_path: Path
) -> None:
    issued = issue_timestamp(world.key, world.v1, world.body, now=NOW)
    assert CovenantTimestamp.from_json(issued.to_json(), source="t.json") == issued
    doctored = issued.to_json().replace(b'"version": 1', b'"version": 9')
    assert CovenantTimestamp.from_json(doctored, source="t.json").version == 1
    with pytest.raises(InvalidInput) as caught:
        CovenantTimestamp.from_json(b'{"kind": "samenloop.signed-covenant.v1"}', source="t.json")
    assert caught.value.field == "t.json"
