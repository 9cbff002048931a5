"""The broker's store during a rotation of the OPRF key, on SQLite and PostgreSQL: staged
entries re-state held ones silently and uncounted, readiness per party, and the switch
that carries the groups over by refs and deletes the retired epoch's entries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from samenloop.broker.database import MIGRATIONS
from samenloop.broker.matching import Entry
from samenloop.broker.models import Base, TokenEntry
from samenloop.broker.store import BrokerStore
from samenloop.policies import database
from samenloop.policies.errors import CovenantRejected, InvalidInput
from tests.test_broker_store import LATER, NOW, Ids, batch_id, inbox, ref, sign, token


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(database_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    with engine.begin() as conn:  # the PostgreSQL database lives for the module
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def broker(engine: sa.Engine) -> BrokerStore:
    return BrokerStore(engine)


def put(store: BrokerStore, party: str, n: int, epoch: int, items, *, ids=None, staged=2):
    entries = [Entry(party, token(t), ref(party, r), epoch, LATER) for t, r in items]
    return store.tokens.submit(
        party,
        batch_id(n),
        epoch,
        entries,
        min_parties=2,
        now=NOW,
        new_group_id=ids or Ids(),
        sign_notice=sign,
        staged_epoch=staged,
    )


def publish(store: BrokerStore, version: int, *, switch=(1, 2)):
    return store.covenants.publish_covenant(
        version=version,
        signed=b"covenant %d" % version,
        recipients=["a", "b", "c"],
        removed=[],
        min_parties=2,
        now=NOW + timedelta(minutes=1),
        sign_notice=sign,
        switch=switch,
        parties=["a", "b", "c"],
    )


def epochs_held(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(TokenEntry.key_epoch, sa.func.count()).group_by(TokenEntry.key_epoch)
        )
        return {int(epoch): int(count) for epoch, count in rows}


def test_a_rotation_carries_the_groups_over_without_a_notice_twice(broker, engine):
    ids = Ids()
    # Epoch 1: a and b hold token 1 (a hit), c holds token 5 alone.
    put(broker, "a", 1, 1, [(1, 1)], ids=ids, staged=None)
    put(broker, "b", 2, 1, [(1, 1), (3, 2)], ids=ids, staged=None)
    put(broker, "c", 3, 1, [(5, 1)], ids=ids, staged=None)
    (group,) = broker.tokens.open_groups()
    told = {p: inbox(broker, p) for p in "abc"}
    assert [len(told[p]) for p in "abc"] == [1, 1, 0]
    held = {p: broker.tokens.usage(p).held for p in "abc"}
    assert held == {"a": 1, "b": 2, "c": 1}
    assert broker.rotation.status(1, 2, NOW, ["a", "b", "c"]) == {"a": 1, "b": 2, "c": 1}

    # Staged: epoch 2 re-states each ref under a new token; a hit forms there, silently.
    put(broker, "a", 11, 2, [(101, 1)], ids=ids)
    put(broker, "b", 12, 2, [(101, 1)], ids=ids)
    assert len(broker.tokens.open_groups()) == 2
    assert {p: inbox(broker, p) for p in "abc"} == told
    assert {p: broker.tokens.usage(p).held for p in "abc"} == held  # not counted anew
    # A staged entry for a ref the party does not hold under epoch 1 stores nothing.
    with pytest.raises(InvalidInput) as refused:
        put(broker, "c", 13, 2, [(105, 1), (106, 9)], ids=ids)
    assert refused.value.field == "entries[1].signal_ref"
    # Nor a second token for a ref re-stated already (the staged epoch adds nothing held).
    with pytest.raises(InvalidInput) as twice:
        put(broker, "a", 17, 2, [(102, 1)], ids=ids)
    assert twice.value.field == "entries[0].signal_ref"
    assert twice.value.reason == "token.restated_twice"
    put(broker, "a", 18, 2, [(101, 1)], ids=ids)  # the same entry again: unchanged
    assert epochs_held(engine) == {1: 4, 2: 2}
    assert broker.rotation.status(1, 2, NOW, ["a", "b", "c"]) == {"a": 0, "b": 1, "c": 1}

    # Not ready: the switch is refused naming the parties and what they have left.
    with pytest.raises(CovenantRejected) as waiting:
        publish(broker, 2)
    assert waiting.value.field == "key_epoch"
    assert "b 1" in waiting.value.message
    assert "c 1" in waiting.value.message
    assert broker.covenants.covenant_versions() == []
    assert epochs_held(engine) == {1: 4, 2: 2}

    put(broker, "b", 14, 2, [(103, 2)], ids=ids)
    put(broker, "c", 15, 2, [(105, 1)], ids=ids)
    assert set(broker.rotation.status(1, 2, NOW, ["a", "b", "c"]).values()) == {0}
    publish(broker, 2)
    # The group goes on under its id, revision and first seen, on the new token; nobody
    # is told anything new, and epoch 1 is gone.
    (carried,) = broker.tokens.open_groups()
    assert carried.group_id == group.group_id
    assert carried.revision == group.revision
    assert carried.first_seen == group.first_seen
    assert carried.token == token(101)
    assert {p: inbox(broker, p)[: len(told[p])] for p in "abc"} == told
    assert all(len(inbox(broker, p)) == len(told[p]) + 1 for p in "abc")  # + the covenant
    assert epochs_held(engine) == {2: 4}
    assert {p: broker.tokens.usage(p).held for p in "abc"} == held
    # Epoch 2 is current now: a new entry on token 101 grows the carried group.
    put(broker, "c", 16, 2, [(101, 7)], ids=ids, staged=None)
    (grown,) = broker.tokens.open_groups()
    assert grown.group_id == group.group_id
    assert grown.revision == group.revision + 1
    assert inbox(broker, "c")[-1].startswith("c|NEW|")
    assert inbox(broker, "a")[-1].startswith("a|GROWN|")
