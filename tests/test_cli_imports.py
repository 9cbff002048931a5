"""The CLI imports what a command needs when it runs (the rule in ``samenloop.policies.cli``).

Each command line runs in a fresh interpreter that reports, after ``cli.main``, the modules
it imported: building the parser (``--help``) and ``identifier check`` must not import the
database layer, numpy, grpc or the broker's code. A count of modules, not a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from samenloop.policies import cli

#: Imported by none of the light command lines: the reason for the rule.
HEAVY = ("sqlalchemy", "alembic", "numpy", "grpc", "google.protobuf", "rich", "shapely")

_REPORT = """
import json, sys
from samenloop.policies import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _imported(*argv: str) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _REPORT, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["modules"]


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_identifier_check_imports_neither_database_nor_grpc_nor_broker() -> None:
    code, modules = _imported("identifier", "check", "bsn", "111222333")
    assert code == 0
    assert _heavy(modules) == []
    assert [m for m in modules if m.startswith("samenloop.broker")] == []
    assert [m for m in modules if m.startswith("samenloop.node.client")] == []


def test_the_help_registers_every_role_without_importing_what_they_run() -> None:
    code, modules = _imported("--help")
    assert code == 0
    assert _heavy(modules) == []
    # The broker's package and its argument tree are loaded (the help lists `broker`), its
    # server and stores are not.
    assert [m for m in modules if m.startswith("samenloop.broker")] == [
        "samenloop.broker",
        "samenloop.broker.commands",
    ]
    registering = {entry.module for entry in metadata.entry_points(group="samenloop.commands")}
    assert len(registering) >= 11
    assert registering <= set(modules)


@pytest.mark.parametrize(
    "argv",
    [
        ("--version",),
        ("signal", "import", "--help"),
        ("hits", "watch", "--help"),
        ("node", "status", "--help"),
        ("covenant", "publish", "--help"),
        ("picture", "report", "--help"),
        ("case", "list", "--help"),
        ("disclosure", "list", "--help"),
        ("audit", "show", "--help"),
        ("keyholder", "--help"),
        ("broker", "serve", "--help"),
        ("demo", "--help"),
    ],
)
def test_a_subcommand_s_help_imports_nothing_heavy(argv: tuple[str, ...]) -> None:
    code, modules = _imported(*argv)
    assert code == 0
    assert _heavy(modules) == []


def test_version_is_the_installed_package_s(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"samenloop {metadata.version('samenloop')}"


def test_a_lazy_handler_imports_its_module_when_it_runs() -> None:
    handler = cli.lazy("samenloop.node.identifiers.commands:types_command")
    assert handler.__name__ == "types_command"
    assert handler(cli.build_parser("identifier").parse_args(["identifier", "types"])) == 0


def test_the_written_out_choices_are_the_enums_values() -> None:
    """Registering a command gives ``choices=`` from literal tuples, so that it imports no
    model; they must stay the enums' values."""
    from samenloop.node.cases import commands as cases
    from samenloop.node.cases.machine import ActionStatus, CaseState, InterventionType
    from samenloop.node.disclosure import commands as disclosures
    from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
    from samenloop.node.signals import commands as signals
    from samenloop.node.signals.models import AreaKind, HitState
    from samenloop.policies import audit_commands, certs, policy
    from samenloop.policies import covenant_commands as covenant
    from samenloop.policies.audit import AuditKind
    from samenloop.policies.covenant_commands import drafting

    def values(kind: type) -> tuple[str, ...]:
        return tuple(member.value for member in kind)  # type: ignore[attr-defined]

    assert values(CaseState) == cases.CASE_STATES
    assert values(InterventionType) == cases.INTERVENTION_TYPES
    assert values(ActionStatus) == cases.ACTION_STATUSES
    assert values(DisclosureState) == disclosures.DISCLOSURE_STATES
    assert sorted(disclosures._DIRECTIONS.values()) == sorted(values(DisclosureDirection))
    assert values(AreaKind) == signals.AREA_KINDS
    assert values(HitState) == signals.HIT_STATES
    assert values(AuditKind) == audit_commands.AUDIT_KINDS
    assert covenant.SETTABLE == drafting.SETTABLE
    assert values(policy.Role) == covenant.ROLES
    assert covenant.DEFAULT_FRESHNESS_SECONDS == policy.DEFAULT_FRESHNESS_SECONDS
    assert covenant.DEFAULT_CA_DAYS == certs.DEFAULT_CA_DAYS


@pytest.mark.parametrize(
    ("argv", "dest"),
    [
        (["node", "serve"], "config"),
        (["node", "migrate"], "config"),
        (["node", "backup", "--out", "b.db"], "config"),
        (["node", "restore", "--in-place"], "config"),
        (["covenant", "publish", "c.json"], "config"),
        (["covenant", "timestamp", "--covenant", "c.json", "--key", "k.json"], "config"),
        (["signal", "import", "f.csv", "--reference-column", "r", "--category", "c"], "node"),
        (["hits", "list"], "node"),
        (["node", "status"], "node"),
        (["case", "list"], "node"),
        (["disclosure", "list"], "node"),
        (["picture", "show", "--period", "2026-01"], "node"),
    ],
)
def test_one_name_for_the_node_s_config_file(
    argv: list[str], dest: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--node NODE_TOML`` everywhere; the old ``--config`` still parses, with a warning,
    and is not in the help."""
    parser = cli.build_parser(argv[0])
    assert getattr(parser.parse_args([*argv, "--node", "a.toml"]), dest) == Path("a.toml")
    assert capsys.readouterr().err == ""
    assert getattr(parser.parse_args([*argv, "--config", "b.toml"]), dest) == Path("b.toml")
    assert capsys.readouterr().err == ("samenloop: warning: --config is deprecated, use --node\n")
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    shown = capsys.readouterr().out
    assert "--node NODE_TOML" in shown
    assert "--config" not in shown
