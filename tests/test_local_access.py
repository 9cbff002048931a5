"""A node's host: its data at rest and its local API are closed to every other account.

Finding 4 of issue 12: the daemons keep what they write to their own account
(umask 0o077, data directories 0700) and refuse to start, as ssh refuses an open
key, when a data directory or secret file is open to others or not theirs.
Finding 5: every call to the local API carries the node's API token, checked by
one interceptor; a call without it is refused and audited, and does nothing.

The node here is the real one (``build_node``, in this process, no broker: its
uplink keeps retrying), on a Unix socket and on a loopback port. The attacks by
another local account, through the daemons as processes, are in
``tests/attacks/test_local_user.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from samenloop.broker import server as broker_server
from samenloop.node.client import NodeClient
from samenloop.node.daemon import api_token
from samenloop.node.daemon import process as daemon
from samenloop.node.daemon.api_token import RefusedCalls, Tally, bearer, ensure_token, read_token
from samenloop.node.provision import PartySpec, Provisioned, free_port, provision
from samenloop.policies import cli, crypto, database, process
from samenloop.policies import config as config_module
from samenloop.policies.audit import AuditKind
from samenloop.policies.config import NodeConfig, load_broker_config, load_node_config
from samenloop.policies.covenant import Role
from samenloop.policies.errors import ConfigurationError, InvalidSignature
from samenloop.policies.rpc import error_from_rpc
from samenloop.v1 import node_pb2, node_pb2_grpc

ME = "gemeente"
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to hand a file to another account (chown)"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def provisioned() -> Iterator[Provisioned]:
    root = Path(tempfile.mkdtemp(prefix="sl-loc-", dir="/tmp"))  # short: a socket lives here
    try:
        yield provision(
            root,
            "riec-local",
            [
                PartySpec(ME, "Gemeente", Role.GEMEENTE),
                PartySpec("politie", "Politie", Role.POLITIE),
            ],
            [ME, "politie"],
            2,
            now=datetime.now(UTC) - timedelta(minutes=5),
        )
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def migrated(provisioned: Provisioned) -> NodeConfig:
    config = load_node_config(provisioned.node_configs[ME])
    engine = database.make_engine(config.database_url)
    database.upgrade(engine, daemon.MIGRATIONS)
    engine.dispose()
    return config


@pytest.fixture(params=["socket", "tcp"])
def node(request: pytest.FixtureRequest, migrated: NodeConfig) -> Iterator[daemon.RunningNode]:
    config = migrated
    if request.param == "tcp":
        config = dataclasses.replace(
            migrated, api_socket=None, api_listen=f"127.0.0.1:{free_port()}"
        )
    running = daemon.build_node(config)
    try:
        yield running
    finally:
        running.stop(None)


def _raw(running: daemon.RunningNode) -> tuple[grpc.Channel, node_pb2_grpc.NodeApiStub]:
    channel = grpc.insecure_channel(running.api_address)
    return channel, node_pb2_grpc.NodeApiStub(channel)


def _refused(call: object, *args: object, **kwargs: object) -> InvalidSignature:
    with pytest.raises(grpc.RpcError) as failure:
        call(*args, timeout=10, **kwargs)  # type: ignore[operator]
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    error = error_from_rpc(failure.value)
    assert isinstance(error, InvalidSignature)
    assert error.field == "authorization"
    return error


# --- finding 5: the token ---------------------------------------------------------------------


def test_every_call_without_the_token_is_refused_does_nothing_and_is_audited(
    node: daemon.RunningNode, migrated: NodeConfig
) -> None:
    assert migrated.api_token is not None
    token = read_token(migrated.api_token)
    before = node.repositories.shared.audit_entries(kind=AuditKind.LOCAL_API_REFUSED)
    signals_before = node.repositories.signals.status_counts().signals
    wrong = bearer(api_token.new_token())
    channel, stub = _raw(node)
    calls = [
        (stub.ListHits, node_pb2.ListHitsRequest()),
        (stub.GetDisclosure, node_pb2.GetDisclosureRequest(request_id=bytes(16))),
        (
            stub.ApproveDisclosure,
            node_pb2.ApproveDisclosureRequest(request_id=bytes(16), officer="x"),
        ),
        (
            stub.AddSignal,
            node_pb2.AddSignalRequest(
                signal=node_pb2.Signal(reference="R-1", category="vastgoedmisbruik")
            ),
        ),
        (stub.GetStatus, node_pb2.GetStatusRequest()),
    ]
    with channel, structlog.testing.capture_logs() as logged:
        for method, request in calls:
            assert _refused(method, request).reason == "api_token.missing"
            assert _refused(method, request, metadata=wrong).reason == "api_token.wrong"
            # The scheme alone, the token without it, the token twice: all wrong.
            for metadata in (
                (("authorization", "Bearer "),),
                (("authorization", token),),
                (*bearer(token), *bearer(token)),
            ):
                assert _refused(method, request, metadata=metadata).reason == "api_token.wrong"
        stream = stub.WatchHits(node_pb2.WatchHitsRequest(), timeout=10)
        _refused(lambda **_: next(iter(stream)))
        # Not even read: garbage without the token is UNAUTHENTICATED, not INVALID_ARGUMENT.
        garbage = channel.unary_unary("/samenloop.v1.NodeApi/AddSignal")
        _refused(garbage, b"\xff\x00garbage")
        _refused(channel.unary_unary("/samenloop.v1.NodeApi/NoSuchMethod"), b"")
        # The health service stays open: it says only that the node serves.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    refused_calls = len(calls) * 5 + 3
    assert node.repositories.signals.status_counts().signals == signals_before  # nothing stored
    node.refused.flush()
    entries = node.repositories.shared.audit_entries(kind=AuditKind.LOCAL_API_REFUSED)[
        len(before) :
    ]
    assert sum(int(e.details["refused_calls"]) for e in entries) == refused_calls
    assert sum(int(e.details["missing_token"]) for e in entries) == len(calls) + 3
    assert len(entries) <= 2  # the first at once, the rest summed
    assert entries[-1].details["last_method"] == "unknown"  # NoSuchMethod, not echoed
    wrong_token = wrong[0][1].split()[1]
    for text in [*(str(e.details) for e in entries), *(str(event) for event in logged)]:
        assert token not in text
        assert wrong_token not in text
    # The node keeps serving its own applications.
    with NodeClient(node.api_address, token=token) as client:
        assert client.status().party == ME
        assert client.hits() == []


def test_the_client_reads_the_token_where_node_toml_says(
    node: daemon.RunningNode, provisioned: Provisioned, migrated: NodeConfig
) -> None:
    if node.socket_path is not None:
        with NodeClient.from_config(provisioned.node_configs[ME]) as client:
            assert client.status().party == ME
    with NodeClient(node.api_address) as anonymous, pytest.raises(InvalidSignature) as refused:
        anonymous.hits()
    assert refused.value.field == "authorization"
    assert migrated.api_token is not None
    with NodeClient(node.api_address, token_file=migrated.api_token) as client:
        assert client.status().party == ME


def test_the_commands_send_the_token(
    node: daemon.RunningNode, migrated: NodeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    address = node.api_address.removeprefix("unix:")
    if node.socket_path is not None:  # the token beside the socket, as node.toml's default
        # Not connected (no broker runs): exit 3, and the address it dials, the configured one.
        capsys.readouterr()
        assert cli.main(["node", "status", "--json", "--socket", address]) == 3
        out, err = capsys.readouterr()
        shown = json.loads(out[out.index("{\n") :])  # after the in-process daemon's log lines
        assert shown["broker_address"] == migrated.broker
        assert f"not connected to the broker (connecting, dialling {migrated.broker})" in err
    else:  # a port has no beside: without --token-file the node refuses, naming the key
        assert cli.main(["node", "status", "--json", "--socket", address]) == 4
        assert "authorization" in capsys.readouterr().err
    assert migrated.api_token is not None
    token_file = str(migrated.api_token)
    assert cli.main(["node", "status", "--socket", address, "--token-file", token_file]) == 3
    assert cli.main(["node", "status", "--node", "x.toml", "--token-file", token_file]) == 2


def test_a_port_the_node_holds_is_not_shared_with_a_second_server(
    migrated: NodeConfig, provisioned: Provisioned
) -> None:
    other = load_node_config(provisioned.node_configs["politie"])
    engine = database.make_engine(other.database_url)
    database.upgrade(engine, daemon.MIGRATIONS)
    engine.dispose()
    address = f"127.0.0.1:{free_port()}"
    first = daemon.build_node(dataclasses.replace(migrated, api_socket=None, api_listen=address))
    try:
        second = dataclasses.replace(other, api_socket=None, api_listen=address)
        with pytest.raises(ConfigurationError) as caught:  # gRPC would share it (SO_REUSEPORT)
            daemon.build_node(second)
        assert caught.value.field == "api_listen"
    finally:
        first.stop(None)


def test_a_second_node_on_one_data_directory_is_refused_before_it_touches_the_socket(
    migrated: NodeConfig, provisioned: Provisioned, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: the second start (and a migration under a running node) stops at the
    data directory's lock; the first keeps its socket and serves on."""
    first = daemon.build_node(migrated)
    try:
        assert migrated.api_socket is not None
        assert migrated.api_socket.exists()
        with pytest.raises(ConfigurationError) as caught:
            daemon.build_node(migrated)
        assert caught.value.field == "data_dir"
        assert migrated.api_socket.exists()
        config = str(provisioned.node_configs[ME])
        assert cli.main(["node", "migrate", "--config", config]) != 0
        assert "already runs on the data directory" in capsys.readouterr().err
        # The first answers on its socket (not connected: no broker runs here).
        assert cli.main(["node", "status", "--node", config]) == 3
    finally:
        first.stop(None)
    daemon.build_node(migrated).stop(None)  # free again once the first stopped


def test_the_token_file_is_made_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "api-token"
    token = ensure_token(path)
    assert len(token) == 43
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert ensure_token(path) == token  # kept, not replaced
    assert ensure_token(tmp_path / "other") != token
    path.chmod(0o640)
    with pytest.raises(ConfigurationError) as caught:
        read_token(path)
    assert (caught.value.field, f"run chmod 600 {path}") == (
        "api_token",
        caught.value.message.split("; ")[-1],
    )
    path.chmod(0o600)
    crypto.write_secret_file(path, b"short\n")
    with pytest.raises(ConfigurationError) as caught:
        read_token(path)
    assert caught.value.field == "api_token"
    assert "does not hold a token" in caught.value.message
    with pytest.raises(ConfigurationError):
        api_token.TokenInterceptor("")  # an empty token would let "Bearer " through


def test_refused_calls_are_audited_at_once_then_summed_at_most_each_minute() -> None:
    written: list[dict[str, object]] = []
    now = [datetime(2026, 12, 1, 12, tzinfo=UTC)]

    def append(**entry: object) -> None:
        assert entry["kind"] is AuditKind.LOCAL_API_REFUSED
        assert entry["now"] == now[0]
        written.append(dict(entry["details"]))  # type: ignore[call-overload]

    refused = RefusedCalls(append, lambda: now[0])
    refused.flush()
    assert written == []  # nothing to write
    refused.refused("/samenloop.v1.NodeApi/ListHits", "missing_token")
    assert written == [
        {"refused_calls": 1, "missing_token": 1, "wrong_token": 0, "last_method": "ListHits"}
    ]
    for _ in range(500):
        now[0] += timedelta(milliseconds=100)
        refused.refused("/samenloop.v1.NodeApi/GetDisclosure", "wrong_token")
    # 50 s later: still one entry; the flood waits for the minute.
    assert len(written) == 1
    now[0] += timedelta(seconds=10)
    refused.refused("/samenloop.v1.NodeApi/Approve\nDisclosure", "wrong_token")
    assert written[1] == {
        "refused_calls": 501,
        "missing_token": 0,
        "wrong_token": 501,
        "last_method": "unknown",
    }
    refused.refused("/samenloop.v1.NodeApi/ListHits", "missing_token")
    refused.flush()  # the sweep, or the node stopping
    assert written[2]["refused_calls"] == 1
    assert len(written) == 3


def test_a_refusal_that_cannot_be_audited_is_kept_for_the_next_try() -> None:
    failing = [True]
    written: list[object] = []

    def append(**entry: object) -> None:
        if failing[0]:
            raise OSError("disk full")
        written.append(entry["details"])

    refused = RefusedCalls(append, lambda: datetime(2026, 12, 1, tzinfo=UTC))
    refused.refused("/samenloop.v1.NodeApi/ListHits", "missing_token")
    failing[0] = False
    refused.flush()
    assert written == [
        {"refused_calls": 1, "missing_token": 1, "wrong_token": 0, "last_method": "ListHits"}
    ]


def test_a_tally_writes_each_group_at_once_then_summed_at_most_each_interval() -> None:
    written: list[tuple[dict[tuple[str, str], int], datetime]] = []
    now = [datetime(2026, 12, 1, 12, tzinfo=UTC)]
    tally: Tally[tuple[str, str]] = Tally(
        lambda counts, at: written.append((dict(counts), at)), lambda: now[0]
    )
    tally.flush()
    assert written == []  # nothing to write
    tally.add(("riec", "STALE"))
    tally.add(("riec", "STALE"), 4)
    tally.add(("Unverified", "BAD_SIGNATURE"))
    # The first of each group at once; the second of ("riec", "STALE") waits.
    assert written == [
        ({("riec", "STALE"): 1}, now[0]),
        ({("Unverified", "BAD_SIGNATURE"): 1}, now[0]),
    ]
    assert tally.pending() == {("riec", "STALE"): 4}
    for _ in range(300):  # a flood within the minute: counted, not written
        now[0] += timedelta(milliseconds=150)
        tally.add(("Unverified", "BAD_SIGNATURE"))
    tally.flush(force=False)
    assert len(written) == 2
    now[0] += timedelta(seconds=15)  # a minute after the first writes
    tally.add(("riec", "STALE"))
    # Every group that is due, in one write (one transaction).
    assert written[2] == ({("riec", "STALE"): 5, ("Unverified", "BAD_SIGNATURE"): 300}, now[0])
    tally.flush(force=False)
    assert len(written) == 3
    tally.add(("riec", "QUOTA_EXCEEDED"), 2)  # another group: at once
    tally.add(("riec", "STALE"))
    tally.flush()  # the node stopping: everything
    assert written[3:] == [
        ({("riec", "QUOTA_EXCEEDED"): 2}, now[0]),
        ({("riec", "STALE"): 1}, now[0]),
    ]
    assert tally.pending() == {}
    total = sum(count for counts, _ in written for count in counts.values())
    assert total == 1 + 4 + 1 + 300 + 2 + 1 + 1


def test_a_tally_groups_keys_and_keeps_what_it_could_not_write() -> None:
    failing = [True]
    written: list[dict[str, int]] = []

    def write(counts: Mapping[str, int], at: datetime) -> None:
        if failing[0]:
            raise OSError("disk full")
        written.append(dict(counts))

    tally: Tally[str] = Tally(
        write, lambda: datetime(2026, 12, 1, tzinfo=UTC), group=lambda key: key.split(":")[0]
    )
    tally.add("a:1")
    assert tally.pending() == {"a:1": 1}  # the write failed: kept
    failing[0] = False
    tally.add("a:2")  # the same group, written a moment ago: waits
    tally.add("b:1")  # another group: written at once
    assert written == [{"b:1": 1}]
    tally.flush()
    assert written[1] == {"a:1": 1, "a:2": 1}  # one write for both keys of the group


# --- finding 4: files and directories -------------------------------------------------------------


def test_open_files_and_directories_are_refused_naming_the_fix(tmp_path: Path) -> None:
    secret = tmp_path / "k.json"
    crypto.write_secret_file(secret, b"{}")
    crypto.check_owner_only(secret)
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    crypto.check_owner_only(directory)
    for path, mode, fix in ((secret, 0o644, "chmod 600"), (directory, 0o755, "chmod 700")):
        for open_mode in (mode, 0o604, 0o620, 0o610 if path is directory else 0o602):
            path.chmod(open_mode)
            with pytest.raises(ConfigurationError) as caught:
                crypto.check_owner_only(path, what="thing", field="setting")
            assert caught.value.field == "setting"
            assert caught.value.message == (
                f"thing {path} is accessible by others (mode {open_mode:o}); run {fix} {path}"
            )
    with pytest.raises(ConfigurationError) as caught:
        crypto.check_owner_only(tmp_path / "absent", field="x")
    assert "does not exist" in caught.value.message


@ROOT_ONLY
def test_a_file_of_another_account_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "k.json"
    crypto.write_secret_file(secret, b"{}")
    os.chown(secret, 65534, 65534)
    with pytest.raises(ConfigurationError) as caught:
        crypto.read_secret_file(secret)
    assert "belongs to another account (uid 65534)" in caught.value.message
    assert f"chown 0 {secret}" in caught.value.message


def test_a_trusted_file_may_be_read_by_others_but_not_written(tmp_path: Path) -> None:
    """The write-only form of the one check: configuration, covenant and CA files."""
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    config = folder / "node.toml"
    config.write_bytes(b"party = 'x'\n")
    for readable in (0o644, 0o604, 0o444, 0o600):
        config.chmod(readable)
        process.check_trusted([("--config", config)])
    for open_mode in (0o664, 0o646, 0o666, 0o622):
        config.chmod(open_mode)
        with pytest.raises(ConfigurationError) as caught:
            process.check_trusted([("--config", config)])
        assert (caught.value.field, caught.value.message) == (
            "--config",
            f"configuration file {config} may be written by others (mode {open_mode:o}); "
            f"run chmod go-w {config}",
        )
    config.chmod(0o644)
    # Whoever may write the directory may replace the file in it.
    folder.chmod(0o775)
    with pytest.raises(ConfigurationError) as caught:
        process.check_trusted([("covenant", config)])
    assert (caught.value.field, caught.value.message) == (
        "covenant",
        f"directory of covenant file {folder} may be written by others (mode 775); "
        f"run chmod go-w {folder}",
    )
    folder.chmod(0o1777)  # sticky, as /tmp: nobody else can replace a file of ours
    process.check_trusted([("covenant", config)])
    with pytest.raises(ConfigurationError) as caught:
        process.check_trusted([("ca_certificate", folder / "absent.pem")])
    assert caught.value.field == "ca_certificate"
    assert "does not exist" in caught.value.message


def _stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, uid, 0, 0, 0, 0))


def test_a_trusted_file_of_root_is_taken_one_of_another_account_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As ssh takes a configuration of its user or of root: root can do anything on the
    host anyway, and an /etc file of root's is the usual install. A secret stays the
    daemon's own account's alone."""
    monkeypatch.setattr(crypto.os, "geteuid", lambda: 1000)
    named = Path("/etc/samenloop/node.toml")
    file = stat.S_IFREG | 0o644
    crypto.check_owner_only(_stat(file, 1000), named, others_may_read=True)
    crypto.check_owner_only(_stat(file, 0), named, others_may_read=True)
    with pytest.raises(ConfigurationError) as caught:
        crypto.check_owner_only(_stat(file, 0), named)  # a secret of root's: not ours
    assert "belongs to another account (uid 0)" in caught.value.message
    with pytest.raises(ConfigurationError) as caught:
        crypto.check_owner_only(_stat(file, 65534), named, what="thing", others_may_read=True)
    assert caught.value.message == (
        f"thing {named} belongs to another account (uid 65534); run as that "
        f"account, or give it to this one: chown 1000 {named}"
    )
    with pytest.raises(ConfigurationError) as caught:  # root's, but open to writing
        crypto.check_owner_only(_stat(stat.S_IFREG | 0o664, 0), named, others_may_read=True)
    assert "may be written by others (mode 664)" in caught.value.message
    sticky = stat.S_IFDIR | stat.S_ISVTX | 0o777
    crypto.check_owner_only(_stat(sticky, 0), Path("/tmp"), others_may_read=True)
    with pytest.raises(ConfigurationError):  # a sticky bit on a file means nothing
        crypto.check_owner_only(
            _stat(stat.S_IFREG | stat.S_ISVTX | 0o666, 1000), named, others_may_read=True
        )


def test_data_directories_are_made_owner_only_and_refused_open(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        process.check_private([("data_dir", tmp_path / "a" / "data")], [])
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a" / "data") == 0o700
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)  # as systemd makes a RuntimeDirectory by default
    with pytest.raises(ConfigurationError) as caught:
        process.check_private([("data_dir", tmp_path / "a" / "data"), ("api_socket", run)], [])
    assert (caught.value.field, caught.value.message) == (
        "api_socket",
        f"directory of api_socket {run} is accessible by others (mode 755); run chmod 700 {run}",
    )


def test_provisioning_writes_a_tree_that_passes_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        done = provision(
            tmp_path / "cov",
            "riec-umask",
            [
                PartySpec(ME, "Gemeente", Role.GEMEENTE),
                PartySpec("politie", "Politie", Role.POLITIE),
            ],
            [ME, "politie"],
            2,
            now=datetime.now(UTC),
        )
    finally:
        os.umask(previous)
    broker_server.check_files(load_broker_config(done.broker_config))
    for path in done.node_configs.values():
        config = load_node_config(path)
        assert daemon.check_files(config) == read_token(config.data_dir / "api-token")
    secrets = {"tls.key", "party-keys.json", "key-share.json"}
    secrets |= {"signing-keys.json", "ca.key", "api-token", "beheer-riec.json"}
    secrets |= {"beheer-partners.json"}
    found = set()
    for path in (done.root / name for name in ("ca", "admin", "broker", ME, "politie")):
        for item in [path, *path.rglob("*")]:
            if item.is_dir():
                assert _mode(item) == 0o700, item
            elif item.name in secrets:
                assert _mode(item) == 0o600, item
                found.add(item.name)
    assert found == secrets


def _cli(*argv: str, umask: str = "022") -> subprocess.CompletedProcess[str]:
    """``samenloop`` as its own process, started under an open umask."""
    command = [sys.executable, "-m", "samenloop.policies.cli", *argv]
    return subprocess.run(
        ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_commands_write_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    done = _cli(
        "node", "keygen", "--party", ME, "--out", str(tmp_path / "keys" / "k.json"),
        "--public-out", str(tmp_path / "k.public.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _mode(tmp_path / "keys") == 0o700
    assert _mode(tmp_path / "keys" / "k.json") == 0o600
    assert _mode(tmp_path / "k.public.json") == 0o600  # write_bytes: the umask decided


@pytest.mark.parametrize("kind", ["node", "broker"])
def test_migrate_refuses_an_open_data_directory_and_makes_the_database_owner_only(
    tmp_path: Path, kind: str
) -> None:
    root = Path(tempfile.mkdtemp(prefix="sl-mig-", dir="/tmp"))
    try:
        done = provision(
            root,
            "riec-migrate",
            [
                PartySpec(ME, "Gemeente", Role.GEMEENTE),
                PartySpec("politie", "Politie", Role.POLITIE),
            ],
            [ME, "politie"],
            2,
            now=datetime.now(UTC),
        )
        config_path = done.broker_config if kind == "broker" else done.node_configs[ME]
        option = "--config" if kind == "broker" else "--node"
        data = config_path.parent / "data"
        data.chmod(0o755)  # as installs before issue 12 made it
        refused = _cli(kind, "migrate", option, str(config_path))
        assert refused.returncode == 2
        assert refused.stderr == (
            f"samenloop: error: data_dir: data directory {data} is accessible by others "
            f"(mode 755); run chmod 700 {data}\n"
        )
        assert list(data.iterdir()) == ([] if kind == "broker" else [data / "api-token"])
        data.chmod(0o700)
        secret = config_path.parent / "tls.key"
        secret.chmod(0o640)
        refused = _cli(kind, "migrate", option, str(config_path))
        assert refused.returncode == 2
        assert f"private_key: secret file {secret} is accessible by others" in refused.stderr
        secret.chmod(0o600)
        migrated = _cli(kind, "migrate", option, str(config_path))
        assert migrated.returncode == 0, migrated.stderr
        assert _mode(data / f"{kind}.db") == 0o600
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("kind", ["node", "broker"])
def test_serve_and_migrate_refuse_orders_that_other_accounts_may_write(kind: str) -> None:
    """node.toml / broker.toml, the covenant and (a node's) CA certificate: readable by
    others, never writable by them (attack 7 of the second review)."""
    root = Path(tempfile.mkdtemp(prefix="sl-trust-", dir="/tmp"))
    try:
        done = provision(
            root,
            "riec-trusted",
            [
                PartySpec(ME, "Gemeente", Role.GEMEENTE),
                PartySpec("politie", "Politie", Role.POLITIE),
            ],
            [ME, "politie"],
            2,
            now=datetime.now(UTC),
        )
        config_path = done.broker_config if kind == "broker" else done.node_configs[ME]
        option = "--config" if kind == "broker" else "--node"
        trusted = [(option, config_path, "configuration file")]
        trusted.append(("covenant", done.root / "covenant.json", "covenant file"))
        if kind == "node":
            ca = load_node_config(config_path).ca_certificate
            trusted.append(("ca_certificate", ca, "ca_certificate file"))
        for setting, path, what in trusted:
            assert not _mode(path) & 0o022, path
            kept = _mode(path)
            path.chmod(0o666)
            try:
                for command in ("migrate", "serve"):
                    refused = _cli(kind, command, option, str(config_path))
                    assert refused.returncode == 2, (command, refused.stderr)
                    assert refused.stderr == (
                        f"samenloop: error: {setting}: {what} {path} may be written by "
                        f"others (mode 666); run chmod go-w {path}\n"
                    )
            finally:
                path.chmod(kept)
        # Readable by every account is fine: they are not secret.
        for _, path, _ in trusted:
            path.chmod(0o644)
        migrated = _cli(kind, "migrate", option, str(config_path))
        assert migrated.returncode == 0, migrated.stderr
    finally:
        shutil.rmtree(root)


def test_a_postgresql_database_names_no_private_directory() -> None:
    """Nothing to check for a PostgreSQL URL; a SQLite one is a private directory."""
    base = Path("/srv/samenloop")
    broker = config_module.broker_config_from_toml(
        b'data_dir = "data"\ncovenant = "c.json"\ncertificate = "t.crt"\n'
        b'private_key = "t.key"\nsigning_keys = "s.json"\n'
        b'database_url = "postgresql+psycopg://broker@db:5432/samenloop"\n',
        source="broker.toml",
        base_dir=base,
    )
    assert config_module.private_directories(broker) == [("data_dir", base / "data")]
    assert config_module.trusted_files(broker) == [("covenant", base / "c.json")]


def test_the_node_refuses_to_start_on_open_files(migrated: NodeConfig) -> None:
    assert migrated.api_token is not None
    for setting, path, mode in (
        ("data_dir", migrated.data_dir, 0o750),
        ("party_keys", migrated.party_keys, 0o644),
        ("private_key", migrated.private_key, 0o640),
        ("api_token", migrated.api_token, 0o660),
    ):
        kept = _mode(path)
        path.chmod(mode)
        try:
            with pytest.raises(ConfigurationError) as caught:
                daemon.build_node(migrated)
        finally:
            path.chmod(kept)
        assert caught.value.field == setting
        assert f"run chmod {'700' if path.is_dir() else '600'} {path}" in caught.value.message
