"""The OPRF relay: requests from nodes, down the key holders' own outbound streams.

Nodes only dial out, so a key holder opens a ``HolderChannel`` and the broker
pushes requests down it. This module is the in-process switchboard between
``Evaluate`` calls and those channels: holders register the seats they hold,
an evaluation is split into one relayed request per holder, and the answers
come back by relay id. The broker only forwards signed bytes: it cannot read
or forge what the node asks or what the holder answers.

Several broker replicas on one PostgreSQL database: a holder's channel is open at one
replica, the ``Evaluate`` call may reach another. The switchboard then has a
:class:`Remote` (:class:`~samenloop.broker.replica_relay.ReplicaRelay`), which says which
seats other replicas hold, carries the requests for those there and their answers back,
and hands this replica the requests others took for its channels (:meth:`forward`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from samenloop.v1 import broker_pb2, common_pb2

#: What a channel's outbound queue carries: a request, or ``None`` to close it.
Outbound = broker_pb2.RelayedEvaluation | None
#: The largest answer the broker passes on from one holder: its share of one message,
#: so that an ``EvaluateResponse`` with every holder's answer always fits (a real answer
#: for the most blinded elements a request may carry is about 35 KB).
#: How long a request forwarded from another replica waits for its holder's answer here
#: (its requester gave up long before: ``Evaluate`` waits seconds).
FORWARDED_SECONDS: float = 300.0
MAX_ANSWER_BYTES: int = common_pb2.LIMITS_MAX_MESSAGE_BYTES // (
    common_pb2.LIMITS_MAX_KEY_HOLDERS + 1
)


@dataclass
class Pending:
    done: threading.Event = field(default_factory=threading.Event)
    response: common_pb2.Signed | None = None
    failure: broker_pb2.RelayFailure.ValueType = broker_pb2.RELAY_FAILURE_UNSPECIFIED
    #: A request another replica took: called (outside the switchboard's lock) once done.
    on_done: Callable[[Pending], None] | None = None
    #: When it was sent down the channel (monotonic), for forwarded ones never answered.
    since: float = field(default_factory=time.monotonic)

    def finish(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


class Remote(Protocol):
    """The relay between broker replicas (see the module's docstring)."""

    def opened(self, seats: frozenset[tuple[int, int]]) -> None:
        """This replica now holds these seats' channels."""

    def closed(self, seats: frozenset[tuple[int, int]]) -> None:
        """This replica no longer holds these seats' channels."""

    def seats(self, key_epoch: int) -> set[int]:
        """The holder indexes of ``key_epoch`` whose channels other replicas hold."""
        ...

    def relay(
        self, key_epoch: int, requests: Mapping[int, common_pb2.Signed], *, timeout: float
    ) -> dict[int, broker_pb2.HolderReply]:
        """Send each request to the replica that holds its seat; wait for the answers."""
        ...


@dataclass
class Channel:
    """One holder's open ``HolderChannel``: the seats it serves and its outbound queue."""

    party: str
    seats: frozenset[tuple[int, int]]  # (key epoch, holder index)
    outbound: queue.Queue[Outbound] = field(default_factory=queue.Queue)
    pending: dict[int, Pending] = field(default_factory=dict)
    #: Closed already (its seats were given up once).
    closed: bool = False

    def requests(self, heartbeat_seconds: float) -> Iterator[Outbound | str]:
        """What to send down the channel: requests, ``"heartbeat"`` when idle, until closed."""
        while True:
            try:
                item = self.outbound.get(timeout=heartbeat_seconds)
            except queue.Empty:
                yield "heartbeat"
                continue
            if item is None:
                return
            yield item


class Switchboard:
    """Routes relayed evaluations to the channels of the holders that hold the seats."""

    def __init__(self, remote: Remote | None = None) -> None:
        self._lock = threading.Lock()
        self._channels: dict[tuple[int, int], Channel] = {}
        self._relay_ids = itertools.count(1)
        #: The relay between broker replicas (PostgreSQL), if any.
        self.remote = remote

    def open(self, party: str, seats: frozenset[tuple[int, int]]) -> Channel:
        """Register a holder's channel; a newer channel for a seat replaces the older one."""
        channel = Channel(party, seats)
        closed: list[Pending] = []
        with self._lock:
            for seat in seats:
                old = self._channels.get(seat)
                if old is not None:
                    closed += self._close_locked(old)
                self._channels[seat] = channel
        self._finish(closed)
        if self.remote is not None:
            self.remote.opened(seats)
        return channel

    def close(self, channel: Channel) -> None:
        with self._lock:
            closed = self._close_locked(channel)
        self._finish(closed)

    def _finish(self, closed: list[Pending]) -> None:
        for pending in closed:
            pending.finish()

    def _close_locked(self, channel: Channel) -> list[Pending]:
        """Close ``channel``; answers its requests still waiting, to be finished once the
        lock is released (``CHANNEL_CLOSED``)."""
        for seat in channel.seats:
            if self._channels.get(seat) is channel:
                del self._channels[seat]
        closed = [p for p in channel.pending.values() if not p.done.is_set()]
        for pending in closed:
            pending.failure = broker_pb2.RELAY_FAILURE_CHANNEL_CLOSED
        channel.pending.clear()
        channel.outbound.put(None)
        gone = frozenset(seat for seat in channel.seats if seat not in self._channels)
        if self.remote is not None and gone and not channel.closed:
            channel.closed = True
            remote = self.remote
            closed.append(Pending(on_done=lambda _pending: remote.closed(gone)))
        return closed

    def close_party(self, party: str) -> None:
        """Close every channel of a party (it was removed from the covenant)."""
        self._close_where(lambda channel: channel.party == party)

    def close_all(self) -> None:
        """Close every channel (the broker stops)."""
        self._close_where(lambda _channel: True)

    def _close_where(self, which: Callable[[Channel], bool]) -> None:
        closed: list[Pending] = []
        with self._lock:
            # A channel holds several seats: each once (by identity; channels compare by value).
            for channel in {id(c): c for c in self._channels.values() if which(c)}.values():
                closed += self._close_locked(channel)
        self._finish(closed)

    def local(self, key_epoch: int) -> list[int]:
        """The holder indexes of ``key_epoch`` whose channels are open here."""
        with self._lock:
            return sorted(index for (epoch, index) in self._channels if epoch == key_epoch)

    def connected(self, key_epoch: int) -> list[int]:
        """The holder indexes of ``key_epoch`` whose channels are open here or at another
        replica."""
        here = self.local(key_epoch)
        if self.remote is None:
            return here
        return sorted(set(here) | self.remote.seats(key_epoch))

    def answer(self, channel: Channel, relay_id: int, response: common_pb2.Signed) -> None:
        """A holder's answer; one for a relay id this channel was not sent is ignored, and
        one larger than :data:`MAX_ANSWER_BYTES` is not passed on (``TOO_LARGE``)."""
        with self._lock:
            pending = channel.pending.pop(relay_id, None)
        if pending is not None:
            if response.ByteSize() > MAX_ANSWER_BYTES:
                pending.failure = broker_pb2.RELAY_FAILURE_TOO_LARGE
            else:
                pending.response = response
            pending.finish()

    def forward(
        self,
        key_epoch: int,
        index: int,
        request: common_pb2.Signed,
        on_done: Callable[[Pending], None],
    ) -> bool:
        """A request another replica took, for a seat whose channel is open here: send it
        down that channel; ``on_done`` gets its answer or failure. False if no channel here
        holds the seat (it closed meanwhile)."""
        with self._lock:
            channel = self._channels.get((key_epoch, index))
            if channel is None:
                return False
            # A holder that never answers (it drops what names no requester) must not make
            # the forwarded requests pile up for as long as its channel stays open.
            oldest = time.monotonic() - FORWARDED_SECONDS
            stale = [
                relay_id
                for relay_id, pending in channel.pending.items()
                if pending.on_done is not None and pending.since < oldest
            ]
            expired = [channel.pending.pop(relay_id) for relay_id in stale]
            relay_id = next(self._relay_ids)
            channel.pending[relay_id] = Pending(on_done=on_done)
            channel.outbound.put(broker_pb2.RelayedEvaluation(relay_id=relay_id, request=request))
        for pending in expired:
            pending.failure = broker_pb2.RELAY_FAILURE_TIMEOUT
            pending.finish()
        return True

    def relay(
        self,
        key_epoch: int,
        requests: Mapping[int, common_pb2.Signed],
        *,
        timeout: float,
    ) -> dict[int, broker_pb2.HolderReply]:
        """Send each holder its request and wait (at most ``timeout`` seconds in all): down its
        channel here, or through the replica that holds it."""
        waiting: dict[int, tuple[Channel, int, Pending]] = {}
        replies: dict[int, broker_pb2.HolderReply] = {}
        elsewhere: dict[int, common_pb2.Signed] = {}
        with self._lock:
            missing = [i for i in requests if (key_epoch, i) not in self._channels]
        remote_seats = self.remote.seats(key_epoch) if self.remote and missing else set()
        with self._lock:
            for index, request in requests.items():
                channel = self._channels.get((key_epoch, index))
                if channel is None:
                    if index in remote_seats:
                        elsewhere[index] = request
                        continue
                    replies[index] = broker_pb2.HolderReply(
                        holder_index=index, failure=broker_pb2.RELAY_FAILURE_NOT_CONNECTED
                    )
                    continue
                relay_id = next(self._relay_ids)
                pending = Pending()
                channel.pending[relay_id] = pending
                waiting[index] = (channel, relay_id, pending)
                channel.outbound.put(
                    broker_pb2.RelayedEvaluation(relay_id=relay_id, request=request)
                )
        deadline = time.monotonic() + timeout
        if elsewhere and self.remote is not None:  # the channels here work meanwhile
            replies.update(self.remote.relay(key_epoch, elsewhere, timeout=timeout))
        for index, (channel, relay_id, pending) in waiting.items():
            pending.done.wait(max(0.0, deadline - time.monotonic()))
            with self._lock:
                channel.pending.pop(relay_id, None)
            if pending.response is not None:
                replies[index] = broker_pb2.HolderReply(
                    holder_index=index, response=pending.response
                )
            else:
                failure = pending.failure or broker_pb2.RELAY_FAILURE_TIMEOUT
                replies[index] = broker_pb2.HolderReply(holder_index=index, failure=failure)
        return replies
