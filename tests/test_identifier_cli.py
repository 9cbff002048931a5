"""``samenloop identifier check|types``: what a partner's data steward sees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from samenloop.node.identifiers import IdentifierType
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
