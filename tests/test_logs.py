"""The daemons' logs (issue 15): one format for every line, levels an operator can alert on.

With ``log_format = "json"`` every line a daemon writes, its own, Alembic's and the key
holder's, is one JSON object with a timestamp, a level and an event; a broker that goes
away is one warning at the node, then quiet retries with backoff, then one line when it
is back (it used to be an info line per failed call, some 36 a minute).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from samenloop.node.client import NodeClient
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies import logs
from samenloop.policies.config import load_node_config
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.policy import Role

from daemons import Daemons, cli_command, wait_until

SPECS = (
    PartySpec("gemeente", "Gemeente Vlissingen", Role.GEMEENTE),
    PartySpec("politie", "Politie Zeeland-West-Brabant", Role.POLITIE),
)
PARTIES = tuple(spec.id for spec in SPECS)
UNREACHABLE = "broker unreachable: retrying with backoff"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON, failing on the first that is not one object with a
    timestamp, a level and an event."""
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        assert {"timestamp", "level", "event"} <= set(entry), line
        assert entry["timestamp"].endswith("Z"), line  # UTC
        parsed.append(entry)
    return parsed


# --- the configuration ------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    before = structlog.get_config()
    yield
    structlog.configure(**before)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_take_structlog_and_the_standard_library_alike(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure("info", "json")
    structlog.get_logger("samenloop.test").warning("broker unreachable", where="work")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 0001")
    logging.getLogger("alembic.runtime.migration").debug("below the level: not written")
    structlog.get_logger("samenloop.test").debug("below the level: not written")
    own, alembic = json_lines(stream.getvalue())
    assert (own["level"], own["event"], own["where"]) == ("warning", "broker unreachable", "work")
    assert (alembic["level"], alembic["logger"]) == ("info", "alembic.runtime.migration")
    assert alembic["event"] == "Running upgrade  -> 0001"


def test_an_unknown_log_format_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="sl-lf-", dir="/tmp") as short:
        provisioned = provision(Path(short), "riec-lf", SPECS, PARTIES, 2, now=datetime.now(UTC))
        path = provisioned.node_configs["gemeente"]
        path.write_text(path.read_text().replace('log_format = "console"', 'log_format = "xml"'))
        with pytest.raises(ConfigurationError) as refused:
            load_node_config(path)
    assert refused.value.field.endswith("node.toml: log_format")  # the file and the setting
    assert "console, json" in str(refused.value)


# --- through the daemons ----------------------------------------------------------------------


@pytest.fixture
def json_covenant() -> Iterator[Provisioned]:
    root = Path(tempfile.mkdtemp(prefix="sl-log-", dir="/tmp"))  # short: sockets live here
    try:
        provisioned = provision(
            root, "riec-logs", SPECS, PARTIES, 2, now=datetime.now(UTC) - timedelta(minutes=5)
        )
        for path in (provisioned.broker_config, *provisioned.node_configs.values()):
            text = path.read_text()
            assert 'log_format = "console"' in text  # provisioning writes the default
            path.write_text(text.replace('log_format = "console"', 'log_format = "json"'))
        yield provisioned
    finally:
        shutil.rmtree(root)


def test_a_node_logs_json_and_one_warning_while_the_broker_is_down(
    json_covenant: Provisioned,
) -> None:
    provisioned = json_covenant
    # The migrations, Alembic's lines included: JSON on standard error.
    for kind, config in (
        ("broker", provisioned.broker_config),
        *(("node", path) for path in provisioned.node_configs.values()),
    ):
        migration = subprocess.run(
            cli_command(kind, "migrate", "--node" if kind == "node" else "--config", str(config)),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert migration.returncode == 0, migration.stderr.decode(errors="replace")
        migrated = json_lines(migration.stderr.decode())
        assert any(e.get("logger", "").startswith("alembic") for e in migrated), migrated

    log_dir = provisioned.root / "logs"
    log_dir.mkdir()
    daemons = Daemons(provisioned, log_dir)
    try:
        for name in ("broker", *PARTIES):
            daemons.start(name)
        for party, path in provisioned.node_configs.items():
            daemons.clients[party] = NodeClient.from_config(path, timeout=10)
        daemons.wait_ready()

        daemons.stop("broker")
        wait_until(
            lambda: all(UNREACHABLE.encode() in daemons.log(p) for p in PARTIES),
            30,
            "each node saying the broker is unreachable",
        )
        # Long enough for each of a node's three loops (work, mailbox, key holder) to retry
        # several times at the longest backoff: each retry used to be an info line.
        time.sleep(12)
        daemons.start("broker")
        daemons.wait_ready()
        wait_until(
            lambda: all(b"broker reachable again" in daemons.log(p) for p in PARTIES),
            30,
            "each node saying the broker is back",
        )
    finally:
        for client in daemons.clients.values():
            client.close()
        for party in PARTIES:  # the nodes first: a broker gone at the end is not the test's
            if party in daemons.processes:
                daemons.kill(party)
        daemons.kill_all()

    json_lines(daemons.log("broker").decode())  # the broker's lines: JSON too
    for party in PARTIES:
        entries = json_lines(daemons.log(party).decode())
        warnings = [e for e in entries if e["level"] in ("warning", "error")]
        assert [e["event"] for e in warnings] == [UNREACHABLE], warnings
        back = [e for e in entries if e["event"] == "broker reachable again"]
        assert len(back) == 1
        assert back[0]["level"] == "info"
        assert back[0]["failed_calls"] >= 3  # the retries happened, at debug level
        assert back[0]["after_seconds"] >= 12
        # Nothing else about the outage above debug: no line per failed call.
        assert not [e for e in entries if e["event"] == "broker call failed"]
