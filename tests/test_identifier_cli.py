"""``samenloop identifier check|types``: what a partner's data steward sees."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from samenloop.node.identifiers.normalise import IdentifierType
from samenloop.policies.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["identifier", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("kind", "value", "canonical"),
    [
        ("bsn", "1112.22.333", "111222333"),
        ("address", "1234 ab 12-a", "1234AB 12 A"),
        ("kenteken", "12-abc-3", "12ABC3"),
        ("phone", "06-12345678", "+31612345678"),
        ("person", "Vries, J. de;15-03-1980", "vries|j|1980-03-15"),
        ("IBAN", "NL91 ABNA 0417 1643 00", "NL91ABNA0417164300"),
    ],
)
def test_check_prints_the_canonical_form(
    capsys: pytest.CaptureFixture[str], kind: str, value: str, canonical: str
) -> None:
    assert run(capsys, "check", kind, value) == (0, canonical + "\n", "")


def test_check_refuses_an_invalid_value_naming_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "bsn", "111222334")
    assert code == 1
    assert out == ""
    assert err == "samenloop: error: value: BSN fails the 11-test (elfproef)\n"
    assert "111222334" not in err


def test_check_refuses_an_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "postcode", "1234AB")
    assert code == 1
    assert out == ""
    assert err.startswith("samenloop: error: type: unknown identifier type; known types: bsn, ")


def test_check_json_success(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "--json", "email", " Jan@Example.NL ")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"type": "email", "canonical": "jan@example.nl"}


def test_check_json_error_keeps_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "address", "1234 SS 12", "--json")
    assert (code, err) == (1, "")
    result = json.loads(out)
    assert result["field"] == "value"
    assert result["reason"] == "address.postcode"
    assert "SS" in result["message"]


def test_check_json_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--json", "nope", "1")
    assert code == 1
    assert json.loads(out)["reason"] == "identifier.unknown_type"


def test_check_needs_type_and_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["identifier", "check", "bsn"])
    assert caught.value.code == 2
    assert "VALUE" in capsys.readouterr().err


def test_check_restores_a_dropped_zero_only_with_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "check", "bsn", "12345672")
    assert (code, out) == (1, "")
    assert "leading zeros restored" in err
    assert "12345672" not in err
    assert run(capsys, "check", "--leading-zero-dropped", "bsn", "12345672") == (
        0,
        "012345672\n",
        "",
    )


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


STDIN_VALUES = [
    "123456782",
    "1234.56.782",
    "123456789",
    "12345672",
    "",
    "BSN: 012345672",
]


def test_check_reads_one_value_per_line_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, "\n".join(STDIN_VALUES) + "\n")
    code, out, err = run(capsys, "check", "bsn", "-")
    assert code == 1
    assert out.splitlines() == [
        "123456782",
        "123456782",
        "error: bsn.check_digit: BSN fails the 11-test (elfproef)",
        "error: bsn.length: BSN must have 9 digits, not 8; if your spreadsheet dropped a "
        "leading zero, import this column with leading zeros restored",
        "error: bsn.empty: BSN is empty",
        "012345672",
    ]
    assert err == "samenloop: error: 3 of 6 values refused\n"
    errors = "".join(line for line in out.splitlines() if line.startswith("error:")) + err
    for refused in ("123456789", "12345672"):
        assert refused not in errors


def test_check_stdin_all_valid_exits_0(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, "1234 ab 12-a\r\n1234AB|12|A\r\n9999 zz 1 hs")  # no final newline
    assert run(capsys, "check", "address", "-") == (0, "1234AB 12 A\n1234AB 12 A\n9999ZZ 1 H\n", "")


def test_check_stdin_with_leading_zero_dropped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, "12345672\n123456782\n")
    assert run(capsys, "check", "--leading-zero-dropped", "bsn", "-") == (
        0,
        "012345672\n123456782\n",
        "",
    )


def test_check_stdin_json_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, "Vries, Jan de;1980-03-15\nMohammed El Amrani;1985-07-07\n")
    code, out, err = run(capsys, "check", "--json", "person", "-")
    assert code == 1
    assert err == "samenloop: error: 1 of 2 values refused\n"
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {"line": 1, "type": "person", "canonical": "vries|j|1980-03-15"}
    assert second["line"] == 2
    assert second["reason"] == "person.ambiguous"
    assert "Amrani" not in out


def test_check_stdin_needs_at_least_one_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, "")
    code, out, err = run(capsys, "check", "bsn", "-")
    assert (code, out) == (1, "")
    assert err == "samenloop: error: value: no values on standard input (expected one per line)\n"


def test_check_stdin_unknown_type_reads_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.StringIO("111222333\n")
    monkeypatch.setattr("sys.stdin", stdin)
    code, out, err = run(capsys, "check", "nope", "-")
    assert (code, out) == (1, "")
    assert err.startswith("samenloop: error: type: unknown identifier type")
    assert stdin.tell() == 0
    code, out, _ = run(capsys, "check", "--json", "nope", "-")
    assert code == 1
    assert json.loads(out)["reason"] == "identifier.unknown_type"


def test_types_lists_every_type_with_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "types")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == [t.value for t in IdentifierType]
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


def test_types_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "types", "--json")
    assert code == 0
    assert list(json.loads(out)) == [t.value for t in IdentifierType]


def _console_script() -> str:
    found = shutil.which("samenloop") or str(Path(sys.executable).parent / "samenloop")
    if not Path(found).exists():
        pytest.fail("the samenloop console script is not installed (pip install -e '.[dev]')")
    return found


def test_installed_console_script() -> None:
    script = _console_script()
    ok = subprocess.run(
        [script, "identifier", "check", "address", "1234 ab 12-a"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "1234AB 12 A\n", "")

    refused = subprocess.run(
        [script, "identifier", "check", "iban", "NL92 ABNA 0417 1643 00"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        "samenloop: error: value: IBAN fails the mod-97 check (check digits do not match)\n"
    )


def test_installed_console_script_reads_stdin() -> None:
    checked = subprocess.run(
        [_console_script(), "identifier", "check", "kenteken", "-"],
        input="ab-123-c\n12-ABC-3\nAB-12\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        "AB123C",
        "12ABC3",
        "error: kenteken.length: kenteken must have 6 letters and digits, not 4",
    ]
    assert checked.stderr == "samenloop: error: 1 of 3 values refused\n"
