"""The node's covenant keeper: versions fetched one by one, timestamps kept, freshness.

The keeper with a real store (SQLite) and a fake broker: ``fetch`` answers from
a dictionary of signed versions, so each test says exactly what the broker
gives. The clock is fixed; nothing reads the real time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from samenloop.node.daemon import models
from samenloop.node.daemon.covenant_keeper import MAX_FETCHES, CovenantKeeper, Fetched
from samenloop.node.daemon.covenants import CovenantStore
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies import database
from samenloop.policies.audit import AuditKind
from samenloop.policies.covenant import AttributeKeyRing, Covenant, Role, with_new_attribute_key
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import CovenantStale, NotFound
from samenloop.policies.freshness import CovenantTimestamp
from samenloop.policies.trust import HeldCovenant, SignedCovenant, TrustState
from samenloop.v1 import common_pb2

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SPECS = (
    PartySpec("gemeente", "Gemeente", Role.GEMEENTE),
    PartySpec("politie", "Politie", Role.POLITIE),
    PartySpec("woco", "Woningcorporatie", Role.WONINGCORPORATIE),
)
ME = "gemeente"


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    root = tmp_path_factory.mktemp("keeper")
    return provision(root, "riec-keeper", SPECS, ["gemeente", "politie"], 2, now=NOW)


class Broker:
    """What the fake broker holds: signed versions by number, and their timestamps."""

    def __init__(self) -> None:
        self.versions: dict[int, SignedCovenant] = {}
        self.stamps: dict[int, CovenantTimestamp] = {}
        self.asked: list[int] = []

    def fetch(self, version: int) -> Fetched:
        self.asked.append(version)
        if version not in self.versions:
            raise NotFound(f"no version {version}", field="version")
        stamp = self.stamps.get(version)
        return Fetched(
            self.versions[version].to_proto(), None if stamp is None else stamp.to_proto()
        )


@dataclasses.dataclass
class Node:
    keeper: CovenantKeeper
    held: HeldCovenant
    store: CovenantStore
    broker: Broker
    provisioned: Provisioned
    made: list[Covenant] = dataclasses.field(default_factory=list)

    def version(self, n: int, *, without: str | None = None) -> Covenant:
        """Version ``n``, made from the last one made (one that removes a party deals a new
        attribute key), signed and put at the broker."""
        base = self.made[-1] if self.made else self.provisioned.covenant
        if without is None:
            draft = dataclasses.replace(base, version=n)
        else:
            remaining = tuple(p for p in base.parties if p.id != without)
            draft = with_new_attribute_key(base, remaining, version=n)
        self.broker.versions[n] = self.provisioned.sign(draft)
        self.made.append(draft)
        return draft

    def stamp(self, draft: Covenant, **changes: object) -> CovenantTimestamp:
        made = self.provisioned.stamp(draft, now=NOW, **changes)  # type: ignore[arg-type]
        self.broker.stamps[draft.version] = made
        return made


@pytest.fixture
def node(provisioned: Provisioned, tmp_path: Path) -> Iterator[Node]:
    engine = database.make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    database.upgrade(engine, "samenloop.node.daemon.migrations")
    store = CovenantStore(engine, owner=ME)
    held = HeldCovenant(
        TrustState(
            SignedCovenant.from_json(provisioned.signed_covenant.read_bytes(), source="root")
        )
    )
    ring = AttributeKeyRing(PartyKeys.load(provisioned.party_dir(ME) / "party-keys.json"))
    ring.learn(held())
    broker = Broker()
    keeper = CovenantKeeper(
        party=ME, held=held, store=store, attribute_keys=ring, clock=lambda: NOW, fetch=broker.fetch
    )
    yield Node(keeper, held, store, broker, provisioned)
    engine.dispose()


def stored_versions(store: CovenantStore) -> list[int]:
    return [
        SignedCovenant.from_proto(common_pb2.SignedCovenant.FromString(v)).unverified().version
        for v in store.covenant_versions()
    ]


def test_hello_naming_a_newer_version_fetches_each_version_in_turn(node: Node) -> None:
    v2 = node.version(2, without="woco")  # a removal: attribute key version 2
    v3 = node.version(3)
    node.stamp(v3)
    node.keeper.hello(3, node.broker.stamps[3].to_proto())
    assert node.broker.asked == [2, 3]
    assert node.held().version == 3
    assert stored_versions(node.store) == [2, 3]
    assert node.keeper.attribute_keys.versions == (1, 2)  # v2's key joined the ring
    assert v2.attribute_key_version == 2
    assert node.keeper.check().fresh
    assert node.store.covenant_timestamp() == node.broker.stamps[3].signed


def test_a_version_the_broker_does_not_give_leaves_the_held_one(node: Node) -> None:
    node.keeper.hello(5, None)  # the broker says 5, holds nothing after 1
    assert node.broker.asked == [2]
    assert node.held().version == 1
    assert stored_versions(node.store) == []


def test_a_fetched_version_that_does_not_verify_is_refused_and_stops_the_walk(node: Node) -> None:
    node.version(2)
    node.version(3)
    forged = node.broker.versions[2]
    node.broker.versions[2] = dataclasses.replace(forged, signatures=forged.signatures[:1])
    node.keeper.hello(3, None)
    assert node.broker.asked == [2]  # under-signed: refused, 3 not asked for
    assert node.held().version == 1
    assert stored_versions(node.store) == []


def test_a_broker_naming_ever_newer_versions_gets_a_bounded_walk(node: Node) -> None:
    for n in range(2, MAX_FETCHES + 10):
        node.version(n)
    node.keeper.hello(10_000, None)
    assert len(node.broker.asked) == MAX_FETCHES
    assert node.held().version == MAX_FETCHES + 1
    node.keeper.hello(10_000, None)  # the next Hello goes on from there
    assert node.held().version == MAX_FETCHES + 9


def test_a_timestamp_announcing_a_newer_version_fetches_it_first(node: Node) -> None:
    v2 = node.version(2)
    stamp = node.stamp(v2)
    node.store.advance_cursor(0)
    node.keeper.timestamp(stamp.to_proto(), cursor=4)
    assert node.broker.asked == [2]
    assert node.held().version == 2
    assert node.keeper.check().fresh
    assert node.store.mailbox_cursor() == 4  # kept with the cursor, in one transaction
    assert node.store.covenant_timestamp() == stamp.signed


def test_refused_and_older_timestamps_move_the_cursor_and_change_nothing(node: Node) -> None:
    v1 = node.provisioned.covenant
    good = node.stamp(v1)
    node.keeper.timestamp(good.to_proto(), cursor=1)
    other_key = PartyKeys.generate("x").signing_key
    forged = common_pb2.Signed.FromString(good.signed)
    forged.signature = other_key.sign(forged.body).signature  # not the timestamp key
    node.keeper.timestamp(forged, cursor=2)
    older = node.provisioned.stamp(v1, now=NOW - timedelta(hours=1))
    node.keeper.timestamp(older.to_proto(), cursor=3)
    node.keeper.timestamp(common_pb2.Signed(body=b"\xff"), cursor=4)
    assert node.store.mailbox_cursor() == 4
    assert node.store.covenant_timestamp() == good.signed
    assert node.keeper.check().fresh


def test_stale_until_a_timestamp_then_fresh_and_each_change_audited(node: Node) -> None:
    with pytest.raises(CovenantStale) as caught:
        node.keeper.require()
    assert "no covenant timestamp for version 1" in caught.value.message
    assert node.keeper.stale_reason() == caught.value.message
    node.keeper.timestamp(node.stamp(node.provisioned.covenant).to_proto(), cursor=None)
    node.keeper.require()
    assert node.keeper.stale_reason() is None
    # A new version arrives in the mailbox without its timestamp: stale until it comes.
    v2 = node.version(2)
    node.keeper.covenant_update(1, node.broker.versions[2].to_proto())
    assert node.held().version == 2
    assert "version 2" in (node.keeper.stale_reason() or "")
    node.keeper.timestamp(node.stamp(v2).to_proto(), cursor=2)
    node.keeper.require()
    changes = node.store.audit_entries(kind=AuditKind.COVENANT_FRESHNESS)
    assert [(e.details["fresh"], e.details["version"]) for e in changes] == [
        (False, 1),  # found stale when first asked
        (True, 1),
        (False, 2),
        (True, 2),
    ]


def test_the_stored_timestamp_is_verified_again_at_start(node: Node) -> None:
    stamp = node.stamp(node.provisioned.covenant)
    node.keeper.timestamp(stamp.to_proto(), cursor=None)
    restarted = CovenantKeeper(
        party=ME,
        held=node.held,
        store=node.store,
        attribute_keys=node.keeper.attribute_keys,
        clock=lambda: NOW,
    )
    restarted.load()
    assert restarted.check().fresh
    # Altered at rest (another body under the same signature): dropped, loudly, and stale.
    altered = common_pb2.Signed.FromString(stamp.signed)
    body = common_pb2.CovenantTimestamp.FromString(altered.body)
    body.expires_at.FromDatetime(NOW + timedelta(days=7))
    altered.body = body.SerializeToString()
    with node.store.engine.begin() as conn:
        conn.execute(sa.update(models.CovenantTimestamp).values(signed=altered.SerializeToString()))
    again = CovenantKeeper(
        party=ME,
        held=node.held,
        store=node.store,
        attribute_keys=node.keeper.attribute_keys,
        clock=lambda: NOW,
    )
    again.load()
    assert not again.check().fresh
