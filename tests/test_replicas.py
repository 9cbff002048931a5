"""Several broker replicas on one PostgreSQL database, as real processes.

Three ``samenloop broker serve`` processes (each its own data directory and port, one
database) and three nodes, each listing all three replicas in another order, so that
each starts on another replica: hit notices (mailbox wake-ups) and OPRF evaluations
(a requester on one replica, the key holders on the others) cross replicas through
PostgreSQL. While the nodes import, one replica is SIGKILLed: its nodes move on to the
next address; every expected hit reaches every application that follows ``watch_hits``,
none twice; the database holds exactly the token entries imported. Then a disclosure
goes between two nodes on different replicas, with a second officer's approval.

Every process is SIGKILLed at teardown, whatever happened; every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from test_end_to_end import (
    PARTIES,
    SEE_ALL,
    SPECS,
    Dataset,
    Importer,
    Watcher,
    hits_complete,
    make_dataset,
)

from samenloop.node.client import NodeClient
from samenloop.node.disclosure.models import DisclosureState
from samenloop.node.provision import free_port, private_dir, provision
from samenloop.policies import config

from daemons import Daemons, cli_command, migrate, wait_until

COVENANT = "riec-replicas"
REPLICAS = ("broker-a", "broker-b", "broker-c")
#: Each node's addresses, as indexes into REPLICAS: each starts on another one.
ORDER = {"gemeente": (0, 1, 2), "politie": (1, 2, 0), "belastingdienst": (2, 0, 1)}
VICTIM = "broker-b"  # the politie's first replica
UNIQUE_PER_NODE = 500
RUN_SECONDS = 180.0
#: How soon a node whose replica died is connected to another (backoff at most 5 s).
RESUME_SECONDS = 30.0


@dataclass
class Replicas(Daemons):
    """The broker replicas and the nodes of one covenant."""

    broker_configs: dict[str, Path] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def _args(self, name: str) -> list[str]:
        if name in self.broker_configs:
            return ["broker", "serve", "--config", str(self.broker_configs[name])]
        return super()._args(name)


def _small(dataset: Dataset) -> Dataset:
    """The dataset with fewer signals only one party holds (all the shared ones kept)."""
    rows = {}
    for party, party_rows in dataset.rows.items():
        shared = [r for r in party_rows if r.subject is not None]
        rows[party] = shared + [r for r in party_rows if r.subject is None][:UNIQUE_PER_NODE]
        rows[party].sort(key=lambda r: r.reference)  # shared ones all through the import
    return Dataset(rows, dataset.holders, dataset.subjects)


def _pg(url: str) -> psycopg.Connection:
    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
    )


def _count(url: str, query: str) -> int:
    with _pg(url) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[Replicas]:
    provisioned = provision(
        tmp_path,
        COVENANT,
        SPECS,
        PARTIES,
        2,
        now=datetime.now(UTC) - timedelta(minutes=5),
        policy=SEE_ALL,
    )
    migrate(provisioned)  # the nodes' databases (and the unused SQLite broker's)
    base = config.load_broker_config(provisioned.broker_config)
    taken: set[int] = set()
    running = Replicas(provisioned, private_dir(tmp_path / "logs"))
    for name in REPLICAS:
        home = private_dir(tmp_path / name)
        replica = dataclasses.replace(
            base,
            data_dir=private_dir(home / "data"),
            listen=f"127.0.0.1:{free_port(taken)}",
            database_url=postgres_url,
        )
        path = home / "broker.toml"
        path.write_bytes(config.config_to_toml(replica))
        running.broker_configs[name] = path
        running.addresses[name] = replica.listen
    migration = subprocess.run(
        cli_command("broker", "migrate", "--config", str(running.broker_configs[REPLICAS[0]])),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert migration.returncode == 0, migration.stdout + migration.stderr
    for party, order in ORDER.items():
        path = provisioned.node_configs[party]
        lines = [x for x in path.read_text().splitlines() if not x.startswith("broker = ")]
        listed = ", ".join(f'"{running.addresses[REPLICAS[i]]}"' for i in order)
        path.write_text("\n".join([*lines, f"brokers = [{listed}]"]) + "\n")
    try:
        names = (*REPLICAS, *PARTIES)
        for name in names:
            running.start(name, wait=False)
        for name in names:
            running.wait_serving(name)
        for party, path in provisioned.node_configs.items():
            running.clients[party] = NodeClient.from_config(path, timeout=10)
        # Six daemons started at once on a shared machine: more time than one covenant's.
        wait_until(
            lambda: all(running.ready(p) for p in PARTIES),
            RUN_SECONDS,
            lambda: f"nodes connected: { {p: running.ready(p) for p in PARTIES} }",
            check=running.check_alive,
        )
        yield running
    finally:
        for client in running.clients.values():
            client.close()
        running.kill_all()


def test_replicas_survive_a_kill_under_load(replicas: Replicas, postgres_url: str) -> None:
    for party, order in ORDER.items():  # each node on its own first replica
        status = replicas.status(party)
        assert status is not None
        assert status.broker_address == replicas.addresses[REPLICAS[order[0]]]

    dataset = _small(make_dataset())
    configs = replicas.provisioned.node_configs
    watchers = {party: Watcher(configs[party]) for party in PARTIES}
    killed = threading.Event()
    deadline = time.monotonic() + RUN_SECONDS
    importers = {}
    for party in PARTIES:
        rows = dataset.rows[party]
        half = len(rows) // 2
        importers[party] = Importer(
            replicas.clients[party], [(None, rows[:half]), (killed, rows[half:])], deadline
        )
        importers[party].start()
    try:
        replicas.until(
            "the first hits, across replicas",
            RUN_SECONDS,
            lambda: sum(len(w.snapshot()[0]) for w in watchers.values()) >= 3,
        )
        replicas.kill(VICTIM)
        del replicas.processes[VICTIM]  # gone for good: check_alive must not fail on it
        killed.set()

        def moved_on() -> bool:
            status = replicas.status("politie")
            return (
                status is not None
                and status.broker_connection == "connected"
                and status.broker_address != replicas.addresses[VICTIM]
            )

        replicas.until("the politie connected to another replica", RESUME_SECONDS, moved_on)
        for importer in importers.values():
            importer.join(RUN_SECONDS)
            assert importer.error is None, importer.error
        replicas.until(
            "every expected hit at every node",
            RUN_SECONDS,
            lambda: all(hits_complete(replicas, dataset, p) for p in PARTIES),  # type: ignore[arg-type]
        )
        replicas.until(
            "outboxes empty and mailboxes acknowledged",
            RUN_SECONDS,
            lambda: (
                all(
                    (s := replicas.status(p)) is not None and s.outbox_pending == 0 for p in PARTIES
                )
                and _count(
                    postgres_url,
                    "SELECT count(*) FROM mailbox_heads WHERE acked_cursor < head_cursor",
                )
                == 0
            ),
        )
        for party in PARTIES:  # what the applications saw: every hit, no change twice
            want = len(dataset.expected(party))
            replicas.until(
                f"{party}'s application saw every hit",
                RUN_SECONDS,
                lambda party=party, want=want: len(watchers[party].latest()) == want,
            )
            seen, _ = watchers[party].snapshot()
            changes = [(group, revision) for group, revision, _ in seen]
            assert len(changes) == len(set(changes)), f"{party} saw a hit change twice"
            assert watchers[party].error is None
    finally:
        for watcher in watchers.values():
            watcher.stop()
    imported = sum(len(rows) for rows in dataset.rows.values())
    assert _count(postgres_url, "SELECT count(*) FROM token_entries") == imported
    moved = replicas.status("politie")
    assert moved is not None
    assert moved.broker_address != replicas.addresses[VICTIM]  # it failed over
    assert moved.broker_connection == "connected"

    # A disclosure between nodes on different replicas (gemeente on a, politie elsewhere).
    gemeente, politie = replicas.clients["gemeente"], replicas.clients["politie"]
    gemeente.add_signal("G-DISC", "vastgoedmisbruik", [("bsn", "111222333")])
    politie.add_signal(
        "P-DISC",
        "drugsproductie",
        [("bsn", "111222333")],
        details={"naam": "J. de Vries", "omschrijving": "hennepteelt"},
    )
    found: list = []

    def the_hit() -> bool:
        found[:] = [
            h
            for h in gemeente.hits()
            if any(s.reference == "G-DISC" for s in h.own_signals)
            and any(m.party == "politie" for m in h.members)
        ]
        return bool(found)

    replicas.until("the gemeente's hit with the politie", RUN_SECONDS, the_hit)
    (member,) = [m for m in found[0].members if m.party == "politie"]
    asked = gemeente.request_disclosure(
        found[0].group_id,
        "politie",
        member.signal_refs[0],
        "bibob",
        ["naam", "omschrijving"],
        officer="a@gemeente",
    )

    def arrived() -> bool:
        return any(d.request_id == asked.request_id for d in politie.disclosures("incoming"))

    replicas.until("the request at the politie", RUN_SECONDS, arrived)
    approved = politie.approve_disclosure(asked.request_id, officer="b@politie")
    assert approved.state is DisclosureState.GRANTED
    replicas.until(
        "the answer at the gemeente",
        RUN_SECONDS,
        lambda: gemeente.disclosure(asked.request_id).state is DisclosureState.GRANTED,
    )
    got = gemeente.disclosure(asked.request_id)
    assert dict(got.released_fields) == {"naam": "J. de Vries", "omschrijving": "hennepteelt"}
