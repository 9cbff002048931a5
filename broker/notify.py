"""What one broker replica tells the others, through PostgreSQL's LISTEN/NOTIFY.

Several broker processes may serve one covenant from one PostgreSQL database, and a node
may be connected to any of them: a hit notice that a submission on replica A puts in a
party's mailbox must wake that party's ``StreamMailbox`` on replica B. The transaction
that puts items in mailboxes sends ``NOTIFY`` with each recipient's party id (see
``MailboxStore.put``): PostgreSQL delivers it to every listener once the transaction
commits, never if it rolls back. Each broker process keeps one :class:`Listener`
connection that rings its own :class:`MailboxBell` for them. A covenant version one
replica accepted is announced the same way (``samenloop_covenant``): the others take it
from the store (``BrokerService.adopt_published``).

A notification is only a wake-up, never the item: the stream reads the mailbox itself.
One missed (the listening connection dropped, the server failed over) only delays:
the listener rings every stream once it listens again, and a stream reads its mailbox
at each heartbeat anyway. SQLite serves one broker process: its bell rings in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import psycopg
import structlog
from psycopg import sql
from sqlalchemy import Engine

log = structlog.get_logger(__name__)

#: The channel of mailbox wake-ups; each payload is one party id.
MAILBOX_CHANNEL: Final = "samenloop_mailbox"
#: The channel of covenant versions accepted by a replica; each payload is the version.
COVENANT_CHANNEL: Final = "samenloop_covenant"
#: How long a listener waits for notifications before it looks whether it should stop.
POLL_SECONDS: Final = 1.0
#: Waits between attempts to listen again after the connection dropped.
RETRY_FIRST: Final = 0.2
RETRY_MAX: Final = 5.0


class MailboxBell:
    """Wakes ``StreamMailbox`` calls when their party's mailbox gets new items."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._rings: dict[str, int] = {}
        self._everyone = 0  # rings for every party at once (see ring_all)

    def ring(self, parties: Sequence[str]) -> None:
        with self._condition:
            for party in parties:
                self._rings[party] = self._rings.get(party, 0) + 1
            self._condition.notify_all()

    def ring_all(self) -> None:
        """Wake every stream: wake-ups may have been missed (the listener reconnected)."""
        with self._condition:
            self._everyone += 1
            self._condition.notify_all()

    def count(self, party: str) -> int:
        with self._condition:
            return self._rings.get(party, 0) + self._everyone

    def wait(self, party: str, seen: int, timeout: float) -> int:
        with self._condition:
            self._condition.wait_for(lambda: self.count(party) != seen, timeout)
            return self.count(party)


class Listener:
    """One connection of its own that listens on ``channels`` and hands each payload to its
    channel's handler, in a thread; it listens again when the connection drops (a server
    restart, a failover), and then calls ``on_listening`` (wake-ups may have been missed)."""

    def __init__(
        self,
        engine: Engine,
        handlers: Mapping[str, Callable[[str], None]],
        *,
        on_listening: Callable[[], None] = lambda: None,
        name: str = "samenloop-listener",
    ) -> None:
        """``name``: the connection's application name (the relay between replicas tells
        a live replica by its listener's, see ``replica_relay``)."""
        self._engine = engine
        self._name = name
        self._handlers = dict(handlers)
        self._on_listening = on_listening
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
        self._connection: psycopg.Connection[Any] | None = None
        #: Set each time it listens (again): for tests and start-up.
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(POLL_SECONDS * 3)

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection as the engine's (same server, database and options), outside its pool."""
        args, params = self._engine.dialect.create_connect_args(self._engine.url)
        params = {**params, "autocommit": True, "application_name": self._name}
        connection: psycopg.Connection[Any] = psycopg.connect(*args, **params)
        for channel in self._handlers:
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return connection

    def _run(self) -> None:
        delay = RETRY_FIRST
        down = False
        while not self._stop.is_set():
            try:
                with self._connect() as connection:
                    if down:
                        log.info("listening to the database again")
                    down, delay = False, RETRY_FIRST
                    self._on_listening()
                    self.listening.set()
                    while not self._stop.is_set():
                        for notice in connection.notifies(timeout=POLL_SECONDS):
                            handler = self._handlers.get(notice.channel)
                            if handler is not None:
                                handler(notice.payload)
            except psycopg.Error as error:
                self.listening.clear()
                if not down:  # one warning per outage; the retries are debug
                    log.warning(
                        "lost the database's notifications: listening again with backoff",
                        error=type(error).__name__,
                    )
                else:
                    log.debug("listening failed", error=type(error).__name__)
                down = True
            except Exception as error:  # a bug: keep listening, say where
                self.listening.clear()
                log.error("listener error", error=type(error).__name__, exc_info=True)
                down = True
            self._stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX)
