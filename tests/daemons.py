"""A covenant of real daemons for tests: provisioned, migrated, started as processes.

``samenloop broker serve`` and one ``samenloop node serve`` per party run as
separate processes on loopback with mTLS and SQLite, exactly as ``make demo``
runs them; tests drive them through the client library and the CLI and look at
the databases and logs on disk. Shared by the end-to-end tests and the insider
attack suite (``tests/attacks``).

Every process runs in its own process group and is SIGKILLed at teardown,
whatever happened; every wait is bounded and fails the test naming what it
waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from samenloop.node.client import NodeClient, NodeStatus
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies.errors import LocalError
from samenloop.policies.policy import DEFAULT_FRESHNESS_SECONDS, Policy

#: What a daemon logs once it serves.
READY_MARKERS = {"broker": b"broker listening", "node": b"node running"}
START_SECONDS = 30.0
POLL = 0.05


def cli_command(*args: str) -> list[str]:
    """The ``samenloop`` CLI of this environment with ``args``."""
    return [sys.executable, "-m", "samenloop.policies.cli", *args]


def sqlite_rows(database: Path, query: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows from a SQLite file, read-only, beside the daemon that writes it."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(query, params).fetchall()
    finally:
        connection.close()


def sqlite_count(database: Path, query: str, *params: object) -> int:
    """One number from a SQLite file (see :func:`sqlite_rows`)."""
    (row,) = sqlite_rows(database, query, *params)
    return int(row[0])


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: Callable[[], str] | str,
    *,
    check: Callable[[], None] | None = None,
    interval: float = POLL,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds.
    ``check`` runs first on each round (it fails the test when a daemon died)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if condition():
            return
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            pytest.fail(f"not within {timeout:.0f} s: {described}")
        time.sleep(interval)


@dataclass
class Daemons:
    """The broker and the nodes of one provisioned covenant, as processes."""

    provisioned: Provisioned
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    clients: dict[str, NodeClient] = field(default_factory=dict)

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(self.provisioned.node_configs)

    # --- processes ---

    def _args(self, name: str) -> list[str]:
        if name == "broker":
            return ["broker", "serve", "--config", str(self.provisioned.broker_config)]
        return ["node", "serve", "--node", str(self.provisioned.node_configs[name])]

    def start(self, name: str, *, wait: bool = True) -> None:
        """Start a daemon (again: same configuration, same database, its log appended to);
        with ``wait``, return once it says it serves."""
        assert not self.alive(name), f"{name} is running already"
        marker = READY_MARKERS["broker" if name.startswith("broker") else "node"]
        before = self.log(name).count(marker)
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                cli_command(*self._args(name)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        if wait:
            self.wait_serving(name, before)

    def wait_serving(self, name: str, before: int = 0) -> None:
        """Wait until a daemon's log says it serves (clients that call earlier would
        back off for seconds)."""
        marker = READY_MARKERS["broker" if name.startswith("broker") else "node"]
        wait_until(
            lambda: self.log(name).count(marker) > before,
            START_SECONDS,
            f"{name} serving",
            check=self.check_alive,
        )

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def kill(self, name: str) -> None:
        """SIGKILL: no chance to finish anything."""
        process = self.processes[name]
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it died on its own meanwhile
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)

    def stop(self, name: str) -> None:
        """SIGTERM, as an operator stops a daemon; SIGKILL if it does not stop in time."""
        process = self.processes[name]
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(name)

    def restart(self, name: str) -> None:
        """Stop a daemon and start it again on the same data; wait until it serves (and,
        for a node, until it is connected again)."""
        self.stop(name)
        self.start(name)
        if not name.startswith("broker"):
            self.wait_ready([name])

    def kill_all(self) -> None:
        for name in list(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self.kill(name)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log(name).decode(errors="replace")[-3000:]
                pytest.fail(f"{name} exited with {process.returncode}:\n{tail}")

    def log(self, name: str) -> bytes:
        path = self.logs / f"{name}.log"
        return path.read_bytes() if path.exists() else b""

    def until(self, what: str, seconds: float, check: Callable[[], bool]) -> None:
        """Wait until ``check()`` holds, failing the test if a daemon dies meanwhile."""
        wait_until(check, seconds, what, check=self.check_alive, interval=0.1)

    # --- state ---

    @property
    def broker_database(self) -> Path:
        return self.provisioned.root / "broker" / "data" / "broker.db"

    def node_database(self, party: str) -> Path:
        return self.provisioned.party_dir(party) / "data" / "node.db"

    def status(self, party: str) -> NodeStatus | None:
        try:
            return self.clients[party].status()
        except LocalError:  # not reachable (yet)
            return None

    def ready(self, party: str) -> bool:
        status = self.status(party)
        return (
            status is not None
            and status.broker_connection == "connected"
            and (status.key_holder is None or status.key_holder.channel_open)
        )

    def wait_ready(self, parties: Sequence[str] | None = None) -> None:
        waiting = self.parties if parties is None else tuple(parties)
        wait_until(
            lambda: all(self.ready(p) for p in waiting),
            START_SECONDS,
            lambda: f"nodes connected: { {p: self.ready(p) for p in waiting} }",
            check=self.check_alive,
        )


#: Migrated empty databases of this test session, by kind ("broker", "node"): copied in
#: place of running the migrations again (see :func:`migrate`).
_MIGRATED: dict[str, bytes] = {}


def _databases(provisioned: Provisioned) -> list[tuple[str, Path, Path]]:
    """Each database of a provisioned covenant: its kind, configuration and file."""
    return [
        ("broker", provisioned.broker_config, provisioned.root / "broker" / "data" / "broker.db"),
        *(
            ("node", path, provisioned.party_dir(party) / "data" / "node.db")
            for party, path in provisioned.node_configs.items()
        ),
    ]


def migrate(provisioned: Provisioned) -> None:
    """Migrate the broker's and every node's database.

    The first covenant of a test session runs ``samenloop broker migrate`` and ``samenloop
    node migrate`` (in parallel); later ones get a copy of the databases those made, since
    a migrated database holds the schema and nothing of a party's own. That saves six
    process starts per covenant; the migrations themselves stay tested (here once, and up
    and down in ``test_*_store.py``)."""
    databases = _databases(provisioned)
    if all(kind in _MIGRATED for kind, _, _ in databases):
        for kind, _, path in databases:
            assert not path.exists(), f"{path} exists before the migration"
            path.write_bytes(_MIGRATED[kind])
            path.chmod(0o600)
        return
    migrations = [
        subprocess.Popen(
            cli_command(kind, "migrate", "--node" if kind == "node" else "--config", str(config)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for kind, config, _ in databases
    ]
    for migration in migrations:
        output, _ = migration.communicate(timeout=60)
        assert migration.returncode == 0, output.decode(errors="replace")
    for kind, _, path in databases:
        if not Path(f"{path}-wal").exists():  # every change is in the file itself
            _MIGRATED.setdefault(kind, path.read_bytes())


@contextlib.contextmanager
def running_covenant(
    root: Path,
    covenant_id: str,
    specs: Sequence[PartySpec],
    holders: Sequence[str],
    threshold: int,
    *,
    now: datetime,
    policy: Policy | None = None,
    api_tcp: bool = False,
    daemons: type[Daemons] = Daemons,
    freshness_seconds: int = DEFAULT_FRESHNESS_SECONDS,
    configure: Callable[[Provisioned], None] | None = None,
) -> Iterator[Daemons]:
    """Provision a covenant under ``root`` (its covenant timestamps vouching for at most
    ``freshness_seconds``), migrate it, start every daemon and wait until every node is
    connected (and every key holder's channel open); kill them all on exit. ``configure``
    may change the configuration files before anything starts."""
    provisioned = provision(
        root,
        covenant_id,
        specs,
        holders,
        threshold,
        now=now,
        policy=policy,
        api_tcp=api_tcp,
        freshness_seconds=freshness_seconds,
    )
    if configure is not None:
        configure(provisioned)
    migrate(provisioned)
    logs = root / "logs"
    logs.mkdir()
    running = daemons(provisioned, logs)
    try:
        names = ("broker", *running.parties)
        for name in names:
            running.start(name, wait=False)
        for name in names:
            running.wait_serving(name)
        for party, path in provisioned.node_configs.items():
            running.clients[party] = NodeClient.from_config(path, timeout=10)
        running.wait_ready()
        yield running
    finally:
        for client in running.clients.values():
            client.close()
        running.kill_all()
