"""The OPRF relay between broker replicas on one PostgreSQL database.

A key holder's ``HolderChannel`` is open at one replica; a node's ``Evaluate`` may reach
another. The requesting replica writes the request to ``relay_requests`` and notifies
``samenloop_relay`` (``q:<epoch>:<index>:<id>``); the replica that holds the seat's
channel claims the row (one claim per row, whatever the number of replicas that hear
it), sends the request down the channel, and writes the holder's answer (or why there
is none) to the row, notifying ``a:<id>``. The requesting replica reads and deletes its
rows once all are answered or its time is up. What travels is signed bytes the broker
only forwards, as in one process.

``relay_seats`` says which replica holds which seats; a replica's rows count only while
its listener's connection is alive (``pg_stat_activity``, by the application name that
carries the replica's id), so a replica that was killed holds nothing. Rows of requests
a killed replica left are swept.

A missed notification only costs time: the requester looks at its rows at least every
:data:`RECHECK_SECONDS`, and a request no replica took fails as ``TIMEOUT``, after which
the node's planner asks other holders.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import structlog
from sqlalchemy import Engine

from samenloop.broker.relay import MAX_ANSWER_BYTES, Pending, Switchboard
from samenloop.v1 import broker_pb2, common_pb2

log = structlog.get_logger(__name__)

#: The channel of relay notifications.
RELAY_CHANNEL: Final = "samenloop_relay"
#: The listener's application name, followed by the replica's id.
LISTENER_NAME: Final = "samenloop-listener"
#: How often a requester looks at its rows even without a notification.
RECHECK_SECONDS: Final = 1.0
#: Requests older than this are swept (their requester is gone).
STALE_SECONDS: Final = 300

# Constants only, never built from input.
_ALIVE: Final = (
    "EXISTS (SELECT 1 FROM pg_stat_activity AS a"  # noqa: S608 (constants)
    f" WHERE a.application_name = '{LISTENER_NAME} ' || s.replica)"
)
_PG_SEATS: Final = (
    "SELECT DISTINCT s.holder_index FROM relay_seats AS s"  # noqa: S608 (constants)
    f" WHERE s.key_epoch = %s AND s.replica <> %s AND {_ALIVE}"
)
_PG_OPEN_SEAT: Final = (
    "INSERT INTO relay_seats (replica, key_epoch, holder_index, opened_at)"
    " VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING"
)
_PG_DEAD_SEATS: Final = f"DELETE FROM relay_seats AS s WHERE NOT {_ALIVE}"  # noqa: S608
_PG_CLOSE_SEAT: Final = (
    "DELETE FROM relay_seats WHERE replica = %s AND key_epoch = %s AND holder_index = %s"
)
_PG_REQUEST: Final = (
    "INSERT INTO relay_requests (key_epoch, holder_index, request, created_at)"
    " VALUES (%s, %s, %s, now()) RETURNING id"
)
_PG_NOTIFY: Final = f"SELECT pg_notify('{RELAY_CHANNEL}', %s)"
_PG_CLAIM: Final = (
    "UPDATE relay_requests SET claimed_by = %s"
    " WHERE id = %s AND claimed_by IS NULL AND NOT answered RETURNING request"
)
_PG_ANSWER: Final = (
    "UPDATE relay_requests SET answered = true, response = %s, failure = %s WHERE id = %s"
)
_PG_ANSWERED: Final = "SELECT count(*) FROM relay_requests WHERE id = ANY(%s) AND answered"
_PG_TAKE: Final = (
    "DELETE FROM relay_requests WHERE id = ANY(%s) RETURNING id, answered, response, failure"
)
_PG_SWEEP: Final = "DELETE FROM relay_requests WHERE created_at < now() - make_interval(secs => %s)"


def replica_id() -> str:
    """A new replica's id: random, per process."""
    return secrets.token_hex(8)


class ReplicaRelay:
    """This replica's end of the relay between replicas (see the module's docstring)."""

    def __init__(self, engine: Engine, switchboard: Switchboard, replica: str) -> None:
        self._engine = engine
        self._switchboard = switchboard
        self.replica: Final = replica
        self._lock = threading.Lock()
        #: The requests this replica waits for, by row id: the event of their ``relay`` call.
        self._waiting: dict[int, threading.Event] = {}

    @property
    def listener_name(self) -> str:
        """The application name of this replica's listener connection."""
        return f"{LISTENER_NAME} {self.replica}"

    def _run(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Run statements in one transaction; answers each one's rows (or ``None``)."""
        results: list[Any] = []
        with self._engine.begin() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            for query, params in statements:
                cursor = driver.execute(query, params)
                results.append(cursor.fetchall() if cursor.description else None)
        return results

    # --- seats ---------------------------------------------------------------------

    def opened(self, seats: frozenset[tuple[int, int]]) -> None:
        self._run(
            [(_PG_DEAD_SEATS, ())]
            + [(_PG_OPEN_SEAT, (self.replica, epoch, index)) for epoch, index in sorted(seats)]
        )

    def closed(self, seats: frozenset[tuple[int, int]]) -> None:
        try:
            self._run(
                [(_PG_CLOSE_SEAT, (self.replica, epoch, index)) for epoch, index in sorted(seats)]
            )
        except Exception as error:  # the rows stay; they die with this replica's listener
            log.warning("holder seats not given up", error=type(error).__name__)

    def seats(self, key_epoch: int) -> set[int]:
        (rows,) = self._run([(_PG_SEATS, (key_epoch, self.replica))])
        return {int(row[0]) for row in rows}

    # --- the requesting replica ------------------------------------------------------

    def relay(
        self, key_epoch: int, requests: Mapping[int, common_pb2.Signed], *, timeout: float
    ) -> dict[int, broker_pb2.HolderReply]:
        deadline = time.monotonic() + timeout
        indexes = sorted(requests)
        inserted = self._run(
            [
                (_PG_REQUEST, (key_epoch, index, requests[index].SerializeToString()))
                for index in indexes
            ]
        )
        ids = {int(rows[0][0]): index for rows, index in zip(inserted, indexes, strict=True)}
        event = threading.Event()
        with self._lock:
            for row_id in ids:
                self._waiting[row_id] = event
        try:
            # Notified once the rows are committed, so the holder's replica finds them.
            self._run(
                [
                    (_PG_NOTIFY, (f"q:{key_epoch}:{index}:{row_id}",))
                    for row_id, index in ids.items()
                ]
            )
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                event.wait(min(left, RECHECK_SECONDS))
                event.clear()
                (rows,) = self._run([(_PG_ANSWERED, (list(ids),))])
                if rows[0][0] == len(ids):
                    break
        finally:
            with self._lock:
                for row_id in ids:
                    self._waiting.pop(row_id, None)
            (taken,) = self._run([(_PG_TAKE, (list(ids),))])
        replies = {
            index: broker_pb2.HolderReply(
                holder_index=index, failure=broker_pb2.RELAY_FAILURE_TIMEOUT
            )
            for index in ids.values()
        }
        for row_id, answered, response, failure in taken:
            index = ids[int(row_id)]
            if not answered:
                continue
            if response is not None:
                replies[index] = broker_pb2.HolderReply(
                    holder_index=index, response=common_pb2.Signed.FromString(bytes(response))
                )
            else:
                replies[index] = broker_pb2.HolderReply(
                    holder_index=index,
                    failure=broker_pb2.RelayFailure.ValueType(
                        failure or broker_pb2.RELAY_FAILURE_TIMEOUT
                    ),
                )
        return replies

    def woken(self) -> None:
        """Notifications may have been missed (the listener reconnected): every waiting
        requester looks at its rows now."""
        with self._lock:
            events = set(self._waiting.values())
        for event in events:
            event.set()

    # --- notifications ---------------------------------------------------------------

    def notified(self, payload: str) -> None:
        """A relay notification, heard by this replica's listener."""
        kind, _, rest = payload.partition(":")
        try:
            if kind == "a":
                with self._lock:
                    event = self._waiting.get(int(rest))
                if event is not None:
                    event.set()
            elif kind == "q":
                epoch, index, row_id = (int(part) for part in rest.split(":"))
                self._take(epoch, index, row_id)
        except ValueError:
            log.warning("relay notification not understood")

    def _take(self, key_epoch: int, index: int, row_id: int) -> None:
        """A request for a seat: if its channel is open here, claim it and send it down."""
        if index not in self._switchboard.local(key_epoch):
            return
        (claimed,) = self._run([(_PG_CLAIM, (self.replica, row_id))])
        if not claimed:
            return  # answered, or taken by another replica
        request = common_pb2.Signed.FromString(bytes(claimed[0][0]))

        def done(pending: Pending) -> None:
            self._answer(row_id, pending.response, pending.failure)

        if not self._switchboard.forward(key_epoch, index, request, done):
            self._answer(row_id, None, broker_pb2.RELAY_FAILURE_NOT_CONNECTED)

    def _answer(
        self,
        row_id: int,
        response: common_pb2.Signed | None,
        failure: broker_pb2.RelayFailure.ValueType,
    ) -> None:
        body = None if response is None else response.SerializeToString()
        if body is not None and len(body) > MAX_ANSWER_BYTES:
            body, failure = None, broker_pb2.RELAY_FAILURE_TOO_LARGE
        try:
            self._run(
                [
                    (_PG_ANSWER, (body, None if body is not None else int(failure), row_id)),
                    (_PG_NOTIFY, (f"a:{row_id}",)),
                ]
            )
        except Exception as error:  # the requester times out: its planner asks others
            log.warning("relayed answer not passed on", error=type(error).__name__)

    def sweep(self) -> int:
        """Drop requests whose requester is long gone; answers how many."""
        with self._engine.begin() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            return int(driver.execute(_PG_SWEEP, (STALE_SECONDS,)).rowcount)
