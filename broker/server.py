"""The broker process: mTLS gRPC server, health and reflection, retention sweep.

``check_files`` refuses to go on, as ssh does, when another account may use the
broker's data directory or secret files (the TLS private key, the signing keys), or
write the covenant file it trusts (``broker serve`` and ``migrate`` check
``broker.toml`` itself the same way, :func:`load_config`).
``build_server`` runs it, then wires the servicer to a ``grpc.Server`` with the covenant CA
as the only client root (``require_client_auth=True``), the error and party
interceptors, the standard health service and server reflection; its own certificate is
taken again when its files are replaced (:mod:`samenloop.broker.tls`). ``serve``
runs it until SIGTERM or SIGINT and sweeps expired tokens meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from samenloop.broker.auth import PartyInterceptor
from samenloop.broker.covenant_store import CovenantStore, TimestampRecord
from samenloop.broker.metrics import BrokerMetrics
from samenloop.broker.notify import COVENANT_CHANNEL, MAILBOX_CHANNEL, Listener, MailboxBell
from samenloop.broker.relay import Switchboard
from samenloop.broker.replica_relay import RELAY_CHANNEL, ReplicaRelay, replica_id
from samenloop.broker.service import BrokerContext, BrokerService
from samenloop.broker.store import BrokerStore
from samenloop.broker.tls import ServingCertificate
from samenloop.policies import database, logs
from samenloop.policies.config import (
    BrokerConfig,
    load_broker_config,
    private_directories,
    secret_files,
    trusted_files,
)
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import ConfigurationError, SamenloopError
from samenloop.policies.freshness import CovenantTimestamp, verify_timestamp
from samenloop.policies.metrics import MetricsEndpoint, RpcMetricsInterceptor, serve_registry
from samenloop.policies.process import (
    DataDirectoryLock,
    check_private,
    check_trusted,
    run_until_signalled,
    settle_heap,
)
from samenloop.policies.rpc import ErrorInterceptor
from samenloop.policies.trust import (
    HeldCovenant,
    SignedCovenant,
    TrustState,
    load_signed_covenant,
)
from samenloop.v1 import broker_pb2, broker_pb2_grpc, common_pb2

log = structlog.get_logger(__name__)

MIGRATIONS = "samenloop.broker.migrations"
SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["Broker"].full_name
MAX_WORKERS = 64
SWEEP_SECONDS = 60.0
#: How long a start waits for its notifications' connection (PostgreSQL).
LISTEN_SECONDS = 10.0

#: Message size limits on both directions, from the wire format.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", common_pb2.LIMITS_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", common_pb2.LIMITS_MAX_MESSAGE_BYTES),
]


@dataclass
class RunningBroker:
    """A started broker: its server, the port it listens on, and its service."""

    server: grpc.Server
    port: int
    service: BrokerService
    store: BrokerStore
    #: The data directory is this broker's alone until it stops.
    lock: DataDirectoryLock
    #: PostgreSQL: what the other broker replicas notify (mailbox wake-ups, relayed
    #: evaluations), and this replica's end of the relay between replicas.
    listener: Listener | None = None
    relay: ReplicaRelay | None = None
    #: The Prometheus endpoint, when ``metrics_listen`` is set.
    metrics: MetricsEndpoint | None = None
    #: The TLS certificate served, taken again when its files are replaced.
    certificate: ServingCertificate | None = None

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, end the open streams, give the other calls ``grace`` seconds
        to finish."""
        stopped = self.server.stop(grace)  # refuses new calls from here on
        self.service.end_streams()
        stopped.wait()
        if self.listener is not None:
            self.listener.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.store.engine.dispose()
        self.lock.release()


def check_files(config: BrokerConfig) -> None:
    """The data directories (made 0700 if missing) and every secret file must be this
    account's and closed to group and others, the covenant file closed to their writing;
    else ``ConfigurationError`` names the setting, the path and the fix."""
    check_private(private_directories(config), secret_files(config), trusted_files(config))


def load_config(config_path: Path) -> BrokerConfig:
    """``broker.toml``, read as the broker's own orders: refused if another account may
    write it (or the directory that holds it), as ssh refuses such a configuration."""
    config = load_broker_config(config_path)
    check_trusted([("--config", Path(config_path))])
    return config


def build_server(
    config: BrokerConfig,
    *,
    covenant: Callable[[], Covenant] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    evaluate_timeout: float | None = None,
) -> RunningBroker:
    """Check the files, lock the data directory, open the store (at the schema head), build
    and start the server."""
    check_files(config)
    lock = DataDirectoryLock.acquire(config.data_dir, "broker")
    try:
        return _start(config, lock, covenant, clock, evaluate_timeout)
    except BaseException:
        lock.release()
        raise


def _start(
    config: BrokerConfig,
    lock: DataDirectoryLock,
    covenant: Callable[[], Covenant] | None,
    clock: Callable[[], datetime],
    evaluate_timeout: float | None,
) -> RunningBroker:
    root = load_signed_covenant(config.covenant)
    held = HeldCovenant(TrustState(root))
    covenant_source = covenant or held
    engine = database.make_engine(config.database_url)
    database.check_at_head(engine, MIGRATIONS)
    store = BrokerStore(engine, owner=held().broker.id)
    # Every version held counts for how far ahead entries may expire (see BrokerContext).
    held_retention_days = held().policy.retention.longest_days
    for stored in store.covenants.covenant_versions():  # versions published since the root
        replayed = held.replay(
            SignedCovenant.from_proto(common_pb2.SignedCovenant.FromString(stored))
        )
        held_retention_days = max(
            held_retention_days, replayed.covenant.policy.retention.longest_days
        )
    current = held()
    keys = PartyKeys.load(config.signing_keys)
    if keys.public().ed25519 != current.broker.ed25519:
        raise ConfigurationError(
            "the signing keys are not the broker's key in the covenant", field="signing_keys"
        )
    if not current.covers(clock()):
        log.warning(
            "the covenant in force is outside its validity period; publish a new version",
            version=current.version,
            valid_until=current.valid_until.isoformat(),
        )
    if config.covenant_timestamp is not None:
        take_first_timestamp(config.covenant_timestamp, held, store.covenants, now=clock())
    started = time.perf_counter()
    indexed = store.tokens.prepare_index()
    if indexed is not None:
        log.info(
            "token index filter built",
            tokens=indexed,
            seconds=round(time.perf_counter() - started, 2),
        )
    # Mailbox wake-ups: rung here for what this process enqueued, and on PostgreSQL for what
    # any replica enqueued (its NOTIFY, heard by this process's listener).
    bell = MailboxBell()
    # The OPRF relay: in this process, and on PostgreSQL through the other replicas too.
    switchboard = Switchboard()
    relay = None
    if store.database.postgres:
        relay = ReplicaRelay(engine, switchboard, replica_id())
        switchboard.remote = relay
    metrics = BrokerMetrics(store, covenant_source, clock)
    context = BrokerContext(
        bell=bell,
        switchboard=switchboard,
        covenant=covenant_source,
        store=store,
        keys=keys,
        clock=clock,
        trust=held,
        held_retention_days=held_retention_days,
        root=root,
        metrics=metrics,
    )
    if evaluate_timeout is not None:
        context.evaluate_timeout = evaluate_timeout
    service = BrokerService(context)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="broker"),
        # Metrics outermost: they see every call with the status it ended with.
        interceptors=[
            RpcMetricsInterceptor(metrics.rpc),
            ErrorInterceptor(),
            PartyInterceptor(covenant_source),
        ],
        options=CHANNEL_OPTIONS,
    )
    broker_pb2_grpc.add_BrokerServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_name, reflection.SERVICE_NAME), server
    )
    # Taken again from its files when they are replaced (renewal without a restart).
    serving = ServingCertificate(config.certificate, config.private_key, current.ca_certificate)
    credentials = serving.credentials()
    port = server.add_secure_port(config.listen, credentials)
    if port == 0:
        engine.dispose()
        raise ConfigurationError(f"cannot listen on {config.listen}", field="listen")
    endpoint = None
    if config.metrics_listen is not None:
        try:
            endpoint = serve_registry(metrics.registry, config.metrics_listen)
        except ConfigurationError:
            engine.dispose()
            raise
        log.info("metrics served", address=config.metrics_listen, port=endpoint.port)
    listener = None
    if relay is not None:

        def listening() -> None:  # notifications may have been missed
            bell.ring_all()
            relay.woken()
            service.adopt_published()

        def adopt(_version: str) -> None:  # the store says which versions are new
            service.adopt_published()

        listener = Listener(
            engine,
            {
                MAILBOX_CHANNEL: lambda party: bell.ring([party]),
                RELAY_CHANNEL: relay.notified,
                COVENANT_CHANNEL: adopt,
            },
            on_listening=listening,
            name=relay.listener_name,
        )
        listener.start()
        # Its connection is what tells other replicas that this one's holder seats are live.
        if not listener.listening.wait(LISTEN_SECONDS):
            log.warning("not listening to the database's notifications yet")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info("broker listening", address=config.listen, port=port, covenant=current.id)
    return RunningBroker(
        server=server,
        port=port,
        service=service,
        store=store,
        lock=lock,
        listener=listener,
        relay=relay,
        metrics=endpoint,
        certificate=serving,
    )


def take_first_timestamp(
    path: Path, held: HeldCovenant, covenants: CovenantStore, *, now: datetime
) -> None:
    """Take the covenant timestamp of ``broker.toml``'s ``covenant_timestamp`` file when it
    vouches for the version held and is newer than the one the store holds: the first one,
    before the timestamp job publishes. A file that is not a timestamp of this covenant,
    or whose signature or digest fails for the version held, stops the start
    (``ConfigurationError``); one for an older version, or expired, is only logged."""
    if not path.exists():
        log.warning("the covenant timestamp file is missing", path=str(path))
        return
    try:
        stamp = CovenantTimestamp.from_json(path.read_bytes(), source=str(path))
        covenant = held()
        if stamp.covenant_id == covenant.id and stamp.version < covenant.version:
            log.info("the covenant timestamp file is for an older version", version=stamp.version)
            return
        verify_timestamp(stamp, covenant, held.signed.body, now=now, field="covenant_timestamp")
    except (SamenloopError, OSError) as error:
        raise ConfigurationError(
            f"{path} is not a valid covenant timestamp of this covenant's version "
            f"{held().version}: {error}",
            field="covenant_timestamp",
        ) from error
    if now >= stamp.expires_at:
        log.info("the covenant timestamp file has expired", expires_at=stamp.expires_at.isoformat())
        return
    record = TimestampRecord(stamp.version, stamp.signed, stamp.issued_at, stamp.expires_at)
    if covenants.publish_timestamp(record, recipients=[], now=now):
        log.info("covenant timestamp taken from file", expires_at=stamp.expires_at.isoformat())


def serve(config: BrokerConfig) -> int:
    """Run the broker until SIGTERM or SIGINT."""
    logs.configure(config.log_level, config.log_format)
    running = build_server(config)
    settle_heap()
    # Checkpoints of the audit log are signed with the broker's key, each sweep and at the end.
    keys = PartyKeys.load(config.signing_keys)

    def sweep() -> None:
        removed = running.service.expire()
        if removed:
            log.info("expired token entries dropped", count=removed)
        if running.relay is not None:  # what another replica left, or announced unheard
            running.relay.sweep()
            running.service.adopt_published()
        running.store.audit.audit_checkpoint(keys, now=datetime.now(UTC))
        if running.certificate is not None:
            running.certificate.check_expiry()

    run_until_signalled(SWEEP_SECONDS, sweep)
    log.info("broker stopping")
    running.stop()
    # After the servers stopped, so the last checkpoint covers every entry; then close again.
    running.store.audit.audit_checkpoint(keys, now=datetime.now(UTC))
    running.store.engine.dispose()
    return 0
