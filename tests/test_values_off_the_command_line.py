"""Values that may name a subject, read from a file or standard input instead of arguments.

Every account on a Linux host reads every process's arguments
(``/proc/PID/cmdline``, ``ps``), and the shell keeps them in its history. The
commands that take raw identifiers, details or free text that may name a
subject therefore also read them with ``--from FILE`` (``--from -``: standard
input), one ``NAME VALUE`` line each (:func:`samenloop.node.signals.commands.take_from`);
``signal add`` warns on stderr when raw values come as arguments. That another
account sees nothing of the ``--from`` form while the command runs is shown
through the real daemons in ``tests/attacks/test_local_user_more.py``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from samenloop.node.signals.commands import ARGUMENTS_ARE_VISIBLE, require_option, take_from
from samenloop.policies import cli
from samenloop.policies.errors import ConfigurationError

REQUEST = "0a" * 16


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8"))))


def test_signal_add_reads_identifiers_and_details_from_a_file(tmp_path: Path) -> None:
    values = tmp_path / "signal.txt"
    values.write_text(
        "# dossier 17\n"
        "id bsn=1234.56.782\n"
        "\n"
        "id\tkvk=01234567\n"
        "detail naam=Jürgen de Vries \n"
        "detail adres=Kerkstraat 1, Tilburg\r\n",
        encoding="utf-8",
    )
    args = parse("signal", "add", "--reference", "R", "--category", "c", "--from", str(values))
    take_from(args)
    assert args.ids == ["bsn=1234.56.782", "kvk=01234567"]
    # The value is the rest of the line as written (only the line end goes).
    assert args.detail == ["naam=Jürgen de Vries ", "adres=Kerkstraat 1, Tilburg"]


def test_lines_add_to_repeatable_options_and_fill_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _stdin(monkeypatch, "value 123456782\ndetail bron=BRP\n")
    args = parse(
        "signal", "add", "--reference", "R", "--category", "c", "--type", "bsn",
        "--id", "kvk=01234567", "--from", "-",
    )  # fmt: skip
    take_from(args)
    assert (args.ids, args.type, args.value, args.detail) == (
        ["kvk=01234567"],
        "bsn",
        "123456782",
        ["bron=BRP"],
    )


@pytest.mark.parametrize(
    ("argv", "text", "message"),
    [
        (
            ["disclosure", "deny", REQUEST, "--officer", "b", "--reason", "x"],
            "reason lopend onderzoek naar J. de Vries\n",
            "line 1: reason is given on the command line too",
        ),
        (
            ["disclosure", "deny", REQUEST, "--officer", "b"],
            "reason a\nreason b\n",
            "line 2: reason is given twice",
        ),
        (
            ["disclosure", "deny", REQUEST, "--officer", "b"],
            "123456782\n",
            "line 1 does not start with one of: reason (then a space and the value)",
        ),
        (
            ["disclosure", "deny", REQUEST, "--officer", "b"],
            "officer bd-teamleider-7\n",  # only the options that may name a subject
            "line 1 does not start with one of: reason (then a space and the value)",
        ),
    ],
)
def test_a_bad_line_is_refused_naming_the_line_never_its_value(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], text: str, message: str
) -> None:
    _stdin(monkeypatch, text)
    args = parse(*argv, "--from", "-")
    with pytest.raises(ConfigurationError) as caught:
        take_from(args)
    assert (caught.value.field, caught.value.message) == ("--from", message)
    assert "Vries" not in str(caught.value)
    assert "123456782" not in str(caught.value)


def test_a_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    args = parse("case", "close", "abcdef", "--officer", "a", "--from", str(tmp_path / "no"))
    with pytest.raises(ConfigurationError) as caught:
        take_from(args)
    assert caught.value.field == "--from"
    assert "No such file" in caught.value.message
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("outcome Jürgen\n".encode("latin-1"))
    args = parse("case", "close", "abcdef", "--officer", "a", "--from", str(latin))
    with pytest.raises(ConfigurationError) as caught:
        take_from(args)
    assert caught.value.message == "not UTF-8 text"


@pytest.mark.parametrize(
    ("argv", "name", "dest", "text"),
    [
        (["disclosure", "request", REQUEST, "--owner", "p", "--ref", REQUEST, "--purpose",
          "bibob", "--field", "naam", "--officer", "a"], "justification", "justification",
         "justification Bibob-toets Pizzeria Da Mario, eigenaar J. de Vries"),
        (["disclosure", "approve", REQUEST, "--officer", "b"], "note", "note", "note akkoord"),
        (["disclosure", "deny", REQUEST, "--officer", "b"], "reason", "reason",
         "reason lopend onderzoek"),
        (["case", "open", REQUEST, "--officer", "a"], "title", "title", "title Pizzeria Da Mario"),
        (["case", "act", "abcdef", "--owner", "g", "--type", "bestuurlijk", "--deadline",
          "2027-01-15", "--officer", "a"], "measure", "measure", "measure bibob-toets"),
        (["case", "act", "abcdef", "--owner", "g", "--type", "bestuurlijk", "--deadline",
          "2027-01-15", "--officer", "a", "--measure", "m"], "description", "description",
         "description huisbezoek bij J. de Vries"),
        (["case", "update", "abcdef", "123456", "--officer", "a"], "note", "note",
         "note gesprek gevoerd"),
        (["case", "close", "abcdef", "--officer", "a"], "outcome", "outcome",
         "outcome pand gesloten"),
    ],
)  # fmt: skip
def test_every_free_text_that_may_name_a_subject_can_come_from_stdin(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], name: str, dest: str, text: str
) -> None:
    _stdin(monkeypatch, text + "\n")
    args = parse(*argv, "--from", "-")
    take_from(args)
    assert getattr(args, dest) == text.removeprefix(name + " ")


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["disclosure", "deny", REQUEST, "--officer", "b"], "reason"),
        (["case", "open", REQUEST, "--officer", "a"], "title"),
        (["case", "act", "abcdef", "--owner", "g", "--type", "zorg", "--deadline", "2027-01-15",
          "--officer", "a"], "measure"),
        (["case", "close", "abcdef", "--officer", "a"], "outcome"),
    ],
)  # fmt: skip
def test_a_required_text_missing_from_both_places_is_refused_naming_the_option(
    argv: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(*argv)
    take_from(args)
    with pytest.raises(ConfigurationError) as caught:
        require_option(args, name)
    assert (caught.value.field, caught.value.message) == (
        f"--{name}",
        f"give --{name} (or a '{name}' line in --from)",
    )
    # Through the CLI: exit 2, before any call to a node.
    assert cli.main([*argv, "--socket", "/nonexistent/api.sock"]) == 2
    assert capsys.readouterr().err == (
        f"samenloop: error: --{name}: give --{name} (or a '{name}' line in --from)\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["signal", "add", "--help"],
        ["disclosure", "request", "--help"],
        ["case", "open", "--help"],
    ],
)
def test_the_help_says_that_arguments_are_visible_to_other_accounts(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: the sentence is not folded
    with pytest.raises(SystemExit):
        cli.main(argv)
    shown = capsys.readouterr().out
    assert "--from FILE" in shown
    assert "out of the process list that every account on this host reads" in shown
    if argv[0] == "signal":
        assert ARGUMENTS_ARE_VISIBLE in " ".join(shown.split())
    else:
        assert "as an argument other accounts on this host can read it" in shown


def test_the_docs_say_what_the_argument_form_exposes() -> None:
    """The argument form stays for convenience, documented rather than silently kept."""
    docs = Path(__file__).parents[1] / "docs"
    identifiers = " ".join((docs / "identifiers.md").read_text().split())
    assert "/proc/PID/cmdline" in identifiers
    assert "samenloop signal add --reference DOSSIER-17" in identifiers
    assert "--from -" in identifiers
    threat = " ".join((docs / "threat-model.md").read_text().split())
    assert "/proc/PID/cmdline" in threat
