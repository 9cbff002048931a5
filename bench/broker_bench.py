"""``make bench``, broker part: ingest, scale, hit latency and end to end, against bounds
measured in the same run.

1. **Ingest**: ``TokenStore.submit`` in batches of 1,000 random tokens from four
   parties, about 1% of each batch overlapping another party's earlier tokens so
   that hits form and notices are signed (by the broker service's own signer) and
   delivered, on SQLite (a file, the store's durable settings) and PostgreSQL.
   Bounds from the same run: (a) a bare insert of the same rows into a table of the
   same layout (``token_entries``: same columns, same indexes) with the same
   durability, one transaction per batch, through the driver (PostgreSQL: binary
   COPY and executemany, the faster counts); also, for reference, the rows' tokens
   alone into a table indexed on the full 32-byte token; (b) bare gRPC round trips of
   the same batches as ``SubmitTokensRequest`` (what a node's uplink sends) to a
   trivial servicer in another process, over mTLS with the covenant's certificates
   and over plain loopback. Also the whole broker (``samenloop broker serve``, SQLite)
   taking the same batches over mTLS, when the daemons run (part 3).
2. **Scale**: the ingest rate with S1 tokens already indexed and with S2, the index
   preloaded through the store's own insert path (``TokenIndex.insert_entries``,
   the same rows and indexes), in large transactions; then batches through
   ``submit`` on top. ``--scale full``: 1M and 10M; the default: 1M and 3M.
3. **Hit latency** through the real daemons (``samenloop broker serve`` and two
   ``samenloop node serve``, the two parties being the 2-of-2 key holders, as
   processes, mTLS on loopback, SQLite): the first partner's application watches
   hits (``NodeClient.watch_hits``), the second adds a signal overlapping one of the
   first's; time from ``add_signal`` returning to the first application receiving
   the hit. Split into stages with the timestamps the processes record themselves
   (the second node's outbox batch, the broker's processed batch, the first node's
   hit), which share this machine's clock.
4. **End to end**: the second node imports 100,000 signals through the client
   library (``NodeClient.import_signals``); tokens/s until no identifier waits for a
   token and the outbox is empty, with every process's CPU time over the run.

5. **Cores**: the same import (``--cores-signals``, 20,000 by default) with the nodes'
   ``workers`` setting at 1 and at the cores this process may use, on fresh daemons each,
   after an import of 2,000 that starts the worker processes, alternated over
   ``--cores-rounds`` rounds (2: 1, all, all, 1) in the same run: the mean throughput with all
   cores against one worker process, target at least 0.8 x the cores. CPU time counts each
   daemon's worker processes too; what other processes of the machine used is reported.

Results go to bench/results/broker.json. No timed assertions: ratios against what
this machine does in this run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, insert

from samenloop.broker import matching, token_index
from samenloop.broker.database import MIGRATIONS, Tx
from samenloop.broker.matching import Entry
from samenloop.broker.models import HitGroup, ProcessedBatch
from samenloop.broker.server import CHANNEL_OPTIONS
from samenloop.broker.service import BrokerContext, BrokerService
from samenloop.broker.store import BrokerStore
from samenloop.broker.token_index import expiry_bucket, prefix64
from samenloop.node.client import NodeClient, SignalInput
from samenloop.node.daemon.uplink import broker_channel
from samenloop.node.demo.daemons import Processes
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies import covenant as covenant_model
from samenloop.policies import database
from samenloop.policies.config import load_broker_config, load_node_config
from samenloop.policies.covenant import Role
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import SamenloopError
from samenloop.policies.process import settle_heap
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "broker.json"

BATCH = 1000
OVERLAP = 0.01
COVENANT = "samenloop-bench"
#: The two daemons' parties: key holders 2-of-2; the other two only submit directly.
FIRST, SECOND = "politie", "gemeente"
SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
    PartySpec("belastingdienst", "Belastingdienst", Role.BELASTINGDIENST),
    PartySpec("woningcorporatie", "Woningcorporatie Zeeuwland", Role.WONINGCORPORATIE),
)
PARTIES = tuple(spec.id for spec in SPECS)
POSTGRES_ADMIN = os.environ.get(
    "SAMENLOOP_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)


@dataclass(frozen=True)
class Scale:
    ingest_tokens: int
    scale_levels: tuple[int, int]
    scale_measure_tokens: int
    latency_rounds: int
    e2e_signals: int
    service_tokens: int
    cores_signals: int = 20_000


SCALES = {
    "small": Scale(
        ingest_tokens=300_000,
        scale_levels=(1_000_000, 3_000_000),
        scale_measure_tokens=100_000,
        latency_rounds=150,
        e2e_signals=100_000,
        service_tokens=100_000,
    ),
    "full": Scale(
        ingest_tokens=1_000_000,
        scale_levels=(1_000_000, 10_000_000),
        scale_measure_tokens=300_000,
        latency_rounds=200,
        e2e_signals=100_000,
        service_tokens=300_000,
    ),
}
#: Signals imported before the cores part measures, to start the nodes' worker processes.
WARM_SIGNALS = 2_000
PARTS = ("ingest", "scale", "latency", "e2e", "cores")
BACKENDS = ("sqlite", "postgresql")


# --- the workload ------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    party: str
    client_batch_id: bytes
    entries: list[Entry]


class Workload:
    """Batches of 1,000 random tokens from the parties in turn, about ``overlap`` of each
    batch being tokens another party submitted earlier (so hits form), with the row
    shapes a node sends: a 16-byte ref, an expiry within two years, a sealed category."""

    def __init__(
        self, covenant: covenant_model.Covenant, seed: int, parties: Sequence[str] = PARTIES
    ) -> None:
        self.parties = tuple(parties)
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC)
        attribute_key = covenant_model.new_attribute_key(covenant.id, 1)
        self.sealed: dict[str, bytes] = {}
        for party in PARTIES:
            plaintext = common_pb2.MemberAttributes(category=f"categorie {party}")
            nonce, ciphertext = covenant_model.seal_attributes(
                attribute_key, plaintext.SerializeToString()
            )
            self.sealed[party] = common_pb2.SecretBox(
                key_version=1, nonce=nonce, ciphertext=ciphertext
            ).SerializeToString()
        #: Earlier tokens by party, to overlap with (a bounded sample).
        self.pool: dict[str, list[bytes]] = {p: [] for p in PARTIES}
        self.turn = 0

    def entry(self, party: str, token: bytes) -> Entry:
        rng = self.rng
        expires = self.now + timedelta(days=rng.randrange(180, 730), seconds=rng.randrange(86400))
        return Entry(party, token, rng.randbytes(16), 1, expires, self.sealed[party])

    def batches(self, tokens: int, overlap: float = OVERLAP) -> list[Batch]:
        out = []
        rng = self.rng
        for _ in range(tokens // BATCH):
            party = self.parties[self.turn % len(self.parties)]
            self.turn += 1
            others = [p for p in self.parties if p != party and self.pool[p]]
            entries = []
            for _ in range(BATCH):
                if others and rng.random() < overlap:
                    pool = self.pool[rng.choice(others)]
                    token = pool[rng.randrange(len(pool))]
                else:
                    token = rng.randbytes(32)
                    pool = self.pool[party]
                    if len(pool) < 200_000:
                        pool.append(token)
                    else:
                        pool[rng.randrange(len(pool))] = token
                entries.append(self.entry(party, token))
            out.append(Batch(party, rng.randbytes(16), entries))
        return out


def rows_of(store: BrokerStore, batch: Batch, party_ids: dict[str, int]) -> list[tuple[Any, ...]]:
    """A batch's ``token_entries`` rows exactly as ``TokenIndex.insert_entries`` builds them."""
    stamp = store.database.stamp
    return [
        (
            prefix64(e.token),
            party_ids[e.party],
            e.signal_ref[0],
            prefix64(e.signal_ref),
            e.token,
            e.signal_ref,
            e.key_epoch,
            stamp(e.expires_at),
            expiry_bucket(e.expires_at),
            e.sealed_attributes,
        )
        for e in batch.entries
    ]


# --- databases --------------------------------------------------------------------------


class Databases:
    """Scratch databases: SQLite files in a temporary directory, PostgreSQL databases
    named ``samenloop_bench_<hex>``; everything is dropped on close."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres: list[str] = []

    def url(self, backend: str, name: str) -> str:
        if backend == "sqlite":
            path = self.root / f"{name}-{secrets.token_hex(3)}.db"
            return f"sqlite:///{path}"
        db = f"samenloop_bench_{secrets.token_hex(6)}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            info = admin.info
            url = f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{db}"
        self.postgres.append(db)
        return url

    def drop(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        db = url.rsplit("/", 1)[1]
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )
        if db in self.postgres:
            self.postgres.remove(db)

    def close(self) -> None:
        for db in list(self.postgres):
            with contextlib.suppress(psycopg.Error):
                self.drop(f"postgresql:///{db}")


@contextlib.contextmanager
def broker_store(dbs: Databases, backend: str, name: str) -> Iterator[BrokerStore]:
    url = dbs.url(backend, name)
    engine = database.make_engine(url)
    try:
        database.upgrade(engine, MIGRATIONS)
        yield BrokerStore(engine)
    finally:
        engine.dispose()
        dbs.drop(url)


def database_size(engine: Engine) -> int:
    """Bytes on disk of the store's database (SQLite: file plus WAL)."""
    if engine.dialect.name == "sqlite":
        path = Path(str(engine.url.database))
        return sum(
            Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists()
        )
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar())


# --- part 1: ingest and its bounds ------------------------------------------------------


class Submitter:
    """Calls ``TokenStore.submit`` as the broker service does (its notice signer,
    visibility rule and the covenant's submission rules: expiry cap and quotas), and
    times it."""

    def __init__(self, store: BrokerStore, provisioned: Provisioned) -> None:
        keys = PartyKeys.load(provisioned.root / "broker" / "signing-keys.json")
        covenant = provisioned.covenant
        self.store = store
        self.min_parties = covenant.min_parties
        self.service = BrokerService(
            BrokerContext(covenant=lambda: covenant, store=store, keys=keys)
        )
        self.rules = self.service._submission_rules(covenant)
        self.stored = 0
        self.notified = 0

    def submit(self, batch: Batch) -> None:
        result = self.store.tokens.submit(
            batch.party,
            batch.client_batch_id,
            1,
            batch.entries,
            min_parties=self.min_parties,
            now=datetime.now(UTC),
            new_group_id=lambda: os.urandom(16),
            sign_notice=self.service._sign_notice,
            visibility=self.service._visibility(),
            rules=self.rules,
        )
        self.stored += result.stored
        self.notified += len(result.notified)

    def timed(self, batches: Sequence[Batch]) -> dict[str, Any]:
        latencies = []
        started = time.perf_counter()
        for batch in batches:
            t0 = time.perf_counter()
            self.submit(batch)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        tokens = sum(len(b.entries) for b in batches)
        return {
            "tokens": tokens,
            "seconds": elapsed,
            "tokens_per_s": tokens / elapsed,
            "batch_ms_p50": percentile(latencies, 50) * 1e3,
            "batch_ms_p99": percentile(latencies, 99) * 1e3,
        }


class BareTable:
    """A bound: the same rows inserted bare, one transaction per batch, with the
    store's durability (``make_engine``'s settings) into a fresh database.

    ``same_table``: the ``token_entries`` of the store's migrations (same columns, checks
    and indexes; on PostgreSQL the same partitions), the rows as ``insert_entries``
    builds them, by ``method``
    (``executemany``, or ``copy``: binary COPY on PostgreSQL). ``token_only``: the
    batch's tokens alone, in a table indexed on the full 32-byte token."""

    def __init__(
        self, dbs: Databases, backend: str, store: BrokerStore, kind: str, method: str
    ) -> None:
        self.dbs = dbs
        self.url = dbs.url(backend, f"bare-{kind}-{method}")
        self.engine = database.make_engine(self.url)
        self.kind = kind
        self.method = method
        self.store = store
        self.seconds = 0.0
        self.tokens = 0
        mark = "?" if backend == "sqlite" else "%s"
        if kind == "same_table":  # the store's own schema (PostgreSQL: partitioned)
            database.upgrade(self.engine, MIGRATIONS)
        with self.engine.begin() as conn:
            if kind == "same_table":
                self.sql = store.tokens.index.insert_sql.replace("?", mark)
            else:
                blob = "BLOB" if backend == "sqlite" else "bytea"
                key = "INTEGER PRIMARY KEY" if backend == "sqlite" else "bigserial PRIMARY KEY"
                conn.exec_driver_sql(f"CREATE TABLE bare_tokens (id {key}, token {blob} NOT NULL)")
                conn.exec_driver_sql("CREATE INDEX ix_bare_tokens_token ON bare_tokens (token)")
                self.sql = f"INSERT INTO bare_tokens (token) VALUES ({mark})"

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.method}"

    def rows(self, batch: Batch) -> list[tuple[Any, ...]]:
        if self.kind == "same_table":
            return rows_of(self.store, batch, {p: i + 1 for i, p in enumerate(PARTIES)})
        return [(e.token,) for e in batch.entries]

    def insert(self, batches: Sequence[Batch]) -> None:
        prepared = [self.rows(b) for b in batches]  # the rows are ready: only the insert is timed
        started = time.perf_counter()
        for rows in prepared:
            with self.engine.begin() as conn:
                if self.method == "executemany":
                    conn.exec_driver_sql(self.sql, rows)
                    continue
                driver = conn.connection.driver_connection
                copy_sql = self.store.tokens.index.copy_sql
                with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:
                    copy.set_types(token_index.ENTRY_COPY_TYPES)
                    for row in rows:
                        copy.write_row(row)
        self.seconds += time.perf_counter() - started
        self.tokens += sum(len(r) for r in prepared)

    def close(self) -> None:
        self.engine.dispose()
        self.dbs.drop(self.url)


def cpu_outside_database(store: BrokerStore, batches: Sequence[Batch]) -> dict[str, float]:
    """Milliseconds per batch of the Python work ``submit`` does besides talking to the
    database, each step alone on the same batches: the sans-IO core (``parse_batch``
    and ``matching.submit`` of new tokens), and building the rows
    (``insert_entries``' list: prefixes and the timestamp type's converter)."""
    now = datetime.now(UTC)
    party_ids = {p: i + 1 for i, p in enumerate(PARTIES)}
    # The example covenant's rules (expiry cap), as the broker applies them.
    rules = matching.SubmissionRules(
        longest_retention_days=730, entries_per_day=10**9, entries_held=10**9
    )
    t0 = time.perf_counter()
    for batch in batches:
        parsed = matching.parse_batch(batch.party, 1, batch.entries)
        matching.submit(parsed, (), min_parties=2, now=now, new_group_id=lambda: b"", rules=rules)
    t1 = time.perf_counter()
    for batch in batches:
        rows_of(store, batch, party_ids)
    t2 = time.perf_counter()
    n = len(batches)
    return {"parse_and_match_ms": (t1 - t0) / n * 1e3, "build_rows_ms": (t2 - t1) / n * 1e3}


class _EchoBroker(broker_pb2_grpc.BrokerServicer):
    """Accepts ``SubmitTokens`` and answers at once: the transport alone."""

    def SubmitTokens(  # noqa: N802 - the generated base class's name
        self, request: broker_pb2.SubmitTokensRequest, context: grpc.ServicerContext
    ) -> broker_pb2.SubmitTokensResponse:
        return broker_pb2.SubmitTokensResponse(
            client_batch_id=request.client_batch_id, stored=len(request.entries)
        )


def serve_echo(broker_dir: Path, ca: Path, port_file: Path) -> int:
    """The trivial servicer's process: mTLS on one port, plain on another."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=CHANNEL_OPTIONS)
    broker_pb2_grpc.add_BrokerServicer_to_server(_EchoBroker(), server)
    credentials = grpc.ssl_server_credentials(
        [((broker_dir / "tls.key").read_bytes(), (broker_dir / "tls.pem").read_bytes())],
        root_certificates=ca.read_bytes(),
        require_client_auth=True,
    )
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    plain_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(f"{tls_port} {plain_port}")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    server.stop(1).wait()
    return 0


def submit_requests(batches: Sequence[Batch]) -> list[broker_pb2.SubmitTokensRequest]:
    """The batches as the node's uplink sends them (``Uplink._send``)."""
    requests = []
    for batch in batches:
        request = broker_pb2.SubmitTokensRequest(client_batch_id=batch.client_batch_id, key_epoch=1)
        for entry in batch.entries:
            sent = request.entries.add(token=entry.token, signal_ref=entry.signal_ref)
            sent.expires_at.FromDatetime(entry.expires_at)
            sent.sealed_attributes.ParseFromString(entry.sealed_attributes or b"")
        requests.append(request)
    return requests


def party_channel(provisioned: Provisioned, party: str, address: str) -> grpc.Channel:
    party_dir = provisioned.party_dir(party)
    return broker_channel(
        address,
        ca_certificate=(provisioned.root / "ca" / "ca.pem").read_bytes(),
        private_key=(party_dir / "tls.key").read_bytes(),
        certificate=(party_dir / "tls.pem").read_bytes(),
    )


def round_trips(
    channel: grpc.Channel, requests: Sequence[broker_pb2.SubmitTokensRequest]
) -> dict[str, Any]:
    """One call in flight at a time, as a node's uplink sends; tokens/s and latency."""
    stub = broker_pb2_grpc.BrokerStub(channel)
    grpc.channel_ready_future(channel).result(timeout=10)
    for request in requests[:20]:  # warm-up: connection, TLS session, allocators
        stub.SubmitTokens(request, timeout=30)
    latencies = []
    started = time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        stub.SubmitTokens(request, timeout=30)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    tokens = sum(len(r.entries) for r in requests)
    return {
        "tokens_per_s": tokens / elapsed,
        "batch_ms_p50": percentile(latencies, 50) * 1e3,
        "request_bytes": requests[0].ByteSize(),
    }


def grpc_bound(provisioned: Provisioned, batches: Sequence[Batch], work: Path) -> dict[str, Any]:
    requests = submit_requests(batches)
    port_file = work / "echo-ports"
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "_echo-server",
            str(provisioned.root / "broker"),
            str(provisioned.root / "ca" / "ca.pem"),
            str(port_file),
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.05)
        tls_port, plain_port = map(int, port_file.read_text().split())
        out: dict[str, Any] = {}
        with party_channel(provisioned, SECOND, f"localhost:{tls_port}") as channel:
            out["mtls"] = round_trips(channel, requests)
        with grpc.insecure_channel(f"127.0.0.1:{plain_port}", options=CHANNEL_OPTIONS) as channel:
            out["plaintext"] = round_trips(channel, requests)
        return out
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


INGEST_ROUNDS = 10


def part_ingest(
    console: Console,
    dbs: Databases,
    provisioned: Provisioned,
    backends: Sequence[str],
    tokens: int,
    work: Path,
) -> dict[str, Any]:
    """Store ingest and the bare inserts of the same batches, interleaved round by round
    so that both see the same machine (other work on it comes and goes)."""
    out: dict[str, Any] = {"tokens": tokens, "batch": BATCH, "overlap": OVERLAP}
    for backend in backends:
        load = os.getloadavg()[0]
        workload = Workload(provisioned.covenant, seed=11)
        batches = workload.batches(tokens)
        per_round = max(1, len(batches) // INGEST_ROUNDS)
        with broker_store(dbs, backend, "ingest") as store:
            submitter = Submitter(store, provisioned)
            for batch in workload.batches(5 * BATCH):  # warm-up: parties, caches, plans
                submitter.submit(batch)
            settle_heap()  # as the broker daemon does once it has started
            methods = ("executemany",) if backend == "sqlite" else ("copy", "executemany")
            bares = [BareTable(dbs, backend, store, "same_table", m) for m in methods]
            bares.append(BareTable(dbs, backend, store, "token_only", "executemany"))
            try:
                rounds = []
                cpu = 0.0
                for start in range(0, len(batches), per_round):
                    chunk = batches[start : start + per_round]
                    cpu -= time.process_time()
                    figures = submitter.timed(chunk)
                    cpu += time.process_time()
                    before = {b.name: b.seconds for b in bares}
                    for bare in bares:
                        bare.insert(chunk)
                    same = min(b.seconds - before[b.name] for b in bares if b.kind == "same_table")
                    rounds.append((figures, same))
                seconds = sum(r["seconds"] for r, _ in rounds)
                result: dict[str, Any] = {
                    "tokens": sum(r["tokens"] for r, _ in rounds),
                    "seconds": seconds,
                    "tokens_per_s": sum(r["tokens"] for r, _ in rounds) / seconds,
                    "batch_ms_p50": statistics.median(r["batch_ms_p50"] for r, _ in rounds),
                    "round_ratios": [same / r["seconds"] for r, same in rounds],
                    "hit_notices_delivered_to": submitter.notified,
                    "groups_open": store.tokens.count_groups(),
                    "load_average_1m_before": load,
                }
                bound = {f"{b.name}_tokens_per_s": b.tokens / b.seconds for b in bares}
            finally:
                for bare in bares:
                    bare.close()
            # This process's CPU while submitting (SQLite works in it; PostgreSQL does not).
            result["client_cpu_share"] = cpu / result["seconds"]
            result["cpu_outside_database_per_batch"] = cpu_outside_database(store, batches[:50])
        bound["bound_tokens_per_s"] = max(v for k, v in bound.items() if k.startswith("same_table"))
        result["bare_insert"] = bound
        result["ratio_to_bare_insert"] = result["tokens_per_s"] / bound["bound_tokens_per_s"]
        result["ratio_median_of_rounds"] = statistics.median(result["round_ratios"])
        out[backend] = result
        console.print(
            f"  ingest {backend}: {result['tokens_per_s']:,.0f} tokens/s, bare insert "
            f"{bound['bound_tokens_per_s']:,.0f} -> {result['ratio_to_bare_insert']:.2f}"
        )
    workload = Workload(provisioned.covenant, seed=11)
    out["grpc_bound"] = grpc_bound(provisioned, workload.batches(min(tokens, 200_000)), work)
    console.print(
        f"  gRPC round trips: mTLS {out['grpc_bound']['mtls']['tokens_per_s']:,.0f} tokens/s, "
        f"plain {out['grpc_bound']['plaintext']['tokens_per_s']:,.0f} tokens/s"
    )
    for backend in backends:
        out[backend]["ratio_to_grpc_mtls"] = (
            out[backend]["tokens_per_s"] / out["grpc_bound"]["mtls"]["tokens_per_s"]
        )
    return out


# --- part 2: scale ------------------------------------------------------------------------

PRELOAD_TX = 200_000
#: Alternating measurement rounds per level.
SCALE_ROUNDS = 6


def preload(store: BrokerStore, workload: Workload, count: int) -> dict[str, Any]:
    """Add ``count`` entries to the index through the store's own insert path
    (``TokenIndex.insert_entries``: the rows, the driver statement, COPY on PostgreSQL), in
    transactions of 200,000 rows, in the workload's random order. About ``OVERLAP`` of
    them join an earlier token of another party, whose open hit group is inserted as
    ``TokenIndex.apply`` does; each 1,000 rows get their ``processed_batches`` record."""
    rng = workload.rng
    now = datetime.now(UTC)
    started = time.perf_counter()
    done = 0
    while done < count:
        size = min(PRELOAD_TX, count - done)
        entries: list[Entry] = []
        groups: list[dict[str, Any]] = []
        for batch in workload.batches(size, overlap=0.0):
            entries += batch.entries
        for i in range(0, len(entries), int(1 / OVERLAP)):
            first = entries[i]
            other = PARTIES[(PARTIES.index(first.party) + 1) % len(PARTIES)]
            entries.append(workload.entry(other, first.token))
            groups.append(
                {
                    "group_id": rng.randbytes(16),
                    "token_prefix": prefix64(first.token),
                    "token": first.token,
                    "revision": 1,
                    "first_seen": now,
                    "last_seen": now,
                    "is_open": True,
                }
            )
        with store.engine.begin() as conn:
            tx = Tx(conn)  # outside write(): memory learns only the parties (below)
            ids = store.database.ids(tx, PARTIES)
            store.tokens.index.insert_entries(tx, entries, ids)
            conn.execute(insert(HitGroup), groups)
            conn.execute(
                insert(ProcessedBatch),
                [
                    {
                        "party_id": ids[PARTIES[n % len(PARTIES)]],
                        "client_batch_id": rng.randbytes(16),
                        "kind": "submit",
                        "digest": rng.randbytes(32),
                        "stored": BATCH,
                        "unchanged": 0,
                        "accepted_at": now,
                    }
                    for n in range(len(entries) // BATCH)
                ],
            )
        store.database.remember(tx.new_parties)
        done += len(entries)
    elapsed = time.perf_counter() - started
    return {"rows": done, "seconds": elapsed, "rows_per_s": done / elapsed}


def settle(engine: Engine) -> None:
    """Finish the bulk load's writes before measuring: SQLite copies its WAL into the
    database file and truncates it; PostgreSQL checkpoints. The next batches then start
    from the state a broker is in after a checkpoint, at either size."""
    if engine.dialect.name == "sqlite":
        connection = sqlite3.connect(str(engine.url.database), isolation_level=None, timeout=60)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            connection.close()
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")


def bytes_written(engine: Engine) -> int:
    """SQLite: bytes this process has written (``/proc/self/io``); PostgreSQL: the
    cluster's WAL position."""
    if engine.dialect.name == "sqlite":
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        return 0
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
            ).scalar_one()
        )


def part_scale(
    console: Console,
    dbs: Databases,
    provisioned: Provisioned,
    backends: Sequence[str],
    levels: tuple[int, int],
    measure_tokens: int,
) -> dict[str, Any]:
    """Two stores, preloaded to the two levels, then measured in alternating rounds so
    that both see the same machine."""
    out: dict[str, Any] = {"levels": list(levels), "measured_tokens": measure_tokens}
    for backend in backends:
        figures: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            runs = []
            for n, level in enumerate(levels):
                workload = Workload(provisioned.covenant, seed=23 + n)
                store = stack.enter_context(broker_store(dbs, backend, f"scale-{level}"))
                submitter = Submitter(store, provisioned)
                for batch in workload.batches(5 * BATCH):
                    submitter.submit(batch)
                loaded = preload(store, workload, level - store.tokens.count_tokens())
                console.print(
                    f"  scale {backend}: preloaded {level:,} at {loaded['rows_per_s']:,.0f} rows/s"
                )
                runs.append((level, store, submitter, workload, loaded))
            for _, store, _, _, _ in runs:
                settle(store.engine)
            for _, _, submitter, workload, _ in runs:  # warm-up after the bulk load
                for batch in workload.batches(5 * BATCH):
                    submitter.submit(batch)
            settle_heap()  # as the broker daemon does once it has started
            rounds: dict[int, list[dict[str, Any]]] = {level: [] for level in levels}
            for _ in range(SCALE_ROUNDS):
                for level, store, submitter, workload, _ in runs:
                    batches = workload.batches(measure_tokens // SCALE_ROUNDS)
                    written = bytes_written(store.engine)
                    measured = submitter.timed(batches)
                    measured["bytes_written"] = bytes_written(store.engine) - written
                    rounds[level].append(measured)
            for level, store, _, _, loaded in runs:
                seconds = sum(r["seconds"] for r in rounds[level])
                tokens = sum(r["tokens"] for r in rounds[level])
                figures[str(level)] = {
                    "indexed": store.tokens.count_tokens(),
                    "tokens": tokens,
                    "tokens_per_s": tokens / seconds,
                    "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds[level]],
                    "batch_ms_p50": statistics.median(r["batch_ms_p50"] for r in rounds[level]),
                    "batch_ms_p99": max(r["batch_ms_p99"] for r in rounds[level]),
                    # SQLite: this process's writes (WAL and checkpoints); PostgreSQL: WAL
                    # bytes of the whole cluster (other databases' too, if busy).
                    "bytes_written_per_batch": sum(r["bytes_written"] for r in rounds[level])
                    / (tokens / BATCH),
                    "preload": loaded,
                    "database_bytes": database_size(store.engine),
                }
        low, high = (figures[str(level)]["tokens_per_s"] for level in levels)
        figures["ratio"] = high / low
        figures["round_ratios"] = [
            h["tokens_per_s"] / lo["tokens_per_s"]
            for lo, h in zip(rounds[levels[0]], rounds[levels[1]], strict=True)
        ]
        out[backend] = figures
        console.print(
            f"  scale {backend}: {low:,.0f} tokens/s at {levels[0]:,}, {high:,.0f} at "
            f"{levels[1]:,} -> {figures['ratio']:.2f}"
        )
    return out


# --- parts 3 and 4: the daemons ----------------------------------------------------------

READY_SECONDS = 60.0
HIT_TIMEOUT = 30.0
DRAIN_TIMEOUT = 1800.0


def valid_bsn(rng: random.Random) -> str:
    while True:
        digits = [rng.randrange(10) for _ in range(8)]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10 and any(digits):
            return "".join(map(str, digits)) + str(check)


def read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to a daemon's SQLite database (WAL: it never blocks it)."""
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)


def epoch_seconds(stored: str) -> float:
    """A timestamp as the stores keep it in SQLite (UTC, no zone) in seconds since 1970."""
    return datetime.fromisoformat(stored).replace(tzinfo=UTC).timestamp()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (``/proc/PID/stat``), and of its
    live descendants (a node's worker processes), and of those it waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # it ended meanwhile
        return 0.0
    own = sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """The process's children, from every one of its threads (``/proc/PID/task/*/children``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in (task / "children").read_text().split())
    return found


class Daemons:
    """``samenloop broker serve`` and the two parties' ``samenloop node serve`` as
    processes on loopback with mTLS and SQLite, as in the demo."""

    def __init__(self, provisioned: Provisioned, work: Path) -> None:
        self.provisioned = provisioned
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        self.processes = Processes(logs, {})
        self.clients: dict[str, NodeClient] = {}
        broker_config = load_broker_config(provisioned.broker_config)
        self.broker_address = broker_config.listen
        self.broker_db = Path(broker_config.database_url.removeprefix("sqlite:///"))
        self.node_db = {
            party: Path(
                load_node_config(provisioned.node_configs[party]).database_url.removeprefix(
                    "sqlite:///"
                )
            )
            for party in (FIRST, SECOND)
        }

    def start(self) -> None:
        cli = [sys.executable, "-m", "samenloop.policies.cli"]
        subprocess.run(
            [*cli, "broker", "migrate", "--config", str(self.provisioned.broker_config)],
            check=True,
            capture_output=True,
        )
        self.processes.start(
            "broker", "broker", "serve", "--config", str(self.provisioned.broker_config)
        )
        for party in (FIRST, SECOND):
            path = self.provisioned.node_configs[party]
            subprocess.run(
                [*cli, "node", "migrate", "--config", str(path)], check=True, capture_output=True
            )
            self.processes.start(party, "node", "serve", "--config", str(path))
            self.clients[party] = NodeClient.from_config(path)
        deadline = time.monotonic() + READY_SECONDS
        waiting = set(self.clients)
        while waiting:
            self.processes.check_alive()
            for party in sorted(waiting):
                with contextlib.suppress(SamenloopError):
                    status = self.clients[party].status()
                    holder = status.key_holder
                    if status.broker_connection == "connected" and holder and holder.channel_open:
                        waiting.discard(party)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"nodes not ready after {READY_SECONDS:.0f} s: {waiting}")
            time.sleep(0.1)

    def stop(self) -> dict[str, int | None]:
        for client in self.clients.values():
            client.close()
        return self.processes.stop()

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(p.pid) for name, p in self.processes.running.items()}

    def backlog(self, party: str) -> tuple[int, int]:
        """Identifiers waiting for a token or for the broker's acknowledgement, and
        unacknowledged outbox entries, from the node's own database."""
        with contextlib.closing(read_only(self.node_db[party])) as db:
            waiting = db.execute(
                "SELECT count(*) FROM signal_identifiers WHERE state IN ('pending', 'tokenised')"
            ).fetchone()[0]
            outbox = db.execute(
                "SELECT count(*) FROM outbox_entries JOIN outbox_batches b ON b.id = batch_id"
                " WHERE b.acked_at IS NULL AND b.rejected_at IS NULL"
            ).fetchone()[0]
        return int(waiting), int(outbox)

    def drain(self, party: str, timeout: float = DRAIN_TIMEOUT, poll: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while self.backlog(party) != (0, 0):
            self.processes.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{party}'s outbox not empty after {timeout:.0f} s")
            time.sleep(poll)


def part_service_ingest(
    console: Console, daemons: Daemons, provisioned: Provisioned, tokens: int
) -> dict[str, Any]:
    """The same kind of batches through the running broker (gRPC, mTLS, the servicer,
    the store on SQLite), one call in flight at a time, from two parties that hold no
    node here (so that hits form between them)."""
    senders = ("belastingdienst", "woningcorporatie")
    workload = Workload(provisioned.covenant, seed=31, parties=senders)
    warm = submit_requests(workload.batches(10 * BATCH))
    batches = workload.batches(tokens)
    requests = submit_requests(batches)
    channels = {p: party_channel(provisioned, p, daemons.broker_address) for p in senders}
    stubs = {p: broker_pb2_grpc.BrokerStub(c) for p, c in channels.items()}
    try:
        for n, request in enumerate(warm):
            stubs[senders[n % 2]].SubmitTokens(request, timeout=60)
        before = daemons.cpu()
        latencies = []
        started = time.perf_counter()
        for batch, request in zip(batches, requests, strict=True):
            t0 = time.perf_counter()
            stubs[batch.party].SubmitTokens(request, timeout=60)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        after = daemons.cpu()
    finally:
        for channel in channels.values():
            channel.close()
    out = {
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "batch_ms_p50": percentile(latencies, 50) * 1e3,
        "batch_ms_p99": percentile(latencies, 99) * 1e3,
        "broker_cpu_share": (after["broker"] - before["broker"]) / elapsed,
    }
    console.print(
        f"  broker service ingest (SQLite, mTLS): {out['tokens_per_s']:,.0f} tokens/s, "
        f"broker process CPU {out['broker_cpu_share']:.0%} of one core"
    )
    return out


def part_latency(console: Console, daemons: Daemons, rounds: int) -> dict[str, Any]:
    """The first partner holds ``rounds`` subjects; the second adds one signal per round
    on one of them; the first's application times the hit's arrival."""
    first, second = daemons.clients[FIRST], daemons.clients[SECOND]
    rng = random.Random(5)
    bsns: list[str] = []
    while len(bsns) < rounds:
        bsn = valid_bsn(rng)
        if bsn not in bsns:
            bsns.append(bsn)
    report = first.import_signals(
        [SignalInput(f"POL-{i:04d}", "drugsproductie", [("bsn", b)]) for i, b in enumerate(bsns)]
    )
    assert report.imported == rounds, report.errors[:3]
    daemons.drain(FIRST)

    arrivals: queue.Queue[tuple[float, float, Any]] = queue.Queue()
    watch = first.watch_hits()

    def listen() -> None:
        for hit in watch:
            arrivals.put((time.perf_counter(), time.time(), hit))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    samples = []
    try:
        for i, bsn in enumerate(bsns):
            time.sleep(rng.uniform(0.05, 0.15))  # each round starts from an idle system
            second.add_signal(f"GEM-{i:04d}", "vastgoedmisbruik", [("bsn", bsn)])
            t0, w0 = time.perf_counter(), time.time()
            t1, w1, hit = arrivals.get(timeout=HIT_TIMEOUT)
            own = [s.reference for s in hit.own_signals]
            if own != [f"POL-{i:04d}"]:
                raise RuntimeError(f"round {i}: expected POL-{i:04d}, got {own}")
            samples.append(
                {
                    "reference": f"GEM-{i:04d}",
                    "latency": t1 - t0,
                    "added": w0,
                    "received": w1,
                    "node_received_at": hit.received_at.timestamp() if hit.received_at else None,
                }
            )
    finally:
        watch.cancel()
    stages = latency_stages(daemons, samples)
    latencies = [s["latency"] for s in samples]
    out = {
        "rounds": rounds,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "stages_ms": stages,
    }
    console.print(
        f"  hit latency: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms over {rounds}"
    )
    return out


def latency_stages(daemons: Daemons, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where each round's time went, from the timestamps the processes stored (one
    machine, one clock): the second node's outbox batch (``created_at``: tokens made;
    ``acked_at``), the broker's processed batch (``accepted_at``: SubmitTokens began)
    and the first node's hit (``received_at``: the notice verified, before its commit)."""
    with contextlib.closing(read_only(daemons.node_db[SECOND])) as db:
        batches = {
            reference: (bytes(batch_id), created, acked)
            for reference, batch_id, created, acked in db.execute(
                "SELECT s.reference, b.client_batch_id, b.created_at, b.acked_at"
                " FROM outbox_batches b JOIN outbox_entries e ON e.batch_id = b.id"
                " JOIN signal_identifiers i ON i.id = e.identifier_id"
                " JOIN signals s ON s.id = i.signal_id"
            )
        }
    with contextlib.closing(read_only(daemons.broker_db)) as db:
        accepted = {
            bytes(batch_id): at
            for batch_id, at in db.execute(
                "SELECT client_batch_id, accepted_at FROM processed_batches"
            )
        }
    names = (
        "tokenise: wake, OPRF through the broker and both holders",
        "store tokens and outbox, send to the broker",
        "broker matches and commits, mailbox stream, notice verified",
        "first node commits the hit, WatchHits to the application",
    )
    per_stage: list[list[float]] = [[] for _ in names]
    for sample in samples:
        batch_id, created, _ = batches[sample["reference"]]
        marks = (
            sample["added"],
            epoch_seconds(created),
            epoch_seconds(accepted[batch_id]),
            sample["node_received_at"],
            sample["received"],
        )
        for n in range(len(names)):
            per_stage[n].append(marks[n + 1] - marks[n])
    return {
        name: {
            "p50": percentile(values, 50) * 1e3,
            "p99": percentile(values, 99) * 1e3,
            "mean": statistics.fmean(values) * 1e3,
        }
        for name, values in zip(names, per_stage, strict=True)
    }


def uplink_cycles(daemons: Daemons, after_batch: int) -> dict[str, Any]:
    """How the second node's work loop spent the run, from its outbox: each pass
    tokenises up to 5,000 identifiers (``created_at`` of the batches it stores at once)
    and then sends them one by one (their ``acked_at``); the next pass starts after the
    last acknowledgement."""
    with contextlib.closing(read_only(daemons.node_db[SECOND])) as db:
        rows = [
            (epoch_seconds(created), epoch_seconds(acked), count)
            for created, acked, count in db.execute(
                "SELECT b.created_at, b.acked_at, count(e.position) FROM outbox_batches b"
                " JOIN outbox_entries e ON e.batch_id = b.id WHERE b.id > ?"
                " GROUP BY b.id ORDER BY b.id",
                (after_batch,),
            )
        ]
    passes: list[list[tuple[float, float, int]]] = []
    for row in rows:
        if passes and passes[-1][0][0] == row[0]:
            passes[-1].append(row)
        else:
            passes.append([row])
    tokenising = sending = 0.0
    for n, group in enumerate(passes):
        sending += max(acked for _, acked, _ in group) - group[0][0]
        if n:
            tokenising += group[0][0] - max(acked for _, acked, _ in passes[n - 1])
    tokens = sum(count for _, _, count in rows[len(passes[0]) :]) if len(passes) > 1 else 0
    return {
        "passes": len(passes),
        "batches": len(rows),
        "tokens_per_pass_median": statistics.median(sum(r[2] for r in g) for g in passes),
        # Excluding the first pass, whose start is not recorded:
        "tokenising_seconds": tokenising,
        "sending_seconds": sending,
        "tokenising_tokens_per_s": tokens / tokenising if tokenising else None,
        "sending_tokens_per_s": sum(r[2] for r in rows) / sending if sending else None,
    }


def part_end_to_end(
    console: Console, daemons: Daemons, signals: int, *, seed: int = 99, prefix: str = "IMP"
) -> dict[str, Any]:
    """The second node imports ``signals`` signals of one BSN each through the client
    library; tokens/s until none waits for a token or an acknowledgement."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < signals:
        bsn = valid_bsn(rng)
        if bsn in seen:
            continue
        seen.add(bsn)
        rows.append(SignalInput(f"{prefix}-{len(rows):06d}", "witwasindicatie", [("bsn", bsn)]))
    client = daemons.clients[SECOND]
    with contextlib.closing(read_only(daemons.broker_db)) as db:
        before_tokens = db.execute("SELECT count(*) FROM token_entries").fetchone()[0]
    with contextlib.closing(read_only(daemons.node_db[SECOND])) as db:
        last_batch = db.execute("SELECT coalesce(max(id), 0) FROM outbox_batches").fetchone()[0]
    cpu_before = daemons.cpu()
    started = time.perf_counter()
    report = client.import_signals(rows)
    imported = time.perf_counter() - started
    daemons.drain(SECOND, poll=0.25)
    elapsed = time.perf_counter() - started
    cpu_after = daemons.cpu()
    with contextlib.closing(read_only(daemons.broker_db)) as db:
        after_tokens = db.execute("SELECT count(*) FROM token_entries").fetchone()[0]
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    out = {
        "signals": signals,
        "imported": report.imported,
        "import_call_seconds": imported,
        "seconds_until_outbox_empty": elapsed,
        "tokens_per_s": report.imported / elapsed,
        "broker_token_entries_added": after_tokens - before_tokens,
        "cpu_seconds": cpu,
        "cpu_cores_busy": sum(cpu.values()) / elapsed,
        "cores": os.cpu_count(),
        "uplink_cycles": uplink_cycles(daemons, last_batch),
    }
    console.print(
        f"  end to end: {signals:,} signals in {elapsed:.1f} s -> {out['tokens_per_s']:,.0f} "
        f"tokens/s (import call {imported:.1f} s; {out['cpu_cores_busy']:.2f} cores busy)"
    )
    return out


def part_cores(console: Console, work: Path, signals: int, rounds: int) -> dict[str, Any]:
    """The end-to-end import with ``workers = 1`` in both nodes' ``node.toml`` and with
    ``workers`` = the cores, each on a fresh covenant and fresh daemons, alternated
    (1, all; all, 1; ...) for ``rounds`` rounds in this run so that a change in the machine's
    load weighs on both; the ratio of their mean throughputs against 0.8 x the cores. Each
    run also says how much of the machine other processes used meanwhile."""
    cores = len(os.sched_getaffinity(0))
    settings = sorted({1, cores})
    runs: dict[str, list[dict[str, Any]]] = {str(w): [] for w in settings}
    for round_ in range(rounds):
        for workers in settings if round_ % 2 == 0 else settings[::-1]:
            run_dir = work / f"cores-{round_}-{workers}"
            provisioned = provision(
                run_dir / "covenant", COVENANT, SPECS, [FIRST, SECOND], 2, now=datetime.now(UTC)
            )
            for party in (FIRST, SECOND):
                path = provisioned.node_configs[party]
                path.write_text(path.read_text() + f"workers = {workers}\n")
            console.print(f"  round {round_ + 1}, workers = {workers}:")
            daemons = Daemons(provisioned, run_dir)
            try:
                daemons.start()
                # A first import starts the worker processes (they start at the first need).
                part_end_to_end(console, daemons, WARM_SIGNALS, seed=7, prefix="WARM")
                busy_before, own_before = machine_busy_seconds(), time.process_time()
                started = time.perf_counter()
                run = part_end_to_end(console, daemons, signals)
                busy = machine_busy_seconds() - busy_before
                own = time.process_time() - own_before  # this client: the import, the polls
                elapsed = time.perf_counter() - started
                run["machine_cores_busy"] = busy / elapsed
                run["bench_client_cores_busy"] = own / elapsed
                run["other_processes_cores_busy"] = (
                    busy - own - sum(run["cpu_seconds"].values())
                ) / elapsed
                runs[str(workers)].append(run)
            finally:
                daemons.stop()
    mean = {w: statistics.mean(r["tokens_per_s"] for r in rs) for w, rs in runs.items()}
    one, all_ = mean["1"], mean[str(cores)]
    out = {
        "cores": cores,
        "signals": signals,
        "rounds": rounds,
        "runs": runs,
        "mean_tokens_per_s": mean,
        "ratio": all_ / one,
        "target": 0.8 * cores,
        "load_average": os.getloadavg(),
    }
    console.print(
        f"  all cores / one worker: {out['ratio']:.2f} (target >= {out['target']:.1f}); "
        f"means {one:,.0f} and {all_:,.0f} tokens/s"
    )
    return out


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine spent so far (``/proc/stat``: user, nice,
    system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- helpers ----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- running the parts ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker benchmark")
    group.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="small",
        help="small (default, about 10 minutes): scale ratio 3M/1M; full: 10M/1M, 1M ingest",
    )
    group.add_argument(
        "--broker-parts",
        default=",".join(PARTS),
        help=f"comma-separated, of {', '.join(PARTS)} (default: all)",
    )
    group.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql")
    group.add_argument("--ingest-tokens", type=int, help="override the scale's ingest size")
    group.add_argument("--scale-levels", help="override the scale's levels, e.g. 1000000,3000000")
    group.add_argument("--latency-rounds", type=int, help="override the number of hits timed")
    group.add_argument("--e2e-signals", type=int, help="override the signals imported")
    group.add_argument(
        "--cores-signals", type=int, help="override the signals imported per workers setting"
    )
    group.add_argument(
        "--cores-rounds",
        type=int,
        default=2,
        help="rounds of the cores part, each one run per workers setting (default 2)",
    )


def _choices(value: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def run(
    args: argparse.Namespace, console: Console, pipeline_tokens_per_s: float | None = None
) -> dict[str, Any]:
    """Run the selected parts, write bench/results/broker.json, print the table."""
    preset = SCALES[args.scale]
    parts = _choices(args.broker_parts, PARTS, "part")
    backends = _choices(args.backends, BACKENDS, "backend")
    levels = (
        tuple(int(v) for v in args.scale_levels.split(","))
        if args.scale_levels
        else preset.scale_levels
    )
    if len(levels) != 2:
        raise SystemExit("--scale-levels takes two sizes")
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": args.scale,
        "machine": {
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "load_average_at_start": os.getloadavg(),
        },
        "seconds": {},
    }
    # End cleanly (databases dropped, daemons stopped) on SIGTERM too.
    previous = signal.signal(signal.SIGTERM, _terminate)
    work = Path(tempfile.mkdtemp(prefix="samenloop-bench-"))
    dbs = Databases(work)
    daemons: Daemons | None = None
    try:
        provisioned = provision(
            work / "covenant", COVENANT, SPECS, [FIRST, SECOND], 2, now=datetime.now(UTC)
        )
        if "ingest" in parts:
            console.print("[bold]1. broker ingest and its bounds")
            with _timed(results, "ingest"):
                results["ingest"] = part_ingest(
                    console,
                    dbs,
                    provisioned,
                    backends,
                    args.ingest_tokens or preset.ingest_tokens,
                    work,
                )
        if "scale" in parts:
            console.print(f"[bold]2. scale: {levels[0]:,} vs {levels[1]:,} tokens indexed")
            with _timed(results, "scale"):
                results["scale"] = part_scale(
                    console, dbs, provisioned, backends, levels, preset.scale_measure_tokens
                )
        service = "ingest" in parts and "sqlite" in backends
        if service or "latency" in parts or "e2e" in parts:
            console.print("[bold]3. the daemons: broker and two nodes as processes, mTLS")
            daemons = Daemons(provisioned, work)
            with _timed(results, "daemons_start"):
                daemons.start()
            if service:
                with _timed(results, "service_ingest"):
                    results["service_ingest"] = part_service_ingest(
                        console, daemons, provisioned, preset.service_tokens
                    )
            if "latency" in parts:
                with _timed(results, "latency"):
                    results["latency"] = part_latency(
                        console, daemons, args.latency_rounds or preset.latency_rounds
                    )
            if "e2e" in parts:
                console.print("[bold]4. end to end: one node imports")
                with _timed(results, "e2e"):
                    e2e = part_end_to_end(console, daemons, args.e2e_signals or preset.e2e_signals)
                if pipeline_tokens_per_s:
                    e2e["pipeline_tokens_per_s_same_run"] = pipeline_tokens_per_s
                    e2e["ratio_to_pipeline"] = e2e["tokens_per_s"] / pipeline_tokens_per_s
                results["e2e"] = e2e
            codes = daemons.stop()
            daemons = None
            results["daemon_exit_codes"] = codes
        if "cores" in parts:
            console.print("[bold]5. end to end with one worker process and with all cores")
            with _timed(results, "cores"):
                results["cores"] = part_cores(
                    console, work, args.cores_signals or preset.cores_signals, args.cores_rounds
                )
    finally:
        if daemons is not None:
            daemons.stop()
        dbs.close()
        shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(console, results)
    console.print(f"written {RESULTS}")
    return results


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


@contextlib.contextmanager
def _timed(results: dict[str, Any], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        results["seconds"][name] = round(time.monotonic() - started, 1)


def print_table(console: Console, results: dict[str, Any]) -> None:
    rate = "{:,.0f} tokens/s".format
    table = Table(title=f"Samenloop broker (--scale {results['preset']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target")
    ingest = results.get("ingest")
    if ingest:
        for backend in BACKENDS:
            if backend not in ingest:
                continue
            r = ingest[backend]
            bound = r["bare_insert"]
            table.add_row(f"ingest {backend}, TokenStore.submit", rate(r["tokens_per_s"]), "")
            for key, value in bound.items():
                if key.startswith("same_table_"):
                    method = key.removeprefix("same_table_").removesuffix("_tokens_per_s")
                    table.add_row(f"  bare insert, same rows and table ({method})", rate(value), "")
            table.add_row(
                "  bare insert, tokens alone, full-token index",
                rate(bound["token_only_executemany_tokens_per_s"]),
                "",
            )
            ratio = r["ratio_to_bare_insert"]
            met = _target(ratio >= 0.5, ">= 0.5")
            table.add_row("  [bold]ingest / bare insert[/bold]", f"{ratio:.2f}", met)
            cpu = r["cpu_outside_database_per_batch"]
            table.add_row(
                "  per batch: submit p50 / parse+match / build rows",
                f"{r['batch_ms_p50']:.1f} / {cpu['parse_and_match_ms']:.1f} / "
                f"{cpu['build_rows_ms']:.1f} ms",
                "",
            )
        grpc_bound = ingest["grpc_bound"]
        table.add_row("bare gRPC round trips, mTLS", rate(grpc_bound["mtls"]["tokens_per_s"]), "")
        plain = grpc_bound["plaintext"]["tokens_per_s"]
        table.add_row("bare gRPC round trips, plain loopback", rate(plain), "")
    service = results.get("service_ingest")
    if service:
        table.add_row("broker daemon over mTLS (SQLite)", rate(service["tokens_per_s"]), "")
    scale = results.get("scale")
    if scale:
        low, high = scale["levels"]
        for backend in BACKENDS:
            if backend not in scale:
                continue
            r = scale[backend]
            low_rate = rate(r[str(low)]["tokens_per_s"])
            table.add_row(f"scale {backend}, {low:,} indexed", low_rate, "")
            table.add_row(
                f"scale {backend}, {high:,} indexed", rate(r[str(high)]["tokens_per_s"]), ""
            )
            label = "10M / 1M" if (low, high) == (1_000_000, 10_000_000) else "(not 10M/1M)"
            table.add_row(
                f"  [bold]ratio {high:,} / {low:,}[/bold]",
                f"{r['ratio']:.2f}",
                _target(r["ratio"] >= 0.8, f">= 0.8 {label}"),
            )
    latency = results.get("latency")
    if latency:
        p50 = f"{latency['p50_ms']:.1f} ms"
        table.add_row(f"hit latency p50 ({latency['rounds']} hits)", p50, "")
        table.add_row(
            "  [bold]hit latency p99[/bold]",
            f"{latency['p99_ms']:.1f} ms",
            _target(latency["p99_ms"] < 50, "< 50 ms"),
        )
        for name, stage in latency["stages_ms"].items():
            table.add_row(f"  p50 {name}", f"{stage['p50']:.1f} ms", "")
    e2e = results.get("e2e")
    if e2e:
        table.add_row(
            f"end to end, {e2e['signals']:,} signals, until the outbox is empty",
            rate(e2e["tokens_per_s"]),
            "",
        )
        table.add_row(
            "  import call / until empty",
            f"{e2e['import_call_seconds']:.1f} s / {e2e['seconds_until_outbox_empty']:.1f} s",
            "",
        )
        cycles = e2e["uplink_cycles"]
        if cycles.get("tokenising_tokens_per_s"):
            table.add_row(
                "  node's passes: tokenising / sending",
                f"{cycles['tokenising_tokens_per_s']:,.0f} / {cycles['sending_tokens_per_s']:,.0f}"
                " tokens/s",
                "",
            )
        table.add_row(
            "  CPU cores busy (all daemons)", f"{e2e['cpu_cores_busy']:.2f} of {e2e['cores']}", ""
        )
        if "ratio_to_pipeline" in e2e:
            table.add_row(
                "  ratio to the one-core tokenising pipeline", f"{e2e['ratio_to_pipeline']:.2f}", ""
            )
    cores = results.get("cores")
    if cores:
        for workers, rs in cores["runs"].items():
            table.add_row(
                f"end to end, {cores['signals']:,} signals, workers = {workers}",
                " / ".join(rate(r["tokens_per_s"]) for r in rs),
                "",
            )
            table.add_row(
                "  cores busy: the daemons, other work on the machine",
                " / ".join(
                    f"{r['cpu_cores_busy']:.2f}, {r['other_processes_cores_busy']:.2f}" for r in rs
                ),
                "",
            )
        target = cores["target"]
        table.add_row(
            "  [bold]all cores / one worker (means)[/bold]",
            f"{cores['ratio']:.2f}",
            _target(cores["ratio"] >= target, f">= {target:.1f} (0.8 x {cores['cores']} cores)"),
        )
    console.print(table)
    console.print(f"seconds per part: {results['seconds']}")


def _target(met: bool, target: str) -> str:
    return f"{target}: met" if met else f"{target}: [red]not met[/red]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args, Console())
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_echo-server":
        raise SystemExit(serve_echo(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
    raise SystemExit(main())
