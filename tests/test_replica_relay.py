"""The OPRF relay between broker replicas on one PostgreSQL database.

Two replicas in this process, each with its own engine, switchboard, relay and
listener, as two broker processes have: a holder's channel open at one answers the
evaluations the other takes, and what the broker passes on is the signed bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from samenloop.broker import relay
from samenloop.broker.notify import Listener
from samenloop.broker.relay import Channel, Switchboard
from samenloop.broker.replica_relay import RELAY_CHANNEL, ReplicaRelay, replica_id
from samenloop.policies import database
from samenloop.v1 import broker_pb2, common_pb2

from daemons import wait_until

MIGRATIONS = "samenloop.broker.migrations"
EPOCH = 1
WAIT = 30.0


@dataclass
class Replica:
    engine: sa.Engine
    switchboard: Switchboard
    relay: ReplicaRelay
    listener: Listener

    def stop(self) -> None:
        self.listener.stop()
        self.engine.dispose()


def _replica(url: str) -> Replica:
    engine = database.make_engine(url)
    switchboard = Switchboard()
    relay = ReplicaRelay(engine, switchboard, replica_id())
    switchboard.remote = relay
    listener = Listener(
        engine, {RELAY_CHANNEL: relay.notified}, on_listening=relay.woken, name=relay.listener_name
    )
    listener.start()
    assert listener.listening.wait(WAIT)
    return Replica(engine, switchboard, relay, listener)


@pytest.fixture
def replicas(own_postgres_url: str) -> Iterator[tuple[Replica, Replica]]:
    engine = database.make_engine(own_postgres_url)
    database.upgrade(engine, MIGRATIONS)
    engine.dispose()
    a, b = _replica(own_postgres_url), _replica(own_postgres_url)
    yield a, b
    a.stop()
    b.stop()


def _holder(switchboard: Switchboard, channel: Channel, *, answer: bool = True) -> threading.Thread:
    """A key holder at the other end of ``channel``: answers each request with its body
    signed back (here: prefixed), until the channel closes."""

    def serve() -> None:
        for item in channel.requests(0.2):
            if isinstance(item, broker_pb2.RelayedEvaluation) and answer:
                response = common_pb2.Signed(body=b"answer to " + item.request.body)
                switchboard.answer(channel, item.relay_id, response)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _rows(replica: Replica, table: str) -> int:
    with replica.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_holder_at_one_replica_answers_what_another_took(replicas):
    a, b = replicas
    channel = b.switchboard.open("politie", frozenset({(EPOCH, 2)}))
    holder = _holder(b.switchboard, channel)
    here = a.switchboard.open("gemeente", frozenset({(EPOCH, 1)}))
    _holder(a.switchboard, here)
    assert a.switchboard.connected(EPOCH) == [1, 2]
    assert b.switchboard.connected(EPOCH) == [1, 2]
    replies = a.switchboard.relay(
        EPOCH,
        {
            1: common_pb2.Signed(body=b"q1"),
            2: common_pb2.Signed(body=b"q2"),
            3: common_pb2.Signed(body=b"q3"),
        },
        timeout=WAIT,
    )
    assert replies[1].response.body == b"answer to q1"  # down its channel here
    assert replies[2].response.body == b"answer to q2"  # through replica b
    assert replies[3].failure == broker_pb2.RELAY_FAILURE_NOT_CONNECTED
    assert _rows(a, "relay_requests") == 0  # taken and deleted once answered
    b.switchboard.close(channel)
    holder.join(WAIT)
    assert a.switchboard.connected(EPOCH) == [1]
    replies = a.switchboard.relay(EPOCH, {2: common_pb2.Signed(body=b"q")}, timeout=WAIT)
    assert replies[2].failure == broker_pb2.RELAY_FAILURE_NOT_CONNECTED


def test_a_holder_that_does_not_answer_times_out_and_leaves_no_rows(replicas):
    a, b = replicas
    channel = b.switchboard.open("politie", frozenset({(EPOCH, 2)}))
    _holder(b.switchboard, channel, answer=False)
    replies = a.switchboard.relay(EPOCH, {2: common_pb2.Signed(body=b"q")}, timeout=1.5)
    assert replies[2].failure == broker_pb2.RELAY_FAILURE_TIMEOUT
    assert _rows(a, "relay_requests") == 0
    b.switchboard.close(channel)  # the late answer's row is gone: nothing to update


def test_the_seats_of_a_replica_that_died_count_for_nothing(replicas):
    a, b = replicas
    b.switchboard.open("politie", frozenset({(EPOCH, 2)}))
    assert a.switchboard.connected(EPOCH) == [2]
    b.listener.stop()  # as when its process is killed: its connection ends
    wait_until(lambda: a.switchboard.connected(EPOCH) == [], WAIT, "b's seats given up")
    replies = a.switchboard.relay(EPOCH, {2: common_pb2.Signed(body=b"q")}, timeout=WAIT)
    assert replies[2].failure == broker_pb2.RELAY_FAILURE_NOT_CONNECTED
    a.switchboard.open("gemeente", frozenset({(EPOCH, 1)}))  # clears dead replicas' rows
    assert _rows(a, "relay_seats") == 1


def test_forwarded_requests_a_holder_never_answers_do_not_pile_up(monkeypatch):
    """In memory: a request forwarded from another replica and never answered is given up
    (``TIMEOUT``) once it is older than ``FORWARDED_SECONDS``, at the next one forwarded."""
    monkeypatch.setattr(relay, "FORWARDED_SECONDS", 0.0)
    switchboard = Switchboard()
    channel = switchboard.open("politie", frozenset({(EPOCH, 2)}))
    done: list[int] = []
    request = common_pb2.Signed(body=b"q")
    assert switchboard.forward(EPOCH, 2, request, lambda p: done.append(p.failure))
    assert switchboard.forward(EPOCH, 2, request, lambda p: done.append(p.failure))
    assert done == [broker_pb2.RELAY_FAILURE_TIMEOUT]
    assert len(channel.pending) == 1
    assert not switchboard.forward(EPOCH, 3, request, lambda p: done.append(p.failure))
    switchboard.close(channel)  # the one still waiting: the channel closed
    assert done == [broker_pb2.RELAY_FAILURE_TIMEOUT, broker_pb2.RELAY_FAILURE_CHANNEL_CLOSED]
