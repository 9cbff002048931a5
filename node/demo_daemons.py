"""The full demo: a covenant of four partners, a broker and four nodes as separate processes.

Provisions a covenant on loopback (its CA, keys, certificates, a 2-of-3 OPRF
key dealt to the gemeente, politie and belastingdienst, configs), migrates the
SQLite databases, starts ``samenloop broker serve`` and four ``samenloop node
serve`` processes with mTLS between them, imports synthetic signals through
each node's local API (identifiers that overlap are written differently at
each partner), waits for the hits, prints what each partner received, and
stops every process cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from samenloop.node.client import NodeClient, SignalInput
from samenloop.node.demo import PARTNERS, SHARED, RawSignal, synthetic_signals
from samenloop.node.identifiers import IdentifierType
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies.covenant import Role
from samenloop.policies.errors import SamenloopError

COVENANT = "riec-zwb-demo"
HOLDERS = ("gemeente", "politie", "belastingdienst")
SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("belastingdienst", "Belastingdienst", Role.BELASTINGDIENST),
    PartySpec("woningcorporatie", "Woningcorporatie Zeeuwland", Role.WONINGCORPORATIE),
)
CATEGORIES = {
    "gemeente": "vastgoedmisbruik",
    "politie": "drugsproductie",
    "belastingdienst": "witwasindicatie",
    "woningcorporatie": "woonfraude",
}
#: The gemeente's spreadsheet stored BSNs as numbers and dropped leading zeros.
LEADING_ZEROS_DROPPED = {"gemeente": frozenset({IdentifierType.BSN})}
READY_SECONDS = 60.0
HITS_SECONDS = 90.0


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "samenloop.policies.cli", *args]


@dataclass
class Processes:
    """The daemons the demo started, with their log files."""

    logs: Path
    running: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            _command(*args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check_alive(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                log = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log}")

    def stop(self, timeout: float = 15.0) -> dict[str, int | None]:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for name, process in self.running.items():
            try:
                codes[name] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


def _run(*args: str) -> None:
    subprocess.run(_command(*args), check=True, capture_output=True)  # noqa: S603


def _wait_ready(clients: dict[str, NodeClient], processes: Processes) -> None:
    deadline = time.monotonic() + READY_SECONDS
    waiting = set(clients)
    while waiting:
        processes.check_alive()
        for party in sorted(waiting):
            try:
                if clients[party].status().broker_connection == "connected":
                    waiting.discard(party)
            except SamenloopError:
                pass
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(
                f"nodes not connected after {READY_SECONDS:.0f} s: {sorted(waiting)}"
            )
        time.sleep(0.2)


def expected_hits() -> dict[str, int]:
    """How many hit groups each partner should end up in (one per shared subject it holds)."""
    counts: dict[str, int] = defaultdict(int)
    for _, holders in SHARED:
        for partner in holders:
            counts[partner] += 1
    return dict(counts)


def run_demo(console: Console, workdir: Path, per_partner: int) -> int:
    console.rule("[bold]Samenloop demo: broker and four nodes over mTLS")
    provisioned: Provisioned = provision(
        workdir, COVENANT, SPECS, HOLDERS, 2, now=datetime.now(UTC)
    )
    console.print(
        f"1. covenant {COVENANT}: {len(SPECS)} partners, key holders {', '.join(HOLDERS)} "
        f"(2-of-3), CA and certificates in {workdir}"
    )
    _run("broker", "migrate", "--config", str(provisioned.broker_config))
    for path in provisioned.node_configs.values():
        _run("node", "migrate", "--config", str(path))
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    processes = Processes(logs, {})
    clients: dict[str, NodeClient] = {}
    try:
        processes.start("broker", "broker", "serve", "--config", str(provisioned.broker_config))
        for party, path in provisioned.node_configs.items():
            processes.start(party, "node", "serve", "--config", str(path))
            clients[party] = NodeClient.from_config(path)
        _wait_ready(clients, processes)
        console.print("2. broker and nodes running as separate processes; every node connected")

        started = time.monotonic()
        rows: dict[str, list[RawSignal]] = defaultdict(list)
        for raw in synthetic_signals(per_partner):
            rows[raw.partner].append(raw)
        total = 0
        for party in PARTNERS:
            report = clients[party].import_signals(
                [
                    SignalInput(
                        reference=raw.reference,
                        category=CATEGORIES[party],
                        identifiers=[(raw.type, raw.value)],
                        leading_zero_dropped=LEADING_ZEROS_DROPPED.get(party, False),
                    )
                    for raw in rows[party]
                ]
            )
            total += report.imported
            refused = ", ".join(f"row {e.row} {e.field}: {e.reason}" for e in report.errors)
            console.print(
                f"3. {party}: {report.imported} signals imported"
                + (f"; refused {refused}" if refused else "")
            )

        want = expected_hits()
        deadline = time.monotonic() + HITS_SECONDS
        while True:
            processes.check_alive()
            got = {party: len(clients[party].hits()) for party in PARTNERS}
            if all(got[p] >= want.get(p, 0) for p in PARTNERS):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"hits after {HITS_SECONDS:.0f} s: {got}, expected {want}")
            time.sleep(0.3)
        elapsed = time.monotonic() - started
        console.print(
            f"4. {total} signals tokenised through the key holders, matched by the broker and "
            f"hit notices delivered in {elapsed:.1f} s"
        )
        for party in PARTNERS:
            _print_hits(console, party, clients[party])
        ok = all(len(clients[p].hits()) == want.get(p, 0) for p in PARTNERS)
    finally:
        for client in clients.values():
            client.close()
        codes = processes.stop()
    clean = all(code == 0 for code in codes.values())
    console.print(f"5. stopped: {', '.join(f'{name} exit {code}' for name, code in codes.items())}")
    if not (ok and clean):
        console.print("[red]the demo did not end as expected[/red]")
        return 1
    console.print("every partner received exactly the hits it shares; everything stopped cleanly")
    return 0


def _print_hits(console: Console, party: str, client: NodeClient) -> None:
    table = Table(title=f"hits received by {party}")
    table.add_column("hit group")
    table.add_column("own signal")
    table.add_column("other partners")
    table.add_column("their categories")
    table.add_column("first seen")
    for hit in sorted(client.hits(), key=lambda h: [s.reference or "" for s in h.own_signals]):
        table.add_row(
            hit.group_hex[:12],
            ", ".join(f"{s.reference} ({s.identifier_type})" for s in hit.own_signals),
            ", ".join(f"{m.party} ({m.role})" for m in hit.members),
            ", ".join(c for m in hit.members for c in m.categories),
            f"{hit.first_seen:%H:%M:%S}" if hit.first_seen else "",
        )
    console.print(table)
