"""The broker replicas a node may dial, and the one its uplink uses now.

Several broker processes may serve one covenant from one PostgreSQL database; a node
lists them (``node.toml: brokers``) and any of them will do. The uplink's loops all
use the current address; a loop whose call failed with ``UNAVAILABLE`` (the replica
is down or unreachable) reports it with the index it used, and the switch moves on
to the next address once, however many loops saw the same outage at once (a report
for an address already left behind changes nothing). Each address keeps its own
channel (gRPC reconnects it by itself), so moving back later costs no handshake
until it is used. :meth:`BrokerSwitch.renew` makes new channels from the next call on,
when the node's TLS certificate was renewed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import grpc
import structlog

from samenloop.v1 import broker_pb2_grpc

log = structlog.get_logger(__name__)


class BrokerSwitch:
    """The addresses in order of preference, a channel per address, and the current one."""

    def __init__(self, addresses: Sequence[str], connect: Callable[[str], grpc.Channel]) -> None:
        if not addresses:
            raise ValueError("at least one broker address is needed")
        self.addresses: tuple[str, ...] = tuple(addresses)
        self._connect = connect
        self._lock = threading.Lock()
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[int, broker_pb2_grpc.BrokerStub] = {}
        #: Channels left by :meth:`renew`: calls open on them run on until they end.
        self._retired: list[grpc.Channel] = []
        self._index = 0

    @classmethod
    def of(cls, channel: grpc.Channel, address: str = "") -> BrokerSwitch:
        """One broker, on a channel made already (tests, tools)."""
        switch = cls([address], lambda _address: channel)
        return switch

    @property
    def index(self) -> int:
        """The index of the address in use now."""
        return self._index

    @property
    def address(self) -> str:
        """The address in use now."""
        return self.addresses[self._index]

    def stub(self) -> broker_pb2_grpc.BrokerStub:
        """The broker stub of the address in use now (its channel made on first use)."""
        with self._lock:
            index = self._index
            stub = self._stubs.get(index)
            if stub is None:
                channel = self._channels[index] = self._connect(self.addresses[index])
                stub = self._stubs[index] = broker_pb2_grpc.BrokerStub(channel)
            return stub

    def unavailable(self, index: int) -> bool:
        """A call to the address at ``index`` found the broker unavailable: move on to the
        next address, unless another loop did already. Answers whether it moved."""
        with self._lock:
            if index != self._index or len(self.addresses) == 1:
                return False
            self._index = (index + 1) % len(self.addresses)
            moved_to = self.addresses[self._index]
        log.warning(
            "broker unavailable: trying the next address",
            unavailable=self.addresses[index],
            next=moved_to,
        )
        return True

    def renew(self) -> None:
        """Make new channels from the next call on (the node's TLS certificate was renewed):
        calls open on the old ones (the mailbox stream) run on until they end, and are not
        cut; the old channels are closed with the switch."""
        with self._lock:
            self._retired.extend(self._channels.values())
            self._channels.clear()
            self._stubs.clear()

    def close(self) -> None:
        """Close every channel made."""
        with self._lock:
            channels = [*self._channels.values(), *self._retired]
            self._channels.clear()
            self._stubs.clear()
            self._retired.clear()
        for channel in channels:
            channel.close()
