"""``samenloop signal``, ``samenloop hits`` and ``samenloop node status`` against a real
node API (gRPC on the Unix socket that ``node.toml`` names, the store on SQLite).

The commands run through ``samenloop.policies.cli.main``, with the ``signal`` and
``hits`` entry points added when the installed metadata does not list them yet.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import openpyxl
import pytest
import structlog

from samenloop.node.client import NodeClient
from samenloop.node.daemon.api import HitBell, NodeApiContext, NodeApiService
from samenloop.node.daemon.repositories import MIGRATIONS, Repositories
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.node.signals.models import HitKind, SignalState
from samenloop.policies import cli, database, terminal
from samenloop.policies import covenant as covenant_model
from samenloop.policies.config import load_node_config
from samenloop.policies.covenant import AttributeKey, AttributeKeyRing, Role
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.rpc import ErrorInterceptor
from samenloop.v1 import broker_pb2, common_pb2, node_pb2_grpc

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ME = "gemeente"

# Valid test identifiers (BSNs pass the 11-test; 010000008 is written without its zero).
BSN_A, BSN_B, BSN_ZERO = "111222333", "111222345", "10000008"


@pytest.fixture(autouse=True)
def commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI with this module's entry points, whether or not they are installed yet."""
    real = metadata.entry_points
    ours = {
        "signal": "samenloop.node.signals.commands:register",
        "hits": "samenloop.node.signals.commands:register_hits",
    }

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        found = [e for e in real(group=group) if e.name not in ours]
        return found + [metadata.EntryPoint(n, v, group) for n, v in ours.items()]

    monkeypatch.setattr(cli, "entry_points", entry_points)


class _Stderr:
    """Whatever ``sys.stderr`` is at the moment of writing (pytest swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def server_logs_to_stderr() -> Iterator[None]:
    """The node API runs in this process here: keep its log lines out of stdout, which
    the commands' JSON owns (a real node logs in its own process)."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(_Stderr()))  # type: ignore[arg-type]
    yield
    structlog.reset_defaults()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- a node serving its local API where node.toml says ---------------------------------------


@pytest.fixture(scope="module")
def provisioned() -> Iterator[Provisioned]:
    root = Path(tempfile.mkdtemp(prefix="sl-cli-", dir="/tmp"))  # short: a socket lives here
    try:
        yield provision(
            root,
            "riec-cli",
            [
                PartySpec(ME, "Gemeente Test", Role.GEMEENTE),
                PartySpec("politie", "Politie Test", Role.POLITIE),
            ],
            [ME, "politie"],
            2,
            now=NOW - timedelta(days=1),
        )
    finally:
        shutil.rmtree(root)


@dataclass
class Node:
    repositories: Repositories
    bell: HitBell
    config: Path
    socket: Path
    attribute_key: AttributeKey
    broker_keys: PartyKeys
    covenant: covenant_model.Covenant


@pytest.fixture
def node(provisioned: Provisioned, sqlite_url: str) -> Iterator[Node]:
    config_path = provisioned.node_configs[ME]
    config = load_node_config(config_path)
    assert config.api_socket is not None
    keys = PartyKeys.load(config.party_keys)
    attribute_keys = AttributeKeyRing(keys)
    attribute_key = attribute_keys.current(provisioned.covenant)
    engine = database.make_engine(sqlite_url)
    database.upgrade(engine, MIGRATIONS)
    repositories = Repositories.open(engine)
    bell = HitBell()
    context = NodeApiContext(
        party=ME,
        repositories=repositories,
        covenant=lambda: provisioned.covenant,
        attribute_keys=attribute_keys,
        clock=lambda: NOW,
        bell=bell,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorInterceptor()]
    )
    node_pb2_grpc.add_NodeApiServicer_to_server(NodeApiService(context), server)
    config.api_socket.unlink(missing_ok=True)
    assert server.add_insecure_port(f"unix:{config.api_socket}")
    server.start()
    try:
        yield Node(
            repositories,
            bell,
            config_path,
            config.api_socket,
            attribute_key,
            PartyKeys.load(provisioned.root / "broker" / "signing-keys.json"),
            provisioned.covenant,
        )
    finally:
        server.stop(None).wait()
        engine.dispose()
        config.api_socket.unlink(missing_ok=True)


def accept_hit(node: Node, group: bytes, own: list[bytes], categories: list[str]) -> None:
    """A broker-signed hit notice for ME, stored as the uplink stores it."""
    notice = broker_pb2.HitNotice(
        covenant_id=node.covenant.id,
        covenant_version=node.covenant.version,
        hit_group_id=group,
        revision=1,
        kind=broker_pb2.HIT_NOTICE_KIND_NEW,
        recipient=ME,
        visibility=broker_pb2.HitVisibility(
            party_count=True, roles=True, parties=True, categories=True
        ),
        own_signal_refs=own,
        party_count=2,
    )
    member = notice.members.add(party="politie", role="politie", signal_refs=[b"\x05" * 16])
    for category in categories:
        plaintext = common_pb2.MemberAttributes(category=category).SerializeToString()
        nonce, ciphertext = covenant_model.seal_attributes(node.attribute_key, plaintext)
        member.sealed_attributes.add(
            key_version=node.attribute_key.version, nonce=nonce, ciphertext=ciphertext
        )
    body = notice.SerializeToString()
    signed = common_pb2.Signed(
        body=body,
        signer=node.covenant.broker.id,
        context=SignatureContext.HIT_NOTICE.value,
        signature=node.broker_keys.sign(SignatureContext.HIT_NOTICE, body),
    )
    cursor = node.repositories.shared.mailbox_cursor() + 1
    assert node.repositories.signals.accept_notice(
        cursor,
        group,
        1,
        HitKind.NEW,
        signed.SerializeToString(),
        own,
        NOW - timedelta(hours=2),
        NOW,
        now=NOW,
    )
    node.bell.ring()


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ";") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


# --- signal import -------------------------------------------------------------------------------


HEADER = ["Dossier", "BSN nummer", "KvK", "Categorie", "Toelichting"]


def test_csv_import_with_mapping_and_validation_report(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(
        tmp_path / "dossiers.csv",
        [
            HEADER,
            ["D-1", BSN_A, "0123 4567", "vastgoedmisbruik", "leegstand"],  # row 2
            ["D-2", "111222334", "", "woonfraude", ""],  # 3: elfproef fails
            ["", BSN_B, "", "woonfraude", ""],  # 4: no reference
            ["D-4", BSN_ZERO, "", "drugsproductie", ""],  # 5: zero dropped, restored below
            ["D-5", "", "", "katvanger", ""],  # 6: no identifier
            ["D-6", "", "12345", "", ""],  # 7: kvk too short, no category
            ["", "", "", "", ""],  # blank rows are skipped
            ["D-8", BSN_B, "", "woonfraude", "hennep"],  # 9
            ["D-9", BSN_A, "", "woonfraude", "", "extra"],  # 10: a cell too many
        ],
    )
    report = tmp_path / "report.csv"
    code, out, err = run(
        capsys,
        "signal",
        "import",
        str(source),
        "--map",
        "bsn=BSN nummer",
        "--map",
        "kvk=KvK",
        "--reference-column",
        "Dossier",
        "--category-column",
        "Categorie",
        "--detail-column",
        "Toelichting",
        "--leading-zero-dropped",
        "bsn",
        "--report",
        str(report),
        "--node",
        str(node.config),
        "--json",
    )
    assert code == 1, err
    outcome = json.loads(out)
    assert {k: outcome[k] for k in ("rows", "imported", "unchanged", "refused")} == {
        "rows": 8,
        "imported": 3,
        "unchanged": 0,
        "refused": 5,
    }
    problems = [(p["row"], p["column"], p["reason"]) for p in outcome["problems"]]
    assert problems == [
        (3, "BSN nummer", "bsn.check_digit"),
        (4, "Dossier", "signal.reference_missing"),
        (6, "BSN nummer, KvK", "signal.identifiers_missing"),
        (7, "Categorie", "signal.category_missing"),
        (7, "KvK", "kvk.length"),
        (10, "*", "row.too_many_cells"),
    ]
    with report.open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert [(int(r["row"]), r["column"], r["reason"]) for r in written] == problems
    assert all(r["message"] for r in written)
    for raw_value in ("111222334", "12345", BSN_A):
        assert raw_value not in out + err + report.read_text()

    restored = node.repositories.signals.signal("D-4")
    assert restored is not None
    assert restored.identifiers[0].identifier.canonical == "0" + BSN_ZERO
    first = node.repositories.signals.signal("D-1")
    assert first is not None
    assert [i.identifier.canonical for i in first.identifiers] == [BSN_A, "01234567"]
    assert dict(first.details) == {"Toelichting": "leegstand"}
    assert node.repositories.signals.signal("D-2") is None
    assert node.repositories.signals.status_counts().signals[SignalState.ACTIVE] == 3


def test_xlsx_import_with_numbers_and_a_fixed_category(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Signalen"
    sheet.append(["Dossier", "BSN", "KvK", "Vervalt"])
    sheet.append(["X-1", int(BSN_A), 1234567, datetime(2027, 3, 1)])  # numbers lose zeros
    sheet.append(["X-2", int(BSN_ZERO), None, None])
    sheet.append([1003, None, "KvK 1234 5678", None])  # a numeric reference is text too
    path = tmp_path / "signalen.xlsx"
    workbook.save(path)
    argv = [
        "signal",
        "import",
        str(path),
        "--map",
        "bsn=BSN",
        "--map",
        "kvk=KvK",
        "--reference-column",
        "Dossier",
        "--category",
        "vastgoedmisbruik",
        "--expires-column",
        "Vervalt",
        "--leading-zero-dropped",
        "all",
        "--socket",
        str(node.socket),
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, out + err
    assert "3 rows: 3 imported, 0 unchanged, 0 refused" in out
    signal = node.repositories.signals.signal("X-1")
    assert signal is not None
    assert [i.identifier.canonical for i in signal.identifiers] == [BSN_A, "01234567"]
    assert signal.category == "vastgoedmisbruik"
    assert signal.expires_at == datetime(2027, 3, 2, tzinfo=UTC)
    assert node.repositories.signals.signal("1003") is not None

    code, out, _ = run(capsys, *argv)  # the same file again changes nothing
    assert code == 0
    assert "3 rows: 0 imported, 3 unchanged, 0 refused" in out


def test_import_table_output_and_validate_only(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(
        tmp_path / "a.csv",
        [["ref", "kvk"], ["A-1", "01234567"], ["A-2", "0123"]],
        delimiter=",",
    )
    base = ["signal", "import", str(source), "--map", "kvk=kvk", "--reference-column", "ref"]
    base += ["--category", "drugsproductie", "--socket", str(node.socket)]
    code, out, _ = run(capsys, *base, "--validate-only")
    assert code == 1
    assert "2 rows: 1 valid, 1 refused (nothing stored)" in out
    assert node.repositories.signals.signal("A-1") is None

    code, out, _ = run(capsys, *base)
    assert code == 1
    assert "2 rows: 1 imported, 0 unchanged, 1 refused" in out
    assert "validation report" in out
    assert "kvk.length" in out


def test_import_usage_errors(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "b.csv", [["ref", "kvk"], ["B-1", "01234567"]])
    base = [
        "signal",
        "import",
        str(source),
        "--reference-column",
        "ref",
        "--category",
        "woonfraude",
    ]
    base += ["--socket", str(node.socket)]
    code, _, err = run(capsys, *base, "--map", "kvk=KvK nummer")
    assert code == 2
    assert "--map: no column 'KvK nummer'" in err
    code, _, err = run(capsys, *base, "--map", "postcode=kvk")
    assert code == 2
    assert "unknown identifier type" in err
    code, _, err = run(capsys, *base, "--map", "kvk=kvk", "--leading-zero-dropped", "iban")
    assert code == 2
    garbage = tmp_path / "c.xlsx"
    garbage.write_bytes(b"not a workbook")
    code, _, err = run(
        capsys, "signal", "import", str(garbage), "--map", "kvk=kvk", "--reference-column",
        "ref", "--category", "woonfraude", "--socket", str(node.socket),
    )  # fmt: skip
    assert code == 1
    assert "cannot read" in err
    assert node.repositories.signals.status_counts().signals[SignalState.ACTIVE] == 0


def test_a_wrong_category_is_refused_once_before_the_file_is_read(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: not once per row, and before the file is read (it does not exist here)."""
    base = ["signal", "import", "--map", "kvk=kvk", "--reference-column", "ref"]
    base += ["--socket", str(node.socket)]
    missing = str(tmp_path / "not-there.csv")
    code, out, err = run(capsys, *base, missing, "--category", "fietsendiefstal")
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "samenloop: error: --category: 'fietsendiefstal' is not a category of this covenant; "
        f"use one of: {', '.join(node.covenant.policy.categories)}"
    ]
    rows = [["ref", "kvk"], *([f"C-{n}", "01234567"] for n in range(5))]
    code, out, err = run(capsys, *base, str(write_csv(tmp_path / "c.csv", rows)),
                         "--category", "fietsendiefstal")  # fmt: skip
    assert (code, out, err.count("fietsendiefstal")) == (2, "", 1)
    assert node.repositories.signals.status_counts().signals[SignalState.ACTIVE] == 0


def test_map_errors_use_the_help_s_words_and_name_the_type(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "m.csv", [["ref", "kvk"], ["M-1", "01234567"]])
    base = ["signal", "import", str(source), "--reference-column", "ref", "--category"]
    base += ["woonfraude", "--socket", str(node.socket)]
    code, _, err = run(capsys, *base, "--map", "kvk")
    assert code == 2
    assert err.strip() == "samenloop: error: --map: write --map TYPE=COLUMN"
    code, _, err = run(capsys, *base, "--map", "fax=kvk")
    assert code == 2
    assert err.startswith("samenloop: error: --map: unknown identifier type 'fax'; known types: ")
    code, _, err = run(capsys, *base)
    assert code == 2
    assert "--map TYPE=COLUMN (repeatable) or --type-column and --value-column" in err
    code, _, err = run(capsys, *base, "--type-column", "kvk")
    assert (code, "--value-column" in err) == (2, True)
    code, _, err = run(capsys, *base, "--map", "kvk=kvk", "--type-column", "a",
                       "--value-column", "b")  # fmt: skip
    assert (code, "not both" in err) == (2, True)


def test_the_long_layout_joins_the_rows_of_one_reference(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``registers export``'s layout: one identifier a row; the rows of one reference are
    one signal, stored whole or not at all; the report names each row's reference."""
    source = write_csv(
        tmp_path / "long.csv",
        [
            ["reference", "type", "value", "category", "note"],
            ["L-1", "bsn", BSN_A, "woonfraude", "leegstand"],  # row 2
            ["L-1", "kvk", "0123 4567", "", ""],  # 3: the category of row 2 holds
            ["L-2", "bsn", "111222334", "woonfraude", ""],  # 4: elfproef fails
            ["L-2", "kvk", "01234567", "woonfraude", ""],  # 5: refused with row 4
            ["L-3", "bsn", BSN_B, "woonfraude", ""],  # 6
            ["L-3", "kvk", "01234567", "drugsproductie", ""],  # 7: another category
            ["L-4", "fax", "0101234567", "woonfraude", ""],  # 8: not a type
            ["L-1", "bsn", BSN_B, "woonfraude", "leegstand"],  # 9: L-1 again, further down
        ],
    )
    code, out, err = run(capsys, "signal", "import", str(source), "--type-column", "type",
                         "--value-column", "value", "--reference-column", "reference",
                         "--category-column", "category", "--detail-column", "note",
                         "--socket", str(node.socket), "--json")  # fmt: skip
    assert code == 1, err
    outcome = json.loads(out)
    assert (outcome["rows"], outcome["imported"], outcome["refused"]) == (8, 1, 5)
    problems = [(p["row"], p["reference"], p["column"], p["reason"]) for p in outcome["problems"]]
    assert problems == [
        (4, "L-2", "value", "bsn.check_digit"),
        (5, "L-2", "*", "signal.refused_with_its_rows"),
        (6, "L-3", "*", "signal.refused_with_its_rows"),
        (7, "L-3", "category", "signal.rows_differ"),
        (8, "L-4", "type", "identifier.unknown_type"),
    ]
    messages = {p["row"]: p["message"] for p in outcome["problems"]}
    assert messages[7].startswith("rows 6 and 7 of one reference give different values")
    assert messages[5] == "refused with row 4 of the same reference"
    assert messages[8].startswith("unknown identifier type 'fax'; known types: ")
    assert "111222334" not in out + err
    joined = node.repositories.signals.signal("L-1")
    assert joined is not None
    assert [i.identifier.canonical for i in joined.identifiers] == [BSN_A, "01234567", BSN_B]
    assert (joined.category, dict(joined.details)) == ("woonfraude", {"note": "leegstand"})
    for refused in ("L-2", "L-3", "L-4"):
        assert node.repositories.signals.signal(refused) is None

    code, out, _ = run(capsys, "signal", "import", str(source), "--type-column", "type",
                       "--value-column", "value", "--reference-column", "reference",
                       "--category-column", "category", "--socket", str(node.socket))  # fmt: skip
    assert code == 1
    assert out.startswith("8 rows (4 signals): ")  # the summary says which it counts
    assert "L-3" in out  # the table names each refused row's reference


def fits(out: str, width: int, *values: str) -> None:
    """``out`` fits ``width`` columns and breaks no word of ``values`` across lines."""
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width, out
    for word in (w for value in values for w in value.split()):
        assert any(word in line for line in lines), f"{word!r} is broken or missing:\n{out}"


@pytest.mark.parametrize("width", [80, 120])
def test_the_tables_fit_the_terminal_without_breaking_words(
    node: Node,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    width: int,
) -> None:
    """Issue 15: the validation report, hits list and node status at 80 (and 120) columns:
    a table when its longest words fit, else one record per row."""
    monkeypatch.setenv("COLUMNS", str(width))
    source = write_csv(
        tmp_path / "wide.csv",
        [
            ["Dossiernummer gemeente", "BSN nummer", "Categorie"],
            ["DOSSIER-2026-000123", "111222334", "vastgoedmisbruik"],
            ["DOSSIER-2026-000124", BSN_A, "fietsendiefstal"],
        ],
    )
    code, out, _ = run(capsys, "signal", "import", str(source), "--map", "bsn=BSN nummer",
                       "--reference-column", "Dossiernummer gemeente", "--category-column",
                       "Categorie", "--socket", str(node.socket))  # fmt: skip
    assert code == 1
    fits(out, width, "DOSSIER-2026-000123", "DOSSIER-2026-000124", "BSN nummer",
         "bsn.check_digit", "signal.unknown_category", "Categorie")  # fmt: skip

    run(capsys, "signal", "add", "--id", "kvk=01234567", "--reference", "DOSSIER-2026-000777",
        "--category", "vastgoedmisbruik", "--socket", str(node.socket))  # fmt: skip
    record = node.repositories.signals.signal("DOSSIER-2026-000777")
    assert record is not None
    ref = record.identifiers[0].signal_ref
    accept_hit(node, b"\x0a" * 16, [ref], ["vastgoedmisbruik", "drugsproductie"])
    code, out, _ = run(capsys, "hits", "list", "--socket", str(node.socket))
    assert code == 0
    fits(out, width, "0a0a0a0a0a0a", "DOSSIER-2026-000777", "vastgoedmisbruik", "drugsproductie")

    code, out, _ = run(capsys, "node", "status", "--socket", str(node.socket))
    assert code == 3
    fits(out, width, "riec-cli", "disconnected", "key holder seats")


def test_a_node_that_is_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "node", "status", "--socket", str(tmp_path / "none.sock"))
    assert code == 3
    assert err.startswith("samenloop: error:")


# --- signal add / withdraw -----------------------------------------------------------------------


def test_signal_add_and_withdraw(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "signal", "add", "--type", "bsn", "--value", BSN_A, "--id", "kvk=01234567",
        "--reference", "R1", "--category", "vastgoedmisbruik", "--detail", "bron=BRP",
        "--node", str(node.config), "--json",
    )  # fmt: skip
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["reference"], shown["state"], shown["identifier_types"]) == (
        "R1",
        "active",
        ["kvk", "bsn"],
    )
    assert BSN_A not in out

    code, out, err = run(
        capsys, "signal", "add", "--id", "bsn=111222334", "--reference", "R2",
        "--category", "woonfraude", "--socket", str(node.socket),
    )  # fmt: skip
    assert code == 1
    assert err.endswith(
        "samenloop: error: signal.identifiers[0].value: BSN fails the 11-test (elfproef)\n"
    )

    code, out, _ = run(capsys, "signal", "withdraw", "R1", "--socket", str(node.socket))
    assert code == 0
    assert out.strip().endswith("(R1): withdrawn")
    code, _, err = run(capsys, "signal", "withdraw", "R9", "--socket", str(node.socket))
    assert code == 1
    assert "reference" in err


def test_signal_add_from_a_file_or_stdin_and_the_warning_for_arguments(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = tmp_path / "signal.txt"
    values.write_text(f"id bsn={BSN_A}\ndetail naam=Jürgen de Vries\n", encoding="utf-8")
    code, out, err = run(
        capsys, "signal", "add", "--reference", "F1", "--category", "vastgoedmisbruik",
        "--from", str(values), "--node", str(node.config), "--json",
    )  # fmt: skip
    # No warning: nothing was on the command line (the node in this process logs to stderr).
    assert code == 0
    assert "samenloop: warning" not in err
    assert json.loads(out)["identifier_types"] == ["bsn"]
    record = node.repositories.signals.signal("F1")
    assert record is not None
    assert (record.identifiers[0].identifier.canonical, dict(record.details)) == (
        BSN_A,
        {"naam": "Jürgen de Vries"},
    )

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"value {BSN_B}\n".encode())))
    code, _, err = run(
        capsys, "signal", "add", "--reference", "F2", "--category", "vastgoedmisbruik",
        "--type", "bsn", "--from", "-", "--socket", str(node.socket),
    )  # fmt: skip
    assert code == 0
    assert "samenloop: warning" not in err
    stored = node.repositories.signals.signal("F2")
    assert stored is not None
    assert stored.identifiers[0].identifier.canonical == BSN_B

    # The argument form still works, and says on stderr what it exposes.
    code, _, err = run(
        capsys, "signal", "add", "--reference", "F3", "--category", "vastgoedmisbruik",
        "--id", "kvk=01234567", "--socket", str(node.socket),
    )  # fmt: skip
    assert code == 0
    assert err.splitlines()[0] == (
        "samenloop: warning: command-line arguments are visible to every account on this "
        "host while the command runs (/proc/PID/cmdline, ps) and stay in the shell's "
        "history: give identifiers and details with --from FILE or --from - (standard "
        "input)"
    )


# --- hits ---------------------------------------------------------------------------------------


def test_hits_list_json_and_table(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the table folds long words at 80 columns
    code, out, _ = run(capsys, "hits", "list", "--json", "--socket", str(node.socket))
    assert (code, json.loads(out)) == (0, [])

    run(capsys, "signal", "add", "--id", "kvk=01234567", "--reference", "H1", "--category",
        "vastgoedmisbruik", "--socket", str(node.socket))  # fmt: skip
    record = node.repositories.signals.signal("H1")
    assert record is not None
    ref = record.identifiers[0].signal_ref
    accept_hit(node, b"\x01" * 16, [ref], ["drugsproductie", "witwasindicatie"])

    code, out, _ = run(capsys, "hits", "list", "--json", "--node", str(node.config))
    assert code == 0
    (hit,) = json.loads(out)
    assert hit["group_id"] == "01" * 16
    assert (hit["state"], hit["last_kind"], hit["revision"], hit["party_count"]) == (
        "open",
        "new",
        1,
        2,
    )
    assert hit["own_signals"] == [
        {
            "signal_ref": ref.hex(),
            "signal_id": str(record.id),
            "reference": "H1",
            "category": "vastgoedmisbruik",
            "identifier_type": "kvk",
            "person_kind": None,
        }
    ]
    assert hit["probable_hits"] == []
    assert hit["members"] == [
        {
            "party": "politie",
            "role": "politie",
            "categories": ["drugsproductie", "witwasindicatie"],
            "unknown_categories": 0,
            "signal_refs": ["05" * 16],
        }
    ]
    assert hit["last_seen"] == NOW.isoformat()

    code, out, _ = run(capsys, "hits", "list", "--socket", str(node.socket))
    assert code == 0
    assert "1 hit" in out
    assert "drugsproductie" in out
    code, out, _ = run(capsys, "hits", "list", "--state", "closed", "--json", "--socket",
                       str(node.socket))  # fmt: skip
    assert json.loads(out) == []


def test_hits_watch(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    accept_hit(node, b"\x01" * 16, [], ["drugsproductie"])
    accept_hit(node, b"\x02" * 16, [], ["woonfraude"])
    code, out, _ = run(
        capsys, "hits", "watch", "--after", "1", "--count", "1", "--json", "--socket",
        str(node.socket),
    )  # fmt: skip
    assert code == 0
    (line,) = out.splitlines()
    change: dict[str, Any] = json.loads(line)
    assert (change["sequence"], change["group_id"]) == (2, "02" * 16)
    assert change["members"][0]["categories"] == ["woonfraude"]

    code, out, _ = run(capsys, "hits", "watch", "--count", "2", "--socket", str(node.socket))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["[1]", "[2]"]


def test_hits_watch_until_caught_up_ends_after_the_backlog(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: for scripts. It ends (exit 0) once the node has sent what it held, and the
    next run resumes after the last sequence printed."""
    watch = ["hits", "watch", "--until-caught-up", "--json", "--socket", str(node.socket)]
    code, out, _ = run(capsys, *watch)
    assert (code, out) == (0, "")  # no hits yet: caught up at once
    for n in range(1, 4):
        accept_hit(node, bytes([n]) * 16, [], ["woonfraude"])
    code, out, _ = run(capsys, *watch)
    assert code == 0
    assert [json.loads(line)["sequence"] for line in out.splitlines()] == [1, 2, 3]
    accept_hit(node, b"\x04" * 16, [], ["drugsproductie"])
    code, out, _ = run(capsys, *watch, "--after", "3")
    assert code == 0
    assert [json.loads(line)["group_id"] for line in out.splitlines()] == ["04" * 16]

    with NodeClient.from_config(node.config) as client:
        stream = client.watch_hits(0, until_caught_up=True)
        assert [hit.sequence for hit in stream] == [1, 2, 3, 4]
        assert stream.caught_up
        # Without asking, the stream goes on past the backlog (and never shows the marker).
        with client.watch_hits(0) as endless:
            assert [next(endless).sequence for _ in range(4)] == [1, 2, 3, 4]
            assert not endless.caught_up


HOSTILE = (
    "[/bold]",
    "[link=https://evil.example]x[/link]",
    "\x1b]8;;https://evil.example\x1b\\x",
    '=HYPERLINK("https://evil.example","x")',
)


@pytest.mark.parametrize("text", HOSTILE, ids=["bold", "link", "osc8", "formula"])
def test_hits_show_hostile_text_as_text(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Another member sealed ``text`` as its category (the covenant lists no such one), and
    this partner's own reference holds it (a file from elsewhere): shown as text, on a
    terminal that takes colours, with nothing that a terminal would act on."""
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("FORCE_COLOR", "1")
    run(capsys, "signal", "add", "--id", "kvk=01234567", "--reference", text, "--category",
        "vastgoedmisbruik", "--socket", str(node.socket))  # fmt: skip
    record = node.repositories.signals.signal(text)
    assert record is not None
    ref = record.identifiers[0].signal_ref
    accept_hit(node, b"\x01" * 16, [ref], ["woonfraude", text])
    shown = terminal.printable(text)

    for argv in (["hits", "list"], ["hits", "watch", "--count", "1"]):
        code, out, err = run(capsys, *argv, "--socket", str(node.socket))
        assert code == 0, err
        assert text not in err  # the node's log (in this process) counts, never quotes
        assert shown in out  # the own reference, literally
        assert "politie (politie): woonfraude, (unknown category)" in SGR.sub("", out)
        assert unsafe(SGR.sub("", out)) == []
        assert "evil.example" not in out.replace(shown, "")  # only where the reference is

    code, out, _ = run(capsys, "hits", "list", "--json", "--socket", str(node.socket))
    (hit,) = json.loads(out)
    assert hit["own_signals"][0]["reference"] == text  # JSON: exact
    assert (hit["members"][0]["categories"], hit["members"][0]["unknown_categories"]) == (
        ["woonfraude"],
        1,
    )
    assert unsafe(out) == []


SGR = re.compile(r"\x1b\[[0-9;]*m")  # the commands' own colours


def unsafe(text: str) -> list[str]:
    return [c for c in text if c != "\n" and not terminal.is_safe(c)]


def test_the_validation_report_neutralises_formulas(
    node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The report quotes the file's headers: a header that is a formula is written as text,
    in CSV and in XLSX, and shown as text in the table."""
    header = ["ref", '=HYPERLINK("https://evil.example","x")', "cat"]
    source = write_csv(tmp_path / "in.csv", [header, ["R1", "123", "woonfraude"]])
    for name in ("report.csv", "report.xlsx"):
        report = tmp_path / name
        code, out, err = run(capsys, "signal", "import", str(source), "--map",
                             f"bsn={header[1]}", "--reference-column", "ref",
                             "--category-column", "cat", "--report", str(report),
                             "--socket", str(node.socket))  # fmt: skip
        assert code == 1, err
        assert "HYPERLINK" in out
        if name.endswith(".csv"):
            with report.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
            assert rows[0][:3] == ["row", "reference", "column"]
            assert rows[1][1] == "R1"  # the row's reference, beside its number
            column = rows[1][2]
        else:
            sheet = openpyxl.load_workbook(report).worksheets[0]
            cell = sheet.cell(row=2, column=3)
            assert cell.data_type == "s"
            column = cell.value
        assert column == "'" + header[1]


# --- node status ----------------------------------------------------------------------------------


def test_node_status_json_and_table(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "signal", "add", "--id", "kvk=01234567", "--reference", "S1", "--category",
        "woonfraude", "--node", str(node.config))  # fmt: skip
    code, out, err = run(capsys, "node", "status", "--json", "--node", str(node.config))
    assert code == 3, err  # not connected: no broker here
    assert "is not connected to the broker (disconnected, dialling " in err
    status = json.loads(out)
    assert (status["party"], status["covenant_id"], status["covenant_version"]) == (
        ME,
        "riec-cli",
        1,
    )
    assert (status["broker_connection"], status["active_signals"], status["open_hits"]) == (
        "disconnected",
        1,
        0,
    )
    assert status["key_holder"]["seats"] == [{"key_epoch": 1, "holder_index": 1}]

    code, out, _ = run(capsys, "node", "status", "--socket", str(node.socket))
    assert code == 3
    assert "riec-cli" in out
    assert "key holder seats" in out


def test_node_status_needs_to_know_where_the_node_is(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMENLOOP_NODE_CONFIG", raising=False)
    code, _, err = run(capsys, "node", "status")
    assert code == 2
    assert "--node" in err


ROLES = sorted(entry.name for entry in metadata.entry_points(group="samenloop.commands"))


@pytest.mark.parametrize("role", ROLES)
def test_a_command_loads_only_the_role_that_registers_it(role: str) -> None:
    """``samenloop node serve`` loads the node's commands, not the broker's: each role
    registers the one command its entry point is named after."""
    parser = cli.build_parser(role)
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(commands.choices) == [role]


def test_help_and_an_unknown_command_load_every_role(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for word in (None, "--help", "nod"):
        parser = cli.build_parser(word)
        (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert sorted(commands.choices) == ROLES
    with pytest.raises(SystemExit) as exited:
        cli.main(["nod"])
    assert exited.value.code == 2
    assert "invalid choice: 'nod'" in capsys.readouterr().err
