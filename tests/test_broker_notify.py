"""Mailbox wake-ups between broker replicas, through PostgreSQL's LISTEN/NOTIFY.

A replica's listener hears what another replica's committed transaction put in a
mailbox (never what rolled back) and rings its own bell; when its connection drops it
listens again and rings every stream, since wake-ups may have been missed meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from samenloop.broker.mailbox import ItemKind
from samenloop.broker.notify import MAILBOX_CHANNEL, Listener, MailboxBell
from samenloop.broker.store import BrokerStore
from samenloop.policies import database

from daemons import wait_until

MIGRATIONS = "samenloop.broker.migrations"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
WAIT = 30.0


@pytest.fixture
def engine(own_postgres_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(own_postgres_url)
    database.upgrade(engine, MIGRATIONS)
    yield engine
    engine.dispose()


@pytest.fixture
def replica(engine: sa.Engine) -> Iterator[tuple[MailboxBell, Listener]]:
    """The bell and listener of a broker replica (its own engine, as another process)."""
    own = database.make_engine(engine.url.render_as_string(hide_password=False))
    bell = MailboxBell()
    listener = Listener(
        own, {MAILBOX_CHANNEL: lambda party: bell.ring([party])}, on_listening=bell.ring_all
    )
    listener.start()
    assert listener.listening.wait(WAIT)
    yield bell, listener
    listener.stop()
    own.dispose()


def test_what_another_replica_commits_rings_here(engine, replica):
    bell, _ = replica
    other = BrokerStore(engine)
    other.mailboxes.enqueue("a", b"x", ItemKind.ENVELOPE, NOW)  # creates the parties
    other.mailboxes.enqueue("b", b"x", ItemKind.ENVELOPE, NOW)
    wait_until(lambda: bell.count("b") >= 1, WAIT, "b rung")
    before_a = bell.count("a")

    def rolled_back() -> None:
        with other.database.write() as tx:
            other.mailboxes.put(tx, {"a": [(ItemKind.ENVELOPE, b"y")]}, NOW, skip_closed=False)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    before_b = bell.count("b")
    other.mailboxes.enqueue("b", b"z", ItemKind.ENVELOPE, NOW)
    wait_until(lambda: bell.count("b") > before_b, WAIT, "b rung again")
    # Notifications arrive in commit order: had the rolled-back one been sent, it came first.
    assert bell.count("a") == before_a
    assert [i.payload for i in other.mailboxes.fetch("a", 0, now=NOW).items] == [b"x"]


def test_a_listener_that_lost_its_connection_listens_again_and_rings_everyone(engine, replica):
    bell, listener = replica
    other = BrokerStore(engine)
    before = bell.count("c")
    listener.listening.clear()
    with engine.begin() as conn:  # as a server restart or a failover would
        ended = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'samenloop-listener' AND datname = current_database()"
            )
        ).scalar_one()
    assert ended == 1
    assert listener.listening.wait(WAIT)
    assert bell.count("c") > before  # every stream reads its mailbox again
    rung = bell.count("c")
    other.mailboxes.enqueue("c", b"x", ItemKind.ENVELOPE, NOW)
    wait_until(lambda: bell.count("c") > rung, WAIT, "c rung after the reconnect")
