"""A node's store during a rotation of the OPRF key, on SQLite and PostgreSQL: which
identifiers are re-tokenised under the staged epoch, their submit batches under the same
refs (once, whatever repeats), progress, and the switch that makes them current."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from samenloop.node.daemon.repositories import Repositories
from samenloop.node.signals.models import HitProofKey, IdentifierState, RestatedToken
from samenloop.node.signals.store import OutboxBatch
from samenloop.policies import database
from tests.test_node_store import MIGRATIONS, NOW, clear, signal, token


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(database_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    clear(engine)
    engine.dispose()


@pytest.fixture
def node(engine: sa.Engine) -> Repositories:
    return Repositories.open(engine, random_bytes=random.Random(7).randbytes)


def staged_token(n: int) -> bytes:
    return (1000 + n).to_bytes(32, "big")


def submitted(node: Repositories) -> list[OutboxBatch]:
    """Tokenise every pending identifier under epoch 1 and have the broker ack it."""
    pending = node.signals.pending_identifiers(1000, now=NOW)
    batches = node.signals.record_tokens(
        {p.id: token(p.id) for p in pending},
        1,
        now=NOW,
        proof_keys={p.id: bytes([p.id]) * 32 for p in pending},
    )
    for batch in batches:
        assert node.signals.mark_acked(batch.client_batch_id, now=NOW)
    return batches


def test_restating_takes_each_acknowledged_identifier_once_under_its_own_ref(node, engine):
    node.signals.add_signals([signal("S1", 1, 2), signal("S2", 3)], now=NOW)
    (first,) = submitted(node)
    refs = {e.token: e.signal_ref for e in first.entries}
    node.signals.add_signals([signal("S3", 4)], now=NOW)  # imported while staged: pending
    assert node.signals.rotation_progress(1, 2) == (0, 3)

    candidates = node.signals.restate_candidates(1, 2, 10, now=NOW)
    assert [c.identifier.canonical for c in candidates] == ["00000001", "00000002", "00000003"]
    made = {c.id: staged_token(c.id) for c in candidates}
    (batch,) = node.signals.record_restated(
        made, 2, now=NOW, proof_keys={c.id: bytes([200 + c.id]) * 32 for c in candidates}
    )
    assert batch.key_epoch == 2
    assert {e.signal_ref for e in batch.entries} == set(refs.values())  # the same refs
    assert {e.token for e in batch.entries} == set(made.values())
    # Repeated (a crash after the commit): nothing twice.
    assert node.signals.record_restated(made, 2, now=NOW) == []
    assert node.signals.restate_candidates(1, 2, 10, now=NOW) == []
    assert node.signals.rotation_progress(1, 2) == (3, 3)

    # The import while staged, once acknowledged under epoch 1, comes next.
    submitted(node)
    (late,) = node.signals.restate_candidates(1, 2, 10, now=NOW)
    assert late.identifier.canonical == "00000004"
    assert node.signals.rotation_progress(1, 2) == (3, 4)
    # A staged batch the broker refuses is re-stated anew; acked, identifiers stay put.
    (again,) = node.signals.record_restated({late.id: staged_token(late.id)}, 2, now=NOW)
    assert node.signals.reject_batch(again.client_batch_id, now=NOW)
    assert [c.id for c in node.signals.restate_candidates(1, 2, 10, now=NOW)] == [late.id]
    (again,) = node.signals.record_restated({late.id: staged_token(late.id)}, 2, now=NOW)
    assert node.signals.mark_acked(again.client_batch_id, now=NOW)
    assert node.signals.mark_acked(batch.client_batch_id, now=NOW)
    assert {i.state for s in ("S1", "S2", "S3") for i in node.signals.signal(s).identifiers} == {
        IdentifierState.SUBMITTED
    }

    # A withdrawn identifier is not live any more, and not re-stated.
    node.signals.withdraw_signal("S2", now=NOW)
    assert node.signals.rotation_progress(1, 2) == (3, 3)

    # The switch: staged tokens and proof keys become current; nothing is left staged.
    assert node.signals.switch_key_epoch(2) == (4, 0)
    for record in node.signals.signal("S1").identifiers:
        assert record.key_epoch == 2
        assert record.token == staged_token(record.id)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(RestatedToken)).scalar_one() == 0
        keys = dict(conn.execute(sa.select(HitProofKey.identifier_id, HitProofKey.proof_key)).all())
    assert keys[candidates[0].id] == bytes([200 + candidates[0].id]) * 32
    assert node.signals.switch_key_epoch(2) == (0, 0)  # again: nothing


def test_an_identifier_without_a_staged_token_is_tokenised_again_after_the_switch(node):
    node.signals.add_signals([signal("S1", 1), signal("S2", 2)], now=NOW)
    submitted(node)
    (one, _) = node.signals.restate_candidates(1, 2, 10, now=NOW)
    node.signals.record_restated({one.id: staged_token(one.id)}, 2, now=NOW)
    assert node.signals.switch_key_epoch(2) == (1, 1)
    (pending,) = node.signals.pending_identifiers(10, now=NOW)
    assert pending.identifier.canonical == "00000002"


def test_a_withdrawn_staging_drops_the_staged_tokens(node, engine):
    node.signals.add_signals([signal("S1", 1)], now=NOW)
    submitted(node)
    (one,) = node.signals.restate_candidates(1, 2, 10, now=NOW)
    node.signals.record_restated({one.id: staged_token(one.id)}, 2, now=NOW)
    assert node.signals.switch_key_epoch(1, 2) == (0, 0)  # still staged: kept
    assert node.signals.rotation_progress(1, 2) == (1, 1)
    assert node.signals.switch_key_epoch(1, None) == (0, 0)  # withdrawn: dropped
    assert node.signals.rotation_progress(1, 2) == (0, 1)
    assert node.signals.signal("S1").identifiers[0].key_epoch == 1


def test_the_metrics_show_what_is_left_to_re_tokenise_while_staged(node):
    from prometheus_client import generate_latest

    from samenloop.node.daemon.metrics import NodeMetrics
    from tests.test_metrics import parse

    node.signals.add_signals([signal("S1", 1, 2)], now=NOW)
    submitted(node)
    staged: list[tuple[int, int] | None] = [None]
    metrics = NodeMetrics()
    metrics.watch(node, lambda: (True, NOW), lambda: NOW, rotation=lambda: staged[0])
    name = "samenloop_node_rotation_identifiers_left"
    assert (name, ()) not in parse(generate_latest(metrics.registry).decode())
    staged[0] = (1, 2)
    assert parse(generate_latest(metrics.registry).decode())[(name, ())] == 2
    (one, _) = node.signals.restate_candidates(1, 2, 10, now=NOW)
    node.signals.record_restated({one.id: staged_token(one.id)}, 2, now=NOW)
    assert parse(generate_latest(metrics.registry).decode())[(name, ())] == 1
