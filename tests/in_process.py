"""A covenant whose broker and nodes run inside the test process, over real gRPC with mTLS.

``build_server`` and ``build_node`` start the same servers the daemons run, on loopback,
with the SQLite databases a provisioned covenant names; tests talk to each node through
the client library (``NodeClient``) and may reach into a node's store or the broker's
mailbox where an attack or a repair needs it. Cheaper than processes (``daemons.py``)
and able to share a clock the test moves; processes are for crashes and signals.

Shared by the end-to-end tests of disclosure, cases, the picture and covenant versions.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from samenloop.node.client import NodeClient
from samenloop.node.daemon import models
from samenloop.node.daemon.process import RunningNode, build_node
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies.config import load_broker_config, load_node_config
from samenloop.policies.policy import Policy

from daemons import migrate

#: How long a test waits for what the daemons do in the background.
WAIT = 30.0


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy and return that; fail naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Clock:
    """The time every daemon of a cluster reads: the real time plus an offset the test moves."""

    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._offset += delta


@dataclass
class Cluster:
    """A provisioned covenant with its broker and nodes running in this process."""

    provisioned: Provisioned
    clock: Clock
    broker: Any  # RunningBroker
    nodes: dict[str, RunningNode] = field(default_factory=dict)
    clients: dict[str, NodeClient] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.provisioned.root

    @property
    def broker_database(self) -> Path:
        """The broker's SQLite file."""
        url = load_broker_config(self.provisioned.broker_config).database_url
        assert url.startswith("sqlite:///"), url
        return Path(url.removeprefix("sqlite:///"))

    def start(self, party: str) -> None:
        config = load_node_config(self.provisioned.node_configs[party])
        self.nodes[party] = build_node(config, clock=self.clock)
        assert config.api_listen is not None
        self.clients[party] = NodeClient.from_config(self.provisioned.node_configs[party])

    def stop(self, party: str) -> None:
        self.clients.pop(party).close()
        self.nodes.pop(party).stop(None)

    def close(self) -> None:
        for party in list(self.nodes):
            self.stop(party)
        self.broker.stop(None)

    def queue(self, sender: str, sealed: bytes, recipient: str) -> None:
        """Queue a hand-made (or replayed) sealed envelope in a node's outbox under a new
        message id: its uplink sends it through the broker as any other."""
        with self.nodes[sender].repositories.engine.begin() as conn:
            conn.execute(
                sa.insert(models.EnvelopeOutboxItem).values(
                    client_message_id=secrets.token_bytes(16),
                    recipient=recipient,
                    sealed=sealed,
                    created_at=datetime.now(UTC),
                )
            )
        self.nodes[sender].uplink.wake.set()

    def deliver(self, party: str, kind: Any, payload: bytes) -> None:
        """Put an item in a party's broker mailbox, as PublishCovenant does, and ring."""
        self.broker.store.mailboxes.enqueue(party, payload, kind, self.clock())
        self.broker.service._bell.ring([party])  # wake its stream now, not at a heartbeat


def start_cluster(
    root: Path,
    covenant_id: str,
    specs: Sequence[PartySpec],
    holders: Sequence[str],
    *,
    threshold: int = 2,
    policy: Policy | None = None,
    clock: Clock | None = None,
    cluster: type[Cluster] = Cluster,
    configure: Callable[[Provisioned], None] | None = None,
) -> Cluster:
    """Provision a covenant under ``root`` (local APIs on loopback TCP), migrate it and
    start its broker and every party's node; the caller closes it (``Cluster.close``).
    ``configure`` may change the configuration files before anything starts."""
    from samenloop.broker.server import build_server  # only the tests wire both daemons

    clock = clock or Clock()
    provisioned = provision(
        root, covenant_id, specs, list(holders), threshold, now=clock(), policy=policy, api_tcp=True
    )
    if configure is not None:
        configure(provisioned)
    migrate(provisioned)
    running = cluster(
        provisioned, clock, build_server(load_broker_config(provisioned.broker_config), clock=clock)
    )
    try:
        for spec in specs:
            running.start(spec.id)
    except BaseException:
        running.close()
        raise
    return running


@contextlib.contextmanager
def running_cluster(root: Path, *args: Any, **kwargs: Any) -> Iterator[Cluster]:
    """``start_cluster`` as a context: everything stopped on exit, whatever happened."""
    running = start_cluster(root, *args, **kwargs)
    try:
        yield running
    finally:
        running.close()
