"""The systemd units in deploy/systemd: valid, hardened, matching the CLI, and the daemons run
in their sandbox.

``systemd-analyze verify`` checks each unit as shipped, with only the ``samenloop`` path
replaced by this environment's (verify needs every ``ExecStart`` binary to exist): it must
report nothing. The hardening directives are read back from the files; each ``ExecStart``
is parsed by the real CLI's argument parser, and deploy/config's example ``node.toml`` and
``broker.toml`` put the data directory and the socket where the units' ``StateDirectory``
and ``RuntimeDirectory`` are. Last, a broker and two nodes run under the units' own
``SystemCallFilter``, ``RestrictAddressFamilies``, ``NoNewPrivileges`` and
``MemoryDenyWriteExecute`` (imposed by tests/sandbox.py, as systemd would) up to a hit, the
broker on SQLite and on PostgreSQL; ``node backup`` and ``covenant timestamp`` run under their
units' own.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from samenloop.node.client import NodeClient
from samenloop.node.provision import PartySpec, provision
from samenloop.policies import cli, config
from samenloop.policies.covenant import Role
from samenloop.policies.errors import Status
from samenloop.policies.policy import Level, VisibilityRule, example_policy

import daemons

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
CONFIGS = ROOT / "deploy" / "config"
SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")
SHIPPED_BINARY = "/opt/samenloop/bin/samenloop"
SANDBOX = Path(__file__).resolve().parent / "sandbox.py"
SERVICES = (
    "samenloop-node.service",
    "samenloop-broker.service",
    "samenloop-node-backup.service",
    "samenloop-covenant-timestamp.service",
)
TIMERS = ("samenloop-node-backup.timer", "samenloop-covenant-timestamp.timer")
#: Every service has these, exactly.
HARDENING = {
    "User": "samenloop",
    "Group": "samenloop",
    "UMask": "0077",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "ConfigurationDirectory": "samenloop",
}
SPECS = (
    PartySpec("gemeente", "Gemeente Middelburg", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
)

#: Hits shown to every role (the example policy hides the police's from the municipality).
SEE_ALL = replace(
    example_policy(),
    visibility=tuple(VisibilityRule(role, Level.CATEGORIES) for role in Role),
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A unit file's sections and settings (a setting may repeat: every value, in order)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str) -> Unit:
    return parse_unit((UNITS / name).read_text())


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values is not None, f"{key}= missing"
    assert len(values) == 1, f"{key}= set {len(values)} times"
    return values[0]


def samenloop_binary() -> Path:
    """This environment's ``samenloop`` (the virtualenv's, beside the interpreter)."""
    beside = Path(sys.executable).parent / "samenloop"
    found = beside if beside.exists() else shutil.which("samenloop")
    if found is None:
        pytest.fail("no samenloop executable in this environment: pip install -e . first")
    return Path(found)


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The units with this environment's ``samenloop`` for ``/opt/samenloop/bin/samenloop``."""
    binary = str(samenloop_binary())
    for path in UNITS.iterdir():
        text = path.read_text()
        (tmp_path / path.name).write_text(text.replace(SHIPPED_BINARY, binary))
    return tmp_path


def test_every_unit_is_shipped() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted((*SERVICES, *TIMERS))


@pytest.mark.skipif(not SYSTEMD_ANALYZE.exists(), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", [*SERVICES, *TIMERS])
def test_systemd_analyze_verify_reports_nothing(rendered: Path, name: str) -> None:
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", name],
        cwd=rendered,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_verify_would_catch_a_typo(rendered: Path) -> None:
    """The check above is not vacuous: verify names an unknown directive and a missing binary."""
    if not SYSTEMD_ANALYZE.exists():
        pytest.skip("systemd-analyze is not installed")
    text = (rendered / "samenloop-node.service").read_text()
    bad = text.replace("ProtectSystem=strict", "ProtectSytem=strict").replace(
        str(samenloop_binary()), "/nonexistent/samenloop"
    )
    (rendered / "samenloop-typo.service").write_text(bad)
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", "samenloop-typo.service"],
        cwd=rendered,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ProtectSytem" in done.stderr
    assert "/nonexistent/samenloop" in done.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_hardened(name: str) -> None:
    service = unit(name)["Service"]
    for key, value in HARDENING.items():
        assert one(service, key) == value, f"{name}: {key}"
    families = set(one(service, "RestrictAddressFamilies").split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6"}, families
    assert one(service, "ConfigurationDirectoryMode") == "0755"  # root's: others may not write
    if "StateDirectory" in service:
        assert one(service, "StateDirectoryMode") == "0700"  # the daemons refuse more
    if "RuntimeDirectory" in service:
        assert one(service, "RuntimeDirectoryMode") == "0700"
    assert "DynamicUser" not in service  # the data persists and is backed up: a static account


@pytest.mark.parametrize("name", ["samenloop-node.service", "samenloop-broker.service"])
def test_the_daemons_restart_on_failure_but_not_on_a_configuration_error(name: str) -> None:
    service = unit(name)["Service"]
    assert one(service, "Type") == "exec"
    assert one(service, "Restart") == "on-failure"
    # Exit code 2 is FAILED_PRECONDITION: configuration, permissions, schema, the lock.
    assert one(service, "RestartPreventExitStatus") == "2"
    assert cli.EXIT_CODES[Status.FAILED_PRECONDITION] == 2
    assert one(unit(name)["Install"], "WantedBy") == "multi-user.target"


def command_of(service: dict[str, list[str]]) -> list[str]:
    """The ``samenloop`` arguments of a service's ``ExecStart`` (inside ``sh -c`` too)."""
    words = shlex.split(one(service, "ExecStart").replace("%%", "%"))
    if words[0] == "/bin/sh":
        assert words[1] == "-c"
        words = shlex.split(words[2])
        assert words[0] == "exec"
        words = words[1:]
    assert words[0] == SHIPPED_BINARY
    return words[1:]


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_is_a_real_command(name: str) -> None:
    words = command_of(unit(name)["Service"])
    parsed = cli.build_parser(words[0]).parse_args(words)  # SystemExit if a flag is unknown
    assert callable(parsed.func)
    assert any(word.startswith("/etc/samenloop/") for word in words)  # ConfigurationDirectory


def test_the_example_configurations_match_the_units() -> None:
    node = config.node_config_from_toml(
        (CONFIGS / "node.toml").read_bytes(), source="node.toml", base_dir=Path("/etc/samenloop")
    )
    broker = config.broker_config_from_toml(
        (CONFIGS / "broker.toml").read_bytes(),
        source="broker.toml",
        base_dir=Path("/etc/samenloop"),
    )
    node_service = unit("samenloop-node.service")["Service"]
    broker_service = unit("samenloop-broker.service")["Service"]
    assert node.data_dir == Path("/var/lib") / one(node_service, "StateDirectory")
    assert broker.data_dir == Path("/var/lib") / one(broker_service, "StateDirectory")
    assert node.api_socket is not None
    assert node.api_socket.parent == Path("/run") / one(node_service, "RuntimeDirectory")
    assert (node.log_format, broker.log_format) == ("json", "json")
    for path in (node.covenant, node.party_keys, broker.signing_keys, broker.private_key):
        assert path.parent == Path("/etc/samenloop")
    # The backup unit writes beside the node's data, in a state directory of its own.
    backup = unit("samenloop-node-backup.service")["Service"]
    assert one(backup, "StateDirectory").split() == [
        one(node_service, "StateDirectory"),
        "samenloop/backups",
    ]
    words = command_of(backup)
    assert words[words.index("--node") + 1] == "/etc/samenloop/node.toml"
    assert words[words.index("--out") + 1].startswith("/var/lib/samenloop/backups/node-")


@pytest.mark.parametrize("name", TIMERS)
def test_each_timer_starts_its_service(name: str) -> None:
    timer = unit(name)
    assert (UNITS / name.replace(".timer", ".service")).exists()
    assert one(timer["Timer"], "Persistent") == "true"
    assert one(timer["Install"], "WantedBy") == "timers.target"


# --- the daemons in the units' sandbox ---------------------------------------------------


def sandboxed(name: str) -> Callable[..., list[str]]:
    """``cli_command`` of tests/daemons.py, run in the sandbox of the unit ``name``."""
    service = unit(name)["Service"]
    families = ",".join(one(service, "RestrictAddressFamilies").split())
    group = one(service, "SystemCallFilter")

    def command(*args: str) -> list[str]:
        inner = [sys.executable, "-m", "samenloop.policies.cli", *args]
        return [sys.executable, str(SANDBOX), families, group, "--", *inner]

    return command


@contextlib.contextmanager
def sandboxed_covenant(root: Path, database_url: str | None) -> Iterator[daemons.Daemons]:
    """A broker and two nodes, every process in the node's and broker's units' sandbox (the
    migrations too); the broker on ``database_url`` (None: SQLite), as running_covenant
    does otherwise."""
    provisioned = provision(
        root, "riec-sandbox", SPECS, ("gemeente", "politie"), 2, now=datetime.now(UTC),
        policy=SEE_ALL,
    )  # fmt: skip
    daemons.migrate(provisioned)  # the nodes' (and the SQLite broker's) databases
    if database_url is not None:
        base = config.load_broker_config(provisioned.broker_config)
        on_postgres = replace(base, database_url=database_url)
        provisioned.broker_config.write_bytes(config.config_to_toml(on_postgres))
        migration = subprocess.run(
            daemons.cli_command("broker", "migrate", "--config", str(provisioned.broker_config)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migration.returncode == 0, migration.stderr
    logs = root / "logs"
    logs.mkdir()
    running = daemons.Daemons(provisioned, logs)
    try:
        for name in ("broker", *running.parties):
            running.start(name)
        for party, path in provisioned.node_configs.items():
            running.clients[party] = NodeClient.from_config(path, timeout=10)
        running.wait_ready()
        yield running
    finally:
        for client in running.clients.values():
            client.close()
        running.kill_all()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_daemons_run_in_the_units_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str
) -> None:
    if not SYSTEMD_ANALYZE.exists():
        pytest.skip("systemd-analyze is not installed (it lists the system call groups)")
    probe = subprocess.run(
        sandboxed("samenloop-node.service")("--help"), capture_output=True, text=True
    )
    if probe.returncode == 77:
        pytest.skip(f"this kernel or libseccomp cannot impose the sandbox: {probe.stderr}")
    assert probe.returncode == 0, probe.stderr
    # The node's and the broker's units have the same sandbox: one wrapper serves both.
    assert sandboxed("samenloop-node.service")("x") == sandboxed("samenloop-broker.service")("x")
    monkeypatch.setattr(daemons, "cli_command", sandboxed("samenloop-node.service"))
    url = None if backend == "sqlite" else str(request.getfixturevalue("own_postgres_url"))
    with sandboxed_covenant(tmp_path / "c", url) as running:
        for name, process in running.processes.items():
            status = Path(f"/proc/{process.pid}/status").read_text()
            assert "\nNoNewPrivs:\t1\n" in status, name
            assert "\nSeccomp:\t2\n" in status, name  # a filter in force
        bsn = "111222333"
        running.clients["gemeente"].add_signal("G-BOX", "vastgoedmisbruik", [("bsn", bsn)])
        running.clients["politie"].add_signal("P-BOX", "drugsproductie", [("bsn", bsn)])
        running.until(
            "a hit at both nodes",
            60,
            lambda: all(len(running.clients[p].hits()) == 1 for p in ("gemeente", "politie")),
        )
        out = tmp_path / "node-backup.db"
        backup = sandboxed("samenloop-node-backup.service")(
            "node", "backup", "--node", str(running.provisioned.node_configs["gemeente"]),
            "--out", str(out),
        )  # fmt: skip
        done = subprocess.run(backup, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert out.stat().st_size > 0
        provisioned = running.provisioned
        stamp = sandboxed("samenloop-covenant-timestamp.service")(
            "covenant", "timestamp", "--covenant", str(provisioned.signed_covenant),
            "--key", str(provisioned.timestamp_key),
            "--node", str(provisioned.node_configs["gemeente"]),
        )  # fmt: skip
        done = subprocess.run(stamp, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "published a covenant timestamp" in done.stdout
        running.check_alive()
