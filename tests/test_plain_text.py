"""Other parties' text is shown as text: no markup, no terminal controls, no formulas.

Unit tests of :mod:`samenloop.policies.terminal`, :mod:`samenloop.policies.spreadsheet`
and :func:`samenloop.policies.rules.received_categories`, and the commands that
show cases, disclosures and the picture, run through ``samenloop.policies.cli``
against a client that returns hostile text (``hits list``/``watch`` run against
a real node API in ``tests/test_node_cli.py``; the daemons in
``tests/attacks/test_hostile_text.py``).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.table import Table

from samenloop.node.cases import commands as case_commands
from samenloop.node.cases.machine import ActionStatus, CaseState, ChangeKind, InterventionType
from samenloop.node.client import (
    Case,
    CaseAction,
    CaseBoardEntry,
    CaseHistoryEntry,
    Disclosure,
    OfficerDecision,
    Picture,
    PictureRefusalNote,
)
from samenloop.node.disclosure import commands as disclosure_commands
from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
from samenloop.node.picture import commands as picture_commands
from samenloop.node.picture.arithmetic import (
    CellQuality,
    Dimension,
    Measure,
    Period,
    ReleasedCell,
    ReleasedTable,
)
from samenloop.node.provision import PartySpec, provision
from samenloop.policies import cli, rules, spreadsheet, terminal
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.terminal import printable

ROOT = Path(__file__).parents[1]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

BOLD_CLOSE = "[/bold]"
LINK_MARKUP = "[link=https://evil.example]x[/link]"
OSC8_LINK = "\x1b]8;;https://evil.example\x1b\\x\x1b]8;;\x1b\\"
FORMULA = '=HYPERLINK("https://evil.example","klik")'
#: Each hostile text, and how it must show: markup literally, controls as escapes.
HOSTILE = {
    BOLD_CLOSE: BOLD_CLOSE,
    LINK_MARKUP: LINK_MARKUP,
    OSC8_LINK: "\\x1b]8;;https://evil.example\\x1b\\x\\x1b]8;;\\x1b\\",
    FORMULA: FORMULA,
}
SAFE_OUTPUT = re.compile(r"\x1b\[[0-9;]*m")  # the only escapes a command may write: SGR


def unsafe(text: str) -> list[str]:
    """The characters of ``text``, other than newlines, that a terminal would act on."""
    return [c for c in text if c != "\n" and not terminal.is_safe(c)]


def escapes_left(output: str) -> list[str]:
    """What remains of terminal control once the commands' own colours are taken out."""
    return unsafe(SAFE_OUTPUT.sub("", output))


# --- printable ------------------------------------------------------------------------------

#: Pieces of markup, emoji codes and escape sequences, mixed with any text.
FRAGMENTS = ["[", "]", "/", "[/]", "bold", "[link=", "https://e.example", ":smile:", "\x1b", "]8;;"]
hostile_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=12).map("".join),
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("vastgoedmisbruik", "vastgoedmisbruik"),
        ("Gemeente 's-Hertogenbosch, één", "Gemeente 's-Hertogenbosch, één"),
        ("\x1b[31mrood", "\\x1b[31mrood"),
        ("a\rb\nc\td\x00e\x7f", "a\\x0db\\x0ac\\x09d\\x00e\\x7f"),
        ("\x9b31m", "\\x9b31m"),  # C1: CSI in one byte
        ("admin\u202egnp.exe", "admin\\u202egnp.exe"),  # bidi override
        ("\u2066x\u2069 \u200bz\ufeff", "\\u2066x\\u2069 \\u200bz\\ufeff"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("\ud800", "\\ud800"),  # a lone surrogate would not even encode
        (BOLD_CLOSE, BOLD_CLOSE),
        (":smile: 🙂", ":smile: 🙂"),
    ],
)
def test_printable_escapes_exactly_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown


@given(hostile_text)
@settings(deadline=None)  # timing is for benchmarks; two shared cores vary
def test_no_control_survives_printable(text: str) -> None:
    shown = printable(text)
    assert [c for c in shown if unicodedata.category(c) in terminal.UNSAFE_CATEGORIES] == []
    if all(terminal.is_safe(c) for c in text):
        assert shown == text  # text that is safe is left alone


@given(hostile_text)
@settings(max_examples=200, deadline=None)
def test_the_console_shows_printable_text_verbatim(text: str) -> None:
    """No markup, emoji code or highlighting: what is printed is the text itself."""
    out = io.StringIO()
    terminal.console(file=out, width=100_000).print(printable(text), soft_wrap=True)
    assert out.getvalue() == printable(text) + "\n"


@given(st.lists(hostile_text, min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_no_control_survives_a_table(cells: list[str]) -> None:
    out = io.StringIO()
    table = Table(title=printable(cells[0]))
    for _ in cells:
        table.add_column("c", overflow="fold")
    table.add_row(*(printable(c) for c in cells))
    terminal.console(file=out, width=60).print(table)
    assert unsafe(out.getvalue()) == []


def test_markup_in_a_table_is_shown_literally() -> None:
    out = io.StringIO()
    table = Table(title=BOLD_CLOSE)
    table.add_column(LINK_MARKUP)
    table.add_row(printable(OSC8_LINK))
    terminal.console(file=out, width=200).print(table)
    for shown in (BOLD_CLOSE, LINK_MARKUP, HOSTILE[OSC8_LINK]):
        assert shown in out.getvalue()
    assert "\x1b" not in out.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values, st.sampled_from([None, 2]))
@settings(deadline=None)
def test_dumps_is_the_same_json_with_nothing_raw(value: Any, indent: int | None) -> None:
    text = terminal.dumps(value, indent=indent)
    assert json.loads(text) == value
    assert unsafe(text) == []


def test_dumps_keeps_readable_text_and_escapes_controls() -> None:
    text = terminal.dumps({"naam": "één", "x": "\x9b\u202e\U000e0041"})
    assert text == '{"naam": "één", "x": "\\u009b\\u202e\\udb40\\udc41"}'


# --- received categories ------------------------------------------------------------------


def test_only_the_covenants_categories_are_shown_the_rest_counted(example: Covenant) -> None:
    opened = ["woonfraude", BOLD_CLOSE, "katvanger", "", "woonfraude", BOLD_CLOSE, "WOONFRAUDE"]
    checked = rules.received_categories(example, opened)
    assert checked == rules.ReceivedCategories(("woonfraude", "katvanger"), 3)
    assert rules.received_categories(example, []) == rules.ReceivedCategories((), 0)
    assert rules.received_categories(example, ["x"] * 3) == rules.ReceivedCategories((), 1)


@pytest.fixture
def example(tmp_path: Path) -> Covenant:
    specs = [PartySpec("gemeente", "Gemeente", Role.GEMEENTE), PartySpec("riec", "RIEC", Role.RIEC)]
    return provision(tmp_path, "riec-plain", specs, ["gemeente", "riec"], 2, now=NOW).covenant


# --- spreadsheets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+31 6", "'+31 6"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        (FORMULA, "'" + FORMULA),
        ("BSN nummer", "BSN nummer"),
        ("a=1", "a=1"),
        ("'=1", "'=1"),
        ("", ""),
        (None, ""),
        (3, 3),
        (-2, -2),
        (1.5, 1.5),
    ],
)
def test_a_cell_that_a_spreadsheet_would_run_gets_a_quote(value: Any, written: Any) -> None:
    assert spreadsheet.cell(value) == written


ROWS: list[list[Any]] = [[2, FORMULA, "signal.reason", "@cmd|' /C calc'!A0"], [3, "BSN", "r", "-"]]


def test_csv_written_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    spreadsheet.write_csv(path, ["row", "=column"], ROWS, field="--report")
    with path.open(newline="", encoding="utf-8") as handle:
        read = list(csv.reader(handle))
    assert read == [
        ["row", "'=column"],
        ["2", "'" + FORMULA, "signal.reason", "'@cmd|' /C calc'!A0"],
        ["3", "BSN", "r", "'-"],
    ]


def test_xlsx_written_and_read_back_as_text_never_formulas(tmp_path: Path) -> None:
    path = tmp_path / "report.xlsx"
    spreadsheet.write_table(path, ["row", "=column"], [*ROWS, [4, "a\x1bb", "", None]], field="f")
    sheet = openpyxl.load_workbook(path).worksheets[0]
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert values == [
        ["row", "'=column", None, None],
        [2, "'" + FORMULA, "signal.reason", "'@cmd|' /C calc'!A0"],
        [3, "BSN", "r", "'-"],
        [4, "a\\x1bb", None, None],
    ]
    types = {c.data_type for row in sheet.iter_rows() for c in row if c.value is not None}
    assert types == {"n", "s"}  # never "f"


def test_a_report_that_cannot_be_written_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as csv_error:
        spreadsheet.write_table(tmp_path / "no" / "r.csv", ["a"], [], field="--report")
    with pytest.raises(ConfigurationError) as xlsx_error:
        spreadsheet.write_table(tmp_path / "no" / "r.xlsx", ["a"], [], field="--report")
    assert csv_error.value.field == xlsx_error.value.field == "--report"


# --- the commands ----------------------------------------------------------------------------


def _action(text: str, n: int) -> CaseAction:
    return CaseAction(
        action_id=bytes([n]) * 16,
        owner=text,
        intervention_type=InterventionType.BESTUURLIJK,
        measure=text,
        description=text,
        deadline=NOW - timedelta(days=1),
        status=ActionStatus.PLANNED,
        note=text,
        updated_at=NOW,
        updated_by=text,
    )


def _case(text: str, n: int) -> Case:
    return Case(
        case_id=bytes([n]) * 16,
        title=text,
        coordinator=text,
        hit_group_id=b"\x09" * 16,
        state=CaseState.CLOSED,
        members=(text, "riec"),
        actions=(_action(text, n),),
        opened_at=NOW,
        closed_at=NOW,
        outcome=text,
        history=(CaseHistoryEntry(NOW, text, text, ChangeKind.OPEN, text),),
    )


def _disclosure(text: str) -> Disclosure:
    return Disclosure(
        request_id=b"\x0a" * 16,
        direction=DisclosureDirection.OUTGOING,
        state=DisclosureState.GRANTED,
        requester="gemeente",
        owner=text,
        hit_group_id=b"\x09" * 16,
        signal_ref=b"\x08" * 16,
        signal_id=None,
        purpose=text,
        requested_fields=(text,),
        requester_officer=text,
        justification=text,
        released_fields={text: text, "naam": ""},
        withheld_fields=(text,),
        refusal_reason=None,
        refusal_message=text,
        decisions=(OfficerDecision(text, True, text, NOW),),
        requested_at=NOW,
        decided_at=NOW,
    )


def _picture(text: str) -> Picture:
    period = Period("2026-10", "2026-10")
    cell = ReleasedCell(("woonfraude",), 12, CellQuality.EXACT)
    table = ReleasedTable(
        Measure.ACTIVE_SIGNALS, (Dimension.CATEGORY,), period, (("woonfraude",),), (cell,), 5
    )
    return Picture(table, (text,), (text,), (PictureRefusalNote(text, "not_allowed", text),))


@dataclass
class FakeClient:
    """What the commands ask a node for, answered with hostile text."""

    text: str
    cases_: list[Case] = field(default_factory=list)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cases(self, state: object = None) -> list[Case]:
        return self.cases_

    def case(self, case_id: bytes) -> Case:
        return next(c for c in self.cases_ if c.case_id == case_id)

    def case_board(self, *, overdue_only: bool = False) -> list[CaseBoardEntry]:
        return [CaseBoardEntry(c.case_id, c.title, c.actions[0], True) for c in self.cases_]

    def disclosure(self, request_id: bytes) -> Disclosure:
        return _disclosure(self.text)

    def disclosures(self, *args: object, **kw: object) -> list[Disclosure]:
        return [_disclosure(self.text)]

    def picture_show(self, *args: object, **kw: object) -> Picture:
        return _picture(self.text)


@pytest.fixture(params=list(HOSTILE), ids=["bold", "link", "osc8", "formula"])
def hostile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    """Each command module's client, answering with one hostile text; a wide terminal
    that takes colours, so that the commands' own styles are written as escapes too."""
    client = FakeClient(request.param, [_case(request.param, 1), _case("gewoon", 2)])
    for module in (case_commands, disclosure_commands, picture_commands):
        monkeypatch.setattr(module, "open_client", lambda args: client)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("FORCE_COLOR", "1")
    return client


COMMANDS = [
    ["case", "list"],
    ["case", "show", "01" * 16],
    ["case", "board"],
    ["disclosure", "show", "0a" * 16],
    ["disclosure", "list"],
    ["disclosure", "pending"],
    ["picture", "show", "--period", "2026-10", "--by", "category", "--wait", "0"],
]


def _expected_code(argv: list[str]) -> int:
    """0, except ``picture show``: its picture lists a party's refusal, and a picture that
    lacks a party's counts exits with ``EXIT_REFUSED`` (5)."""
    return picture_commands.EXIT_REFUSED if argv[:2] == ["picture", "show"] else 0


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_commands_show_hostile_text_as_text(
    hostile: FakeClient, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main([*argv, "--socket", "/nonexistent"])
    out, err = capsys.readouterr()
    assert (code, err) == (_expected_code(argv), "")
    assert HOSTILE[hostile.text] in out
    assert escapes_left(out) == []
    assert "\x1b]" not in out  # no OSC (hyperlinks, titles) at all


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_commands_json_keeps_hostile_text_exact(
    hostile: FakeClient, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main([*argv, "--json", "--socket", "/nonexistent"])
    out, _ = capsys.readouterr()
    assert code == _expected_code(argv)
    assert hostile.text in set(strings(json.loads(out)))  # exactly as the party wrote it
    assert unsafe(out) == []


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)


# --- the rule that keeps it so -------------------------------------------------------------

COMMAND_MODULES = sorted(
    [*(ROOT / "node").glob("*_commands.py"), ROOT / "policies" / "audit_commands.py"]
)


@pytest.mark.parametrize("path", COMMAND_MODULES, ids=lambda p: p.name)
def test_commands_print_through_the_plain_text_console(path: Path) -> None:
    """No command module makes its own rich Console, turns markup on, or writes JSON
    with raw non-ASCII controls: each goes through :mod:`samenloop.policies.terminal`."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "rich.console":
            found.append(f"line {node.lineno}: imports rich.console")
        if isinstance(node, ast.keyword) and node.arg in ("markup", "emoji", "ensure_ascii"):
            found.append(f"line {node.value.lineno}: {node.arg}=")
    assert found == []
