"""The README's examples run as written."""

from __future__ import annotations

import re
import shlex
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


def test_identifier_check_examples_print_what_the_readme_shows(capsys):
    console = re.search(r"```console\n(.*?)```", README, flags=re.DOTALL)
    assert console is not None
    lines = console.group(1).splitlines()
    checked = 0
    for i, line in enumerate(lines):
        if line.startswith("$ samenloop identifier check"):
            args = shlex.split(line[2:])[1:]
            code = main(args)
            captured = capsys.readouterr()
            expected = lines[i + 1]
            if expected.startswith("samenloop: error:"):
                assert code == 1
                assert captured.err.strip() == expected
            else:
                assert code == 0
                assert captured.out.strip() == expected
            checked += 1
    assert checked == 3


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
