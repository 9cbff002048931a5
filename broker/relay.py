"""The OPRF relay: requests from nodes, down the key holders' own outbound streams.

Nodes only dial out, so a key holder opens a ``HolderChannel`` and the broker
pushes requests down it. This module is the in-process switchboard between
``Evaluate`` calls and those channels: holders register the seats they hold,
an evaluation is split into one relayed request per holder, and the answers
come back by relay id. The broker only forwards signed bytes: it cannot read
or forge what the node asks or what the holder answers.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from samenloop.v1 import broker_pb2, common_pb2

#: What a channel's outbound queue carries: a request, or ``None`` to close it.
Outbound = broker_pb2.RelayedEvaluation | None
#: The largest answer the broker passes on from one holder: its share of one message,
#: so that an ``EvaluateResponse`` with every holder's answer always fits (a real answer
#: for the most blinded elements a request may carry is about 35 KB).
MAX_ANSWER_BYTES: int = common_pb2.LIMITS_MAX_MESSAGE_BYTES // (
    common_pb2.LIMITS_MAX_KEY_HOLDERS + 1
)


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    response: common_pb2.Signed | None = None
    failure: broker_pb2.RelayFailure.ValueType = broker_pb2.RELAY_FAILURE_UNSPECIFIED


@dataclass
class Channel:
    """One holder's open ``HolderChannel``: the seats it serves and its outbound queue."""

    party: str
    seats: frozenset[tuple[int, int]]  # (key epoch, holder index)
    outbound: queue.Queue[Outbound] = field(default_factory=queue.Queue)
    pending: dict[int, _Pending] = field(default_factory=dict)

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

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[tuple[int, int], Channel] = {}
        self._relay_ids = itertools.count(1)

    def open(self, party: str, seats: frozenset[tuple[int, int]]) -> Channel:
        """Register a holder's channel; a newer channel for a seat replaces the older one."""
        channel = Channel(party, seats)
        with self._lock:
            for seat in seats:
                old = self._channels.get(seat)
                if old is not None:
                    self._close_locked(old)
                self._channels[seat] = channel
        return channel

    def close(self, channel: Channel) -> None:
        with self._lock:
            self._close_locked(channel)

    def _close_locked(self, channel: Channel) -> None:
        for seat in channel.seats:
            if self._channels.get(seat) is channel:
                del self._channels[seat]
        for pending in channel.pending.values():
            if not pending.done.is_set():
                pending.failure = broker_pb2.RELAY_FAILURE_CHANNEL_CLOSED
                pending.done.set()
        channel.outbound.put(None)

    def close_party(self, party: str) -> None:
        """Close every channel of a party (it was removed from the covenant)."""
        with self._lock:
            for channel in {c for c in self._channels.values() if c.party == party}:
                self._close_locked(channel)

    def connected(self, key_epoch: int) -> list[int]:
        with self._lock:
            return sorted(index for (epoch, index) in self._channels if epoch == key_epoch)

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
            pending.done.set()

    def relay(
        self,
        key_epoch: int,
        requests: Mapping[int, common_pb2.Signed],
        *,
        timeout: float,
    ) -> dict[int, broker_pb2.HolderReply]:
        """Send each holder its request and wait (at most ``timeout`` seconds in all)."""
        waiting: dict[int, tuple[Channel, int, _Pending]] = {}
        replies: dict[int, broker_pb2.HolderReply] = {}
        with self._lock:
            for index, request in requests.items():
                channel = self._channels.get((key_epoch, index))
                if channel is None:
                    replies[index] = broker_pb2.HolderReply(
                        holder_index=index, failure=broker_pb2.RELAY_FAILURE_NOT_CONNECTED
                    )
                    continue
                relay_id = next(self._relay_ids)
                pending = _Pending()
                channel.pending[relay_id] = pending
                waiting[index] = (channel, relay_id, pending)
                channel.outbound.put(
                    broker_pb2.RelayedEvaluation(relay_id=relay_id, request=request)
                )
        deadline = time.monotonic() + timeout
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
