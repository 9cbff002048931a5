"""Publishing a covenant through the broker: TUF's rules at the broker, delivery, cut-off.

A real broker over mTLS on port 0 with an SQLite store; covenant versions are
signed with the provisioned signers' keys (both are needed: threshold 2).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from samenloop.broker import server as broker_server
from samenloop.node.provision import PartySpec, Provisioned, private_dir, provision
from samenloop.policies import crypto, database, rpc
from samenloop.policies.config import load_broker_config
from samenloop.policies.covenant import covenant_to_toml, with_new_attribute_key
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.freshness import CovenantTimestamp, issue_timestamp
from samenloop.policies.policy import Quotas, Role
from samenloop.policies.trust import SignedCovenant
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2

from daemons import wait_until

PARTIES = [
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("belastingdienst", "Belastingdienst", Role.BELASTINGDIENST),
    PartySpec("riec", "RIEC Zeeland-West-Brabant", Role.RIEC),
]
HOLDERS = ["politie", "belastingdienst", "riec"]


class World:
    def __init__(self, root: Path, database_url: str | None = None) -> None:
        """``database_url``: PostgreSQL rather than the provisioned SQLite file."""
        self.root = root
        self.provisioned: Provisioned = provision(
            root, "riec-zwb-test", PARTIES, HOLDERS, 2, now=datetime.now(UTC)
        )
        self.config = replace(
            load_broker_config(self.provisioned.broker_config), listen="127.0.0.1:0"
        )
        if database_url is not None:
            self.config = replace(self.config, database_url=database_url)
        engine = database.make_engine(self.config.database_url)
        database.upgrade(engine, broker_server.MIGRATIONS)
        engine.dispose()
        self.shift = timedelta(0)  # tests move the broker's clock forward with this
        self.running = self._build()

    def _build(self) -> broker_server.RunningBroker:
        return broker_server.build_server(
            self.config, evaluate_timeout=3.0, clock=lambda: datetime.now(UTC) + self.shift
        )

    def replica(self, name: str) -> broker_server.RunningBroker:
        """Another broker process on the same database, with a data directory of its own."""
        config = replace(self.config, data_dir=private_dir(self.root / f"broker-{name}"))
        return broker_server.build_server(config, evaluate_timeout=3.0)

    def restart(self) -> None:
        self.running.stop(0)
        self.running = self._build()

    def stub(self, party: str) -> broker_pb2_grpc.BrokerStub:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(self.root / "ca" / "ca.pem").read_bytes(),
            private_key=(self.root / party / "tls.key").read_bytes(),
            certificate_chain=(self.root / party / "tls.pem").read_bytes(),
        )
        channel = grpc.secure_channel(f"localhost:{self.running.port}", credentials)
        return broker_pb2_grpc.BrokerStub(channel)

    def publish(self, signed: SignedCovenant, by: str = "riec") -> int:
        request = broker_pb2.PublishCovenantRequest(covenant=signed.to_proto())
        return self.stub(by).PublishCovenant(request, timeout=10).version

    def drain(self, party: str) -> list[broker_pb2.MailboxItem]:
        broker = self.stub(party)
        fetched = broker.FetchMailbox(broker_pb2.FetchMailboxRequest(), timeout=5)
        if fetched.items:
            broker.AckMailbox(
                broker_pb2.AckMailboxRequest(cursor=fetched.items[-1].cursor), timeout=5
            )
        return list(fetched.items)

    def submit(self, party: str, token: bytes) -> None:
        expires = broker_pb2.TokenEntry().expires_at
        expires.FromDatetime(datetime.now(UTC) + self.shift + timedelta(days=30))
        self.stub(party).SubmitTokens(
            broker_pb2.SubmitTokensRequest(
                client_batch_id=os.urandom(16),
                key_epoch=1,
                entries=[
                    broker_pb2.TokenEntry(
                        token=token, signal_ref=os.urandom(16), expires_at=expires
                    )
                ],
            ),
            timeout=10,
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.running.stop(0)


def version_2(world: World, **changes: object) -> SignedCovenant:
    """Version 2 with ``changes``; one that changes the parties deals a new attribute key."""
    held = world.provisioned.covenant
    if "parties" in changes:
        parties = changes.pop("parties")
        draft = with_new_attribute_key(held, parties, version=2, **changes)  # type: ignore[arg-type]
    else:
        draft = replace(held, version=2, **changes)  # type: ignore[arg-type]
    return world.provisioned.sign(draft)


def rejection(world: World, signed: SignedCovenant) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        world.publish(signed)
    assert isinstance(info.value, grpc.Call)
    return info.value.code(), rpc.error_from_rpc(info.value).reason


def test_a_new_version_reaches_every_party_and_survives_a_restart(world):
    held = world.provisioned.covenant
    policy = replace(
        held.policy, quotas=Quotas(oprf_evaluations_per_day=5000, disclosure_requests_per_day=9)
    )
    signed = version_2(world, policy=policy)
    assert world.publish(signed) == 2
    for party in ("gemeente", "politie", "belastingdienst", "riec"):
        (item,) = world.drain(party)
        assert item.WhichOneof("payload") == "covenant_update"
        assert SignedCovenant.from_proto(item.covenant_update) == signed
    got = world.stub("gemeente").GetCovenant(broker_pb2.GetCovenantRequest(), timeout=5)
    assert SignedCovenant.from_proto(got.covenant) == signed
    # Publishing the same version again changes nothing and delivers nothing.
    assert world.publish(signed, by="gemeente") == 2
    assert world.drain("politie") == []
    world.restart()
    hello = world.stub("politie").Hello(broker_pb2.HelloRequest(party="politie"), timeout=5)
    assert hello.covenant_version == 2


def test_rollback_tampered_under_signed_and_expired_versions_are_refused(world):
    v2 = version_2(world)
    world.publish(v2)
    world.drain("riec")
    # An older version after a newer one.
    v1 = SignedCovenant.from_json(
        world.provisioned.signed_covenant.read_bytes(), source="covenant.json"
    )
    assert rejection(world, v1) == (grpc.StatusCode.FAILED_PRECONDITION, "covenant.rollback")
    # Version 3, altered after signing.
    v3 = world.provisioned.sign(replace(world.provisioned.covenant, version=3))
    tampered = replace(v3, body=v3.body.replace(b"min_parties = 2", b"min_parties = 3"))
    assert rejection(world, tampered)[1] == "covenant.bad_signature"
    # Version 3 signed by one of the two signers only.
    one = replace(v3, signatures=v3.signatures[:1])
    assert rejection(world, one)[1] == "covenant.under_signed"
    # Version 3 signed by someone the covenant does not list.
    stranger = PartyKeys.generate("beheer-x")
    forged = replace(
        v3,
        signatures=(
            *v3.signatures,
            common_signature("beheer-x", stranger, v3.body),
        ),
    )
    assert rejection(world, forged)[1] == "covenant.unknown_signer"
    # Version 3 whose validity ended yesterday.
    now = datetime.now(UTC)
    expired = world.provisioned.sign(
        replace(
            world.provisioned.covenant,
            version=3,
            valid_from=now - timedelta(days=30),
            valid_until=now - timedelta(days=1),
        )
    )
    assert rejection(world, expired)[1] == "covenant.expired"
    # Version 3 that removes a party but keeps the attribute key it holds.
    held = world.provisioned.covenant
    kept = world.provisioned.sign(
        replace(held, version=3, parties=tuple(p for p in held.parties if p.id != "gemeente"))
    )
    with pytest.raises(grpc.RpcError) as info:
        world.publish(kept)
    refused = rpc.error_from_rpc(info.value)
    assert (refused.reason, refused.field) == (
        "covenant.attribute_key_kept",
        "attribute_key_version",
    )
    assert world.drain("riec") == []  # nothing refused was delivered
    hello = world.stub("riec").Hello(broker_pb2.HelloRequest(party="riec"), timeout=5)
    assert hello.covenant_version == 2


def common_signature(signer: str, keys: PartyKeys, body: bytes):
    from samenloop.policies.trust import CovenantSignature

    return CovenantSignature(
        signer=signer, signature=crypto.sign(keys.signing_key, SignatureContext.COVENANT, body)
    )


def test_garbage_is_refused_naming_the_field(world):
    request = broker_pb2.PublishCovenantRequest(
        covenant=common_pb2.SignedCovenant(body=b"\xff not toml")
    )
    with pytest.raises(grpc.RpcError) as info:
        world.stub("riec").PublishCovenant(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = rpc.error_from_rpc(info.value)
    # Not signed by the held version's signers: refused before its bytes are even parsed.
    assert (error.field, error.reason) == ("covenant", "covenant.under_signed")
    with pytest.raises(grpc.RpcError) as info:
        world.stub("riec").PublishCovenant(broker_pb2.PublishCovenantRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.error_from_rpc(info.value).field == "covenant"


def test_a_removed_party_is_cut_off_at_once(world):
    token = os.urandom(32)
    world.submit("gemeente", token)
    world.submit("belastingdienst", token)
    for party in ("gemeente", "belastingdienst", "riec"):
        assert len(world.drain(party)) == 1
    # The tax office keeps a mailbox stream open while it is removed.
    stream = world.stub("belastingdienst").StreamMailbox(
        broker_pb2.StreamMailboxRequest(), timeout=30
    )
    ended: list[grpc.StatusCode | None] = []

    def read() -> None:
        try:
            for _ in stream:
                pass
        except grpc.RpcError as error:
            ended.append(error.code() if isinstance(error, grpc.Call) else None)

    reader = threading.Thread(target=read)
    reader.start()
    held = world.provisioned.covenant
    parties = tuple(p for p in held.parties if p.id != "belastingdienst")
    key_epoch = replace(
        held.key_epoch,
        holders=tuple(h for h in held.key_epoch.holders if h.party != "belastingdienst"),
    )
    v2 = version_2(world, parties=parties, key_epoch=replace(key_epoch, threshold=2))
    world.publish(v2)
    reader.join(timeout=15)
    assert ended == [grpc.StatusCode.PERMISSION_DENIED]
    # Its tokens no longer count: the others are told the hit closed.
    gemeente = world.drain("gemeente")
    kinds = [
        broker_pb2.HitNotice.FromString(i.hit_notice.body).kind
        for i in gemeente
        if i.WhichOneof("payload") == "hit_notice"
    ]
    assert kinds == [broker_pb2.HIT_NOTICE_KIND_CLOSED]
    # The notice comes before the version in the mailbox: a node that holds the version
    # has read it (the mailbox is read in cursor order).
    assert [i.WhichOneof("payload") for i in gemeente] == ["hit_notice", "covenant_update"]
    assert gemeente[0].cursor < gemeente[1].cursor
    # Every call it makes is refused.
    with pytest.raises(grpc.RpcError) as info:
        world.drain("belastingdienst")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        world.submit("belastingdienst", os.urandom(32))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_expired_covenant_stops_matching_until_a_new_version(world):
    world.submit("gemeente", os.urandom(32))
    world.shift = world.provisioned.covenant.valid_until - datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(grpc.RpcError) as info:
        world.submit("gemeente", os.urandom(32))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc.error_from_rpc(info.value).reason == "covenant.expired"
    assert world.drain("gemeente") == []  # mailboxes still serve
    # A new version valid from now on (by the broker's clock) brings matching back.
    now = datetime.now(UTC) + world.shift
    held = world.provisioned.covenant
    renewed = world.provisioned.sign(
        replace(
            held,
            version=2,
            valid_from=now - timedelta(minutes=1),
            valid_until=now + timedelta(days=30),
        )
    )
    assert world.publish(renewed) == 2
    world.submit("gemeente", os.urandom(32))


def test_removing_a_hidden_party_tells_only_those_who_saw_it(world):
    token = os.urandom(32)
    for party in ("gemeente", "politie", "belastingdienst"):
        world.submit(party, token)
    for party in ("gemeente", "politie", "belastingdienst", "riec"):
        world.drain(party)
    held = world.provisioned.covenant
    parties = tuple(p for p in held.parties if p.id != "politie")
    key_epoch = replace(
        held.key_epoch, holders=tuple(h for h in held.key_epoch.holders if h.party != "politie")
    )
    world.publish(version_2(world, parties=parties, key_epoch=key_epoch))

    def hit_notices(party: str) -> list[broker_pb2.HitNotice]:
        return [
            broker_pb2.HitNotice.FromString(i.hit_notice.body)
            for i in world.drain(party)
            if i.WhichOneof("payload") == "hit_notice"
        ]

    # The police were hidden from the municipality and the tax office: their leaving is too.
    assert hit_notices("gemeente") == []
    assert hit_notices("belastingdienst") == []
    assert [n.kind for n in hit_notices("riec")] == [broker_pb2.HIT_NOTICE_KIND_SHRUNK]


# --- covenant timestamps ------------------------------------------------------------------


def timestamp_of(world: World, draft=None, *, issued: datetime | None = None, lifetime=None):
    """A covenant timestamp for ``draft`` (default: the provisioned version), as the
    administrators' timestamp job signs it."""
    return world.provisioned.stamp(
        draft or world.provisioned.covenant,
        now=issued or datetime.now(UTC),
        lifetime=lifetime,
    )


def publish_timestamp(world: World, stamp, by: str = "gemeente"):
    request = broker_pb2.PublishTimestampRequest(covenant_timestamp=stamp.to_proto())
    return world.stub(by).PublishTimestamp(request, timeout=10)


def hello_timestamp(world: World, party: str = "politie") -> bytes:
    hello = world.stub(party).Hello(broker_pb2.HelloRequest(party=party), timeout=5)
    return hello.covenant_timestamp.SerializeToString()


def test_the_first_timestamp_comes_from_the_provisioned_file(world):
    """``broker.toml``'s ``covenant_timestamp`` file: the broker hands it out from its start."""
    assert world.config.covenant_timestamp is not None
    assert hello_timestamp(world) != b""
    first = CovenantTimestamp.parse(hello_timestamp(world))
    assert first == CovenantTimestamp.from_json(
        world.config.covenant_timestamp.read_bytes(), source="file"
    )


def test_a_timestamp_is_kept_handed_out_and_put_in_every_mailbox(world):
    stamp = timestamp_of(world)
    answer = publish_timestamp(world, stamp, by="riec")
    assert (answer.version, answer.stored) == (1, True)
    assert answer.expires_at.ToDatetime(tzinfo=UTC) == stamp.expires_at
    assert hello_timestamp(world) == stamp.signed
    got = world.stub("gemeente").GetCovenant(broker_pb2.GetCovenantRequest(), timeout=5)
    assert got.covenant_timestamp.SerializeToString() == stamp.signed
    for party in ("gemeente", "politie", "belastingdienst", "riec"):
        (item,) = world.drain(party)
        assert item.WhichOneof("payload") == "covenant_timestamp"
        assert item.covenant_timestamp.SerializeToString() == stamp.signed
    # The same one again, or an older one: nothing changes, nothing is delivered.
    older = timestamp_of(world, issued=datetime.now(UTC) - timedelta(minutes=5))
    for again in (stamp, older):
        answer = publish_timestamp(world, again)
        assert not answer.stored
        assert answer.expires_at.ToDatetime(tzinfo=UTC) == stamp.expires_at
    assert world.drain("politie") == []
    world.restart()
    assert hello_timestamp(world) == stamp.signed  # kept durably


def test_timestamps_the_broker_refuses_change_nothing(world):
    held = world.provisioned.covenant
    good = timestamp_of(world)
    publish_timestamp(world, good)
    world.drain("riec")
    v2 = replace(held, version=2)
    # Signed by a key that is not the covenant's timestamp key (the broker's own, say),
    # over the real version's bytes.
    other_key = PartyKeys.generate("timestamp").signing_key
    claimed = replace(held.signing, timestamp_ed25519=bytes(other_key.verify_key))
    forged = issue_timestamp(
        other_key, replace(held, signing=claimed), covenant_to_toml(held), now=datetime.now(UTC)
    )
    expired = timestamp_of(world, issued=datetime.now(UTC) - timedelta(days=2))
    cases = [
        (timestamp_of(world, v2), "timestamp.unknown_version", "covenant_timestamp.version"),
        (forged, "timestamp.bad_signature", "covenant_timestamp.signature"),
        (expired, "timestamp.expired", "covenant_timestamp.expires_at"),
    ]
    for stamp, reason, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            publish_timestamp(world, stamp)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        error = rpc.error_from_rpc(info.value)
        assert (error.reason, error.field) == (reason, field), error.message
    with pytest.raises(grpc.RpcError) as info:
        world.stub("riec").PublishTimestamp(broker_pb2.PublishTimestampRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.error_from_rpc(info.value).field == "covenant_timestamp"
    garbage = broker_pb2.PublishTimestampRequest(
        covenant_timestamp=common_pb2.Signed(context="covenant-timestamp", signer="timestamp")
    )
    with pytest.raises(grpc.RpcError) as info:
        world.stub("riec").PublishTimestamp(garbage, timeout=5)
    assert rpc.error_from_rpc(info.value).reason == "timestamp.malformed"
    assert world.drain("riec") == []  # nothing refused was delivered
    assert hello_timestamp(world) == good.signed


def test_a_version_published_with_its_timestamp_is_delivered_before_it(world):
    held = world.provisioned.covenant
    draft = replace(held, version=2)
    signed = world.provisioned.sign(draft)
    stamp = timestamp_of(world, draft)
    request = broker_pb2.PublishCovenantRequest(
        covenant=signed.to_proto(), covenant_timestamp=stamp.to_proto()
    )
    world.drain("gemeente")
    assert world.stub("riec").PublishCovenant(request, timeout=10).version == 2
    items = world.drain("gemeente")
    assert [i.WhichOneof("payload") for i in items] == ["covenant_update", "covenant_timestamp"]
    assert hello_timestamp(world) == stamp.signed
    # A timestamp of the version it replaces is refused: it is no longer current.
    with pytest.raises(grpc.RpcError) as info:
        publish_timestamp(world, timestamp_of(world))
    assert rpc.error_from_rpc(info.value).reason == "timestamp.older_version"
    # Publishing the version again with a newer timestamp hands out only the timestamp.
    newer = timestamp_of(world, draft, issued=datetime.now(UTC) + timedelta(seconds=1))
    again = broker_pb2.PublishCovenantRequest(
        covenant=signed.to_proto(), covenant_timestamp=newer.to_proto()
    )
    assert world.stub("riec").PublishCovenant(again, timeout=10).version == 2
    assert [i.WhichOneof("payload") for i in world.drain("gemeente")] == ["covenant_timestamp"]
    # A version whose timestamp does not verify is not published at all.
    v3 = world.provisioned.sign(replace(held, version=3))
    bad = broker_pb2.PublishCovenantRequest(
        covenant=v3.to_proto(), covenant_timestamp=timestamp_of(world, draft).to_proto()
    )
    with pytest.raises(grpc.RpcError) as info:
        world.stub("riec").PublishCovenant(bad, timeout=10)
    assert rpc.error_from_rpc(info.value).reason == "timestamp.older_version"
    assert world.drain("gemeente") == []
    hello = world.stub("riec").Hello(broker_pb2.HelloRequest(party="riec"), timeout=5)
    assert hello.covenant_version == 2


def test_get_covenant_serves_every_version_it_holds(world):
    held = world.provisioned.covenant
    v2 = world.provisioned.sign(replace(held, version=2))
    world.publish(v2)
    v3 = world.provisioned.sign(replace(held, version=3))
    world.publish(v3)
    stub = world.stub("gemeente")
    for version, expected in ((1, None), (2, v2), (3, v3), (0, v3)):
        got = stub.GetCovenant(broker_pb2.GetCovenantRequest(version=version), timeout=5)
        served = SignedCovenant.from_proto(got.covenant)
        assert served.unverified().version == (version or 3)
        if expected is not None:
            assert served == expected
    # Version 1 came with the file's timestamp; 2 and 3 were published without one.
    first = stub.GetCovenant(broker_pb2.GetCovenantRequest(version=1), timeout=5)
    assert first.HasField("covenant_timestamp")
    assert not stub.GetCovenant(broker_pb2.GetCovenantRequest(version=3), timeout=5).HasField(
        "covenant_timestamp"
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.GetCovenant(broker_pb2.GetCovenantRequest(version=7), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc.error_from_rpc(info.value).field == "version"


def test_a_timestamp_file_of_another_covenant_stops_the_start(world, tmp_path):
    other = provision(tmp_path / "other", "riec-other", PARTIES, HOLDERS, 2, now=datetime.now(UTC))
    world.running.stop(0)
    world.config = replace(world.config, covenant_timestamp=other.root / "covenant-timestamp.json")
    with pytest.raises(ConfigurationError) as caught:
        world.running = world._build()
    assert caught.value.field == "covenant_timestamp"
    world.config = replace(world.config, covenant_timestamp=None)
    world.running = world._build()


def test_a_version_one_replica_accepts_is_taken_by_the_others(tmp_path, own_postgres_url):
    """Two broker replicas on one PostgreSQL database: a version published at one is
    announced to the other, which takes it from the store and cuts off the party it
    removed there too."""
    world = World(tmp_path, own_postgres_url)
    a, b = world.running, world.replica("b")
    try:
        world.running = b
        assert world.stub("belastingdienst").Hello(_hello("belastingdienst"), timeout=5)
        held = world.provisioned.covenant
        key_epoch = replace(
            held.key_epoch,
            holders=tuple(h for h in held.key_epoch.holders if h.party != "belastingdienst"),
        )
        parties = tuple(p for p in held.parties if p.id != "belastingdienst")
        world.running = a
        world.publish(version_2(world, parties=parties, key_epoch=replace(key_epoch, threshold=2)))
        world.running = b

        def taken() -> bool:
            return world.stub("politie").Hello(_hello("politie"), timeout=5).covenant_version == 2

        wait_until(taken, 30, "replica b holds version 2")
        with pytest.raises(grpc.RpcError) as info:
            world.stub("belastingdienst").Hello(_hello("belastingdienst"), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert b.service.adopt_published() == 0  # nothing new: taken once
    finally:
        a.stop(0)
        b.stop(0)


def _hello(party: str) -> broker_pb2.HelloRequest:
    return broker_pb2.HelloRequest(party=party)
