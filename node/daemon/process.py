"""The node process: its repositories, its uplink to the broker, its local API.

``build_node`` checks everything a partner's IT department would otherwise
discover the hard way — the data directories and secret files are this
account's alone (refused as ssh refuses an open key), the covenant and CA files
(and, in ``serve`` and ``migrate``, ``node.toml`` itself) are closed to other
accounts' writing, the party is in the
covenant, the key file is this party's, the TLS certificate is valid and names
this party, the database is at the schema head — and then starts the local API,
which takes only calls that carry the node's API token
(:mod:`samenloop.node.daemon.api_token`), and the uplink. ``serve`` runs it until
SIGTERM or SIGINT and sweeps expired signals meanwhile.

The covenant file holds the signed root version the partner trusts out of
band; versions accepted since (from the broker's mailbox, verified) are kept in
the store and replayed over it at start, each checked again against the one
before. Every component reads the resulting ``HeldCovenant`` on each use. The
attribute keys dealt in those versions are opened into one
``AttributeKeyRing`` as they are replayed (and by the uplink as updates
arrive), so a node reads every version it was dealt. The newest covenant
timestamp the node kept is verified again before the uplink starts
(:class:`~samenloop.node.daemon.covenant_keeper.CovenantKeeper`): until one vouches
for the version held, the node seals and releases nothing new.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from samenloop.node.daemon.api import HitBell, NodeApiContext, NodeApiService
from samenloop.node.daemon.api_token import RefusedCalls, TokenInterceptor, ensure_token
from samenloop.node.daemon.covenants import CovenantStore
from samenloop.node.daemon.failover import BrokerSwitch
from samenloop.node.daemon.metrics import NodeMetrics
from samenloop.node.daemon.repositories import Repositories
from samenloop.node.daemon.uplink import Uplink, broker_channel, learn_attribute_key
from samenloop.node.tokens import keysetup, threshold
from samenloop.node.tokens.holders import EpochHolders
from samenloop.node.tokens.workers import Workers
from samenloop.policies import certs, crypto, database, logs
from samenloop.policies.config import (
    NodeConfig,
    default_workers,
    load_node_config,
    private_directories,
    secret_files,
    trusted_files,
)
from samenloop.policies.covenant import AttributeKeyRing, Covenant
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.errors import ConfigurationError, CovenantRejected, SamenloopError
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
    check_validity,
    load_signed_covenant,
)
from samenloop.v1 import common_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

MIGRATIONS = "samenloop.node.daemon.migrations"
SWEEP_SECONDS = 60.0


@dataclass
class RunningNode:
    """A started node: its local API server and address, uplink and repositories, and the local
    calls it refused, waiting for the audit log."""

    server: grpc.Server
    api_address: str
    uplink: Uplink
    repositories: Repositories
    socket_path: Path | None
    refused: RefusedCalls
    #: The data directory is this node's alone until it stops.
    lock: DataDirectoryLock
    #: The Prometheus endpoint, when ``metrics_listen`` is set.
    metrics: MetricsEndpoint | None = None
    #: The node's TLS certificate: read again for each new channel, its expiry watched.
    tls: ClientCertificate | None = None

    def stop(self, grace: float | None = 2.0) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        self.uplink.stop()
        self.uplink.brokers.close()
        self.server.stop(grace).wait()
        self.refused.flush()
        self.repositories.engine.dispose()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        self.lock.release()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {what} {path}: {error.strerror}", field=what
        ) from error


class ClientCertificate:
    """The node's TLS client certificate, key and the covenant CA, read from their files for
    each new channel to the broker; the sweep asks :meth:`renewed` whether the files changed,
    and the switch then makes new channels, so that a renewed pair is used without a
    restart. A pair that does not pass (the key is not the certificate's, another
    CA, not valid now, not this party's) is refused with one error line naming the setting;
    the pair read before is used meanwhile."""

    def __init__(self, config: NodeConfig, party: str, clock: Callable[[], datetime]) -> None:
        self._config = config
        self._party = party
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = self._signature()
        self._refused: tuple[tuple[int, int, int], ...] | None = None
        self._pair = self._load()  # at start a bad pair is a ConfigurationError

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        found = [os.stat(path) for path in (self._config.certificate, self._config.private_key)]
        return tuple((f.st_ino, f.st_mtime_ns, f.st_size) for f in found)

    def renewed(self) -> bool:
        """At each sweep: whether the files hold a new pair that passes (then new channels
        should be made); a bad one is refused with one error line, the pair before kept."""
        try:
            signature = self._signature()
        except OSError:  # mid-replacement: look again at the next sweep
            return False
        with self._lock:
            if signature in (self._seen, self._refused):
                return False
            try:
                pair = self._load()
            except SamenloopError as error:
                self._refused = signature
                log.error(
                    "the replaced TLS certificate is refused; the one before is still used",
                    setting=error.field or "certificate",
                    reason=error.message,
                )
                return False
            self._seen, self._refused = signature, None
            if pair[0] == self._pair[0]:
                return False
            self._pair = pair
        log.info(
            "TLS certificate renewed: new connections to the broker use it",
            fingerprint=certs.certificate_fingerprint(pair[0]),
            expires_at=pair[3].isoformat(),
        )
        return True

    def _load(self) -> tuple[bytes, bytes, bytes, datetime]:
        config = self._config
        certificate = _read(config.certificate, "certificate")
        ca_certificate = _read(config.ca_certificate, "ca_certificate")
        private_key = crypto.read_secret_file(
            config.private_key, what="TLS private key", field="private_key"
        )
        now = self._clock()
        if certs.verify_certificate(certificate, ca_certificate, now=now) != self._party:
            raise ConfigurationError(
                f"the TLS certificate is not {self._party}'s", field="certificate"
            )
        parsed = certs.check_key_pair(
            certificate, private_key, ca_certificate, now=now, field="private_key"
        )
        return certificate, private_key, ca_certificate, parsed.not_valid_after_utc

    def channel(self, address: str) -> grpc.Channel:
        """A new mTLS channel to ``address`` with the certificate in the files now."""
        with self._lock:
            try:
                pair = self._load()
            except SamenloopError as error:
                pair = self._pair
                log.error(
                    "the replaced TLS certificate is refused; the one before is still used",
                    setting=error.field or "certificate",
                    reason=error.message,
                )
            renewed = pair[0] != self._pair[0]
            self._pair = pair
        # Which certificate a connection uses, for the operator who renewed it.
        log.info(
            "TLS certificate renewed: used from this connection"
            if renewed
            else "broker channel made",
            address=address,
            fingerprint=certs.certificate_fingerprint(pair[0]),
            expires_at=pair[3].isoformat(),
        )
        certificate, private_key, ca_certificate, _ = pair
        return broker_channel(
            address,
            ca_certificate=ca_certificate,
            private_key=private_key,
            certificate=certificate,
        )

    def check_expiry(self) -> None:
        """At each sweep: warn when the certificate in use expires soon."""
        with self._lock:
            not_valid_after = self._pair[3]
        days_left = certs.expires_soon(not_valid_after, now=self._clock())
        if days_left is not None:
            log.warning(
                "the TLS certificate expires soon; renew it",
                setting="certificate",
                expires_at=not_valid_after.isoformat(),
                days_left=days_left,
            )


def check_files(config: NodeConfig) -> str:
    """Refuse to go on, as ssh does, when another account may use the node's data or
    secrets, or choose whom it trusts: the data directories (made 0700 if missing) and
    every secret file must be this account's and closed to group and others, the covenant
    and CA files closed to their writing. Returns the API token, made if absent."""
    assert config.api_token is not None  # NodeConfig sets the default
    token = ensure_token(config.api_token)
    check_private(private_directories(config), secret_files(config), trusted_files(config))
    return token


def load_config(config_path: Path) -> NodeConfig:
    """``node.toml``, read as the daemon's own orders: refused if another account may
    write it (or the directory that holds it), as ssh refuses such a configuration."""
    config = load_node_config(config_path)
    check_trusted([("--node", Path(config_path))])
    return config


def build_node(
    config: NodeConfig, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> RunningNode:
    """Check the configuration, lock the data directory, open the repositories, start the
    local API and the uplink."""
    api_token = check_files(config)
    # Before anything of the data directory is touched: a second node on it refuses here,
    # not after it took over the first one's API socket.
    lock = DataDirectoryLock.acquire(config.data_dir, "node")
    try:
        return _start(config, api_token, lock, clock)
    except BaseException:
        lock.release()
        raise


def _start(
    config: NodeConfig, api_token: str, lock: DataDirectoryLock, clock: Callable[[], datetime]
) -> RunningNode:
    held = HeldCovenant(TrustState(load_signed_covenant(config.covenant)))
    covenant = held()
    party = config.party
    covenant.party(party)  # NotAllowed if the covenant does not list this party
    keys = PartyKeys.load(config.party_keys)
    if keys.party != party or keys.public() != covenant.public_keys(party):
        raise ConfigurationError(
            f"{config.party_keys} does not hold the keys the covenant lists for {party}",
            field="party_keys",
        )
    tls = ClientCertificate(config, party, clock)  # a bad pair stops the start

    engine = database.make_engine(config.database_url)
    database.check_at_head(engine, MIGRATIONS)
    repositories = Repositories.open(engine, owner=party)
    attribute_keys = AttributeKeyRing(keys)
    replay_covenant(held, repositories.covenants, attribute_keys)
    try:
        check_validity(held(), clock())
    except CovenantRejected as error:
        log.warning("the covenant held is not in force", reason=error.reason, why=error.message)
    covenant = held()
    if not covenant.is_party(party):
        log.error("the covenant held no longer lists this party", version=covenant.version)
    else:
        attribute_keys.current(covenant)  # a box that does not open stops the start

    holder = None
    holder_shares = None
    retire_share = None
    if config.key_share is not None:
        share_base = config.key_share
        stored = keysetup.share_epoch(share_base)
        live = [e.epoch for e in covenant.live_epochs]
        if stored is not None and stored not in live and stored < min(live):
            # Retired while this node was down (a switch it learnt from its store).
            keysetup.retire_share(share_base, stored, covenant.key_epoch.epoch)
            log.info("key epoch retired: its share is deleted", key_epoch=stored)
        # The share of each key epoch this party serves: the current one (which must be
        # there) and a staged one once 'keyholder accept' stored it beside.
        shares = {}
        for plain in covenant.live_epochs:
            if not any(seat.party == party for seat in plain.holders):
                continue
            epoch = threshold.KeyEpoch.of(covenant.id, plain)
            share = keysetup.load_epoch_share(share_base, epoch)
            if share is None and plain is covenant.key_epoch:
                share = keysetup.load_share(share_base, epoch)  # names what is wrong
            if share is not None:
                shares[plain.epoch] = (share, epoch)
        if not shares:  # a holder of no live epoch: the configured share says why
            epoch = threshold.KeyEpoch.from_covenant(covenant)
            shares[epoch.epoch] = (keysetup.load_share(share_base, epoch), epoch)
        today = clock().date()
        used: dict[int, dict[str, int]] = {}
        for p in covenant.parties:
            counts = repositories.tokens.evaluations_by_epoch(p.id, today, covenant.key_epoch.epoch)
            for number, elements in counts.items():
                used.setdefault(number, {})[p.id] = elements
        holder = EpochHolders(
            keys,
            covenant.id,
            held,
            shares,
            used_today=used,
            today=today,
            answered=repositories.tokens.answered_requests(now=clock()),
        )
    # Blinding, proofs and unblinding (and a holder's evaluations) on every core; the
    # worker processes get the holder's shares once, at their start, and again (a new
    # pool) when a staged epoch's share is added or a retired one dropped.
    workers = Workers(
        config.workers or default_workers(), shares=() if holder is None else holder.shares()
    )
    if holder is not None:
        holder.evaluate_partial = workers.evaluate_partial
        holder.on_shares_changed = workers.set_shares

        share_refusals: list[str] = []

        def holder_shares(epoch: threshold.KeyEpoch) -> threshold.Share | None:
            # A staged share that other accounts may read is not taken (nor is the node
            # stopped: it goes on serving the current epoch); said once per message.
            try:
                return keysetup.load_epoch_share(share_base, epoch)
            except ConfigurationError as error:
                if share_refusals[-1:] != [error.message]:
                    log.error("staged key share refused", key_epoch=epoch.epoch, why=error.message)
                    share_refusals.append(error.message)
                return None

        def retire_share(retired: int, current: int) -> None:
            keysetup.retire_share(share_base, retired, current)

    # Every broker replica listed; the uplink moves on to the next when one is unavailable.
    # Every channel made reads the TLS files again: a renewed certificate is used from the
    # next connection.
    channel = BrokerSwitch(config.brokers, tls.channel)
    bell = HitBell()
    metrics = NodeMetrics()
    uplink = Uplink(
        party=party,
        channel=channel,
        covenant=held,
        keys=keys,
        repositories=repositories,
        attribute_keys=attribute_keys,
        holder=holder,
        holder_shares=holder_shares,
        retire_share=retire_share,
        clock=clock,
        on_hit=bell.ring,
        work_dir=config.data_dir,
        metrics=metrics,
        workers=workers,
        min_disclosure_score=config.min_disclosure_score,
    )

    def connection() -> tuple[bool, datetime | None]:
        with uplink.status.lock:
            return uplink.status.connected, uplink.status.last_contact

    metrics.watch(
        repositories,
        connection,
        clock,
        parties=lambda: frozenset(p.id for p in held().parties) if holder is not None else (),
        rotation=lambda: _rotation_epochs(held()),
    )
    service = NodeApiService(
        NodeApiContext(
            party=party,
            repositories=repositories,
            covenant=held,
            attribute_keys=attribute_keys,
            uplink_status=lambda: uplink.status,
            wake_uplink=uplink.wake.set,
            clock=clock,
            bell=bell,
            disclosures=uplink.disclosures,
            cases=uplink.cases,
            pictures=uplink.pictures,
            freshness=uplink.covenant_keeper.check,
        )
    )
    refused = RefusedCalls(repositories.shared.audit_append, clock)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="node-api"),
        # The token first: a call without it is refused before anything of it is read.
        # Metrics outside it, so that they count refused calls with the status they got.
        interceptors=[
            RpcMetricsInterceptor(metrics.rpc),
            TokenInterceptor(api_token, refused),
            ErrorInterceptor(),
        ],
        # A port another server of this account holds is an error, not silently shared
        # (gRPC sets SO_REUSEPORT by default: the kernel would spread the calls over both).
        options=[("grpc.so_reuseport", 0)],
    )
    node_pb2_grpc.add_NodeApiServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    socket_path: Path | None = None
    if config.api_listen is not None:
        address, setting = config.api_listen, "api_listen"
    else:
        assert config.api_socket is not None
        socket_path = config.api_socket  # its directory is 0700: check_files saw to that
        socket_path.unlink(missing_ok=True)  # a stale socket of an earlier run
        address, setting = f"unix:{socket_path}", "api_socket"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # newer gRPC raises where older returned 0
        bound = 0
    if bound == 0:
        repositories.engine.dispose()
        raise ConfigurationError(f"cannot listen on {address} (in use?)", field=setting)
    endpoint = None
    if config.metrics_listen is not None:
        try:
            endpoint = serve_registry(metrics.registry, config.metrics_listen)
        except ConfigurationError:
            repositories.engine.dispose()
            raise
        log.info("metrics served", address=config.metrics_listen, port=endpoint.port)
    server.start()
    if socket_path is not None:
        os.chmod(socket_path, 0o600)  # only this account's applications may talk to the node
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    uplink.covenant_keeper.load()  # the stored covenant timestamp, verified again
    uplink.start()
    log.info(
        "node running", party=party, api=address, broker=config.broker, holder=holder is not None
    )
    return RunningNode(
        server, address, uplink, repositories, socket_path, refused, lock, metrics=endpoint, tls=tls
    )


def _rotation_epochs(covenant: Covenant) -> tuple[int, int] | None:
    """(current, staged) key epochs while the covenant stages a rotation, else None."""
    staged = covenant.next_key_epoch
    return None if staged is None else (covenant.key_epoch.epoch, staged.epoch)


def replay_covenant(
    held: HeldCovenant, store: CovenantStore, attribute_keys: AttributeKeyRing | None = None
) -> None:
    """Re-apply the covenant versions the node accepted since its root, oldest first.

    Each is checked again against the one before (signatures, version order);
    a stored version that no longer verifies stops the replay there, loudly:
    the node then holds the last good version. ``attribute_keys`` learns the
    attribute key of the root and of each version replayed.
    """
    if attribute_keys is not None:
        learn_attribute_key(attribute_keys, held())
    for data in store.covenant_versions():
        message = common_pb2.SignedCovenant.FromString(data)
        try:
            update = held.replay(SignedCovenant.from_proto(message))
        except CovenantRejected as error:
            log.error("a stored covenant version does not verify", reason=error.reason)
            return
        if update.changed:
            log.info("covenant version replayed", version=update.covenant.version)
            if attribute_keys is not None:
                learn_attribute_key(attribute_keys, update.covenant)


def serve(config_path: Path) -> int:
    """Run the node until SIGTERM or SIGINT."""
    config = load_config(config_path)
    logs.configure(config.log_level, config.log_format)
    running = build_node(config)
    settle_heap()
    # Checkpoints of the audit log are signed with the party's key, each sweep and at the end.
    keys = PartyKeys.load(config.party_keys)

    def sweep() -> None:
        if running.repositories.signals.expire_signals(datetime.now(UTC)):
            running.uplink.wake.set()
        running.refused.flush()
        running.uplink.holder_events.flush()
        running.repositories.shared.audit_checkpoint(keys, now=datetime.now(UTC))
        if running.tls is not None:
            if running.tls.renewed():
                running.uplink.brokers.renew()
            running.tls.check_expiry()

    run_until_signalled(SWEEP_SECONDS, sweep)
    log.info("node stopping")
    running.stop()
    # After the servers stopped, so the last checkpoint covers every entry; then close again.
    running.repositories.shared.audit_checkpoint(keys, now=datetime.now(UTC))
    running.repositories.engine.dispose()
    return 0


def migrate(config_path: Path) -> int:
    """Bring the node's database to this version's schema (after the checks of the files
    that ``serve`` runs too)."""
    config = load_config(config_path)
    logs.configure(config.log_level, config.log_format)  # Alembic's lines too
    check_files(config)
    lock = DataDirectoryLock.acquire(config.data_dir, "node")  # not under a running node
    engine = database.make_engine(config.database_url)
    try:
        database.upgrade(engine, MIGRATIONS)
        print(f"node database at {', '.join(database.current(engine))}")
    finally:
        engine.dispose()
        lock.release()
    return 0
