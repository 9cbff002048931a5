"""The README's examples run as written."""

from __future__ import annotations

import io
import re
import shlex
import sys
from pathlib import Path

from samenloop.policies.cli import main

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    commands = re.findall(r"^make (\w+)", README, flags=re.MULTILINE)
    assert commands[:2] == ["demo", "test"]


def test_tokenising_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    (block,) = [b for b in blocks if "tokenise_in_process" in b]
    exec(compile(block, "README.md", "exec"), {})  # the example asserts t1 == t2 itself


def test_identifier_check_examples_print_what_the_readme_shows(capsys, monkeypatch):
    """Each ``$`` line of the first console block, with what follows it up to the next as its
    output: ``cat FILE`` gives a file's lines, ``identifier check ... - < FILE`` reads them on
    standard input, ``echo $?`` is the last exit code; ``samenloop: error:`` lines are stderr."""
    console = re.search(r"```console\n(.*?)```", README, flags=re.DOTALL)
    assert console is not None
    steps: list[tuple[str, list[str]]] = []
    for line in console.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].split("  #")[0].strip(), []))
        else:
            steps[-1][1].append(line)
    files: dict[str, str] = {}
    code = None
    checked = 0
    for command, shown in steps:
        words = shlex.split(command)
        if words[0] == "cat":
            files[words[1]] = "".join(f"{line}\n" for line in shown)
            continue
        if words[:2] == ["echo", "$?"]:
            assert shown == [str(code)]
            continue
        assert words[:3] == ["samenloop", "identifier", "check"]
        if words[-2] == "<":
            stdin = io.TextIOWrapper(io.BytesIO(files[words[-1]].encode()))
            monkeypatch.setattr(sys, "stdin", stdin)
            words = words[:-2]
        code = main(words[1:])
        captured = capsys.readouterr()
        errors = [line for line in shown if line.startswith("samenloop: error:")]
        assert captured.out.splitlines() == [line for line in shown if line not in errors]
        assert captured.err.splitlines() == errors
        assert code == (1 if errors else 0)
        checked += 1
    assert checked == 2


def test_the_project_stands_alone():
    """No README, doc, code or test points into the steering repository beside the clone:
    what the project needs of the design lives in its own docs/."""
    root = Path(__file__).parents[1]
    outside = "../" + "shared"  # spelled apart so that this test does not find itself
    offenders = [
        str(path.relative_to(root))
        for folder in ("docs", "node", "broker", "policies", "proto", "tests", "bench", ".ci")
        for path in (root / folder).rglob("*")
        if path.is_file()
        and path.suffix in {".md", ".py", ".proto", ".toml", ""}
        and outside in path.read_text(errors="replace")
    ]
    offenders += [
        name
        for name in ("README.md", "Makefile", "pyproject.toml")
        if outside in (root / name).read_text()
    ]
    assert offenders == []
