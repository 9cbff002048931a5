"""The README's set-up by hand runs as written, with the CLI alone, up to a first hit.

The commands and configuration files are read out of the README's section "Running a broker
and a node for real" (its ``console`` and ``toml`` blocks before "Files and accounts"), so
that the README and this test cannot drift apart: every ``$ samenloop ...`` line runs with
the console script in one empty directory, ``serve`` lines start daemons, and the only
changes are the broker's address (``localhost`` and a free port for the README's host and
port 7443) and the second node's ``node.toml``, which the README derives from the first.
Then each node imports a signal with the same identifier through the CLI, and both see the
hit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from samenloop.node.provision import free_port

from daemons import READY_MARKERS, START_SECONDS, wait_until

README = Path(__file__).parents[1] / "README.md"
SECTION = "## Running a broker and a node for real"
SECTION_END = "**Files and accounts.**"
#: The broker's address as the README gives it, and its port.
README_HOST = "broker.riec.example"
README_PORT = "7443"
COMMAND_SECONDS = 120
HIT_SECONDS = 90


@dataclass
class SetUp:
    """The README's set-up: commands in order, configuration files by name."""

    commands: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def read_set_up(text: str) -> SetUp:
    """The ``$`` commands (continuation lines joined) and the ``toml`` files of the section;
    a ``toml`` block's file is the first ``*.toml`` the text before it names."""
    start = text.index(SECTION)
    section = text[start : text.index(SECTION_END, start)]
    set_up = SetUp()
    previous_end = 0
    block = re.compile(r"^( *)```(console|toml)\n(.*?)^\1```", flags=re.MULTILINE | re.DOTALL)
    for match in block.finditer(section):
        indent, kind, body = match.groups()
        lines = [line.removeprefix(indent) for line in body.splitlines()]
        if kind == "toml":
            before = section[previous_end : match.start()]
            names = re.findall(r"`([\w./-]+\.toml)`", before)
            assert names, f"no file named before the toml block at {before[-80:]!r}"
            set_up.files[names[0]] = "".join(f"{line}\n" for line in lines)
        else:
            joined = "\n".join(lines).replace("\\\n", " ")
            for line in joined.splitlines():
                assert line.startswith("$ "), f"a set-up block shows commands only: {line!r}"
                set_up.commands.append(line[2:])
        previous_end = match.end()
    derived = re.search(r"`(\w+)/node\.toml` is the same with `(\w+)` for `(\w+)`", section)
    assert derived is not None, "the README says how the second node.toml differs"
    target, new, old = derived.groups()
    set_up.files[f"{target}/node.toml"] = set_up.files[f"{old}/node.toml"].replace(old, new)
    return set_up


def samenloop() -> list[str]:
    """The console script beside this interpreter (``python -m`` if it is not installed)."""
    script = shutil.which("samenloop", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "samenloop.policies.cli"]


@dataclass
class Site:
    """The directory the README's commands run in, and the daemons they started."""

    root: Path
    port: int
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def localise(self, text: str) -> str:
        return text.replace(README_HOST, "localhost").replace(README_PORT, str(self.port))

    def run(self, *words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*samenloop(), *words],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )

    def ok(self, *words: str) -> str:
        result = self.run(*words)
        assert result.returncode == 0, (
            f"samenloop {shlex.join(words)} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
        return result.stdout

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, process in self.daemons.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")

    def serve(self, words: list[str]) -> None:
        """Start ``samenloop broker|node serve ...`` and wait until its log says it serves."""
        name = Path(words[-1]).parent.name  # the directory of its configuration
        with (self.root / f"{name}.log").open("ab") as log:
            self.daemons[name] = subprocess.Popen(
                [*samenloop(), *words],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        marker = READY_MARKERS[words[0]].decode()
        wait_until(
            lambda: marker in self.log(name),
            START_SECONDS,
            f"{name} serving ({marker!r} in its log)",
            check=self.check_alive,
        )

    def stop_all(self) -> None:
        for process in self.daemons.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = Site(root=tmp_path / "s", port=free_port())
    site.root.mkdir()
    try:
        yield site
    finally:
        site.stop_all()


def test_the_readme_marks_out_a_whole_set_up():
    """The parse finds every step, so that a README rewritten in another shape fails here
    rather than running half a set-up."""
    set_up = read_set_up(README.read_text())
    firsts = [" ".join(shlex.split(c, comments=True)[:3]) for c in set_up.commands]
    for needed in (
        "samenloop node keygen",
        "samenloop covenant signer-keygen",
        "samenloop keyholder deal",
        "samenloop keyholder accept",
        "samenloop covenant ca-init",
        "samenloop covenant init",
        "samenloop covenant sign",
        "samenloop covenant timestamp",
        "samenloop covenant issue-certs",
        "samenloop broker migrate",
        "samenloop broker serve",
        "samenloop node migrate",
        "samenloop node serve",
    ):
        assert needed in firsts, needed
    assert firsts.count("samenloop node serve") == 2
    assert sorted(set_up.files) == ["broker/broker.toml", "politie/node.toml", "riec/node.toml"]
    assert 'party = "riec"' in set_up.files["riec/node.toml"]


def test_readme_set_up_by_hand_reaches_a_first_hit(site: Site):
    set_up = read_set_up(README.read_text())
    for name, text in set_up.files.items():
        path = site.root / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(site.localise(text))
    for command in set_up.commands:
        words = shlex.split(site.localise(command), comments=True)
        assert words[0] == "samenloop", f"the set-up uses the CLI alone: {command!r}"
        if words[2:3] == ["serve"]:
            site.serve(words[1:])
        else:
            site.ok(*words[1:])
    assert set(site.daemons) == {"broker", "riec", "politie"}

    # A signal with the same BSN at each node: one imported from a CSV file, one added.
    (site.root / "signalen.csv").write_text("Dossier,BSN\nPOL-17,1234.56.782\n")
    site.ok(
        "signal", "import", "signalen.csv", "--node", "politie/node.toml", "--map", "bsn=BSN",
        "--reference-column", "Dossier", "--category", "vastgoedmisbruik",
    )  # fmt: skip
    (site.root / "dossier.txt").write_text("id bsn=123456782\n")
    site.ok(
        "signal", "add", "--reference", "RIEC-3", "--category", "vastgoedmisbruik",
        "--from", "dossier.txt", "--node", "riec/node.toml",
    )  # fmt: skip

    seen: dict[str, list[dict[str, Any]]] = {}

    def hits(party: str) -> list[dict[str, Any]]:
        listed = json.loads(site.ok("hits", "list", "--json", "--node", f"{party}/node.toml"))
        seen[party] = listed
        return list(listed)

    others = {"riec": "politie", "politie": "riec"}
    wait_until(
        lambda: all(hits(p) for p in others),
        HIT_SECONDS,
        lambda: f"a hit at both nodes; listed so far: {seen}",
        check=site.check_alive,
        interval=0.5,
    )
    for party, other in others.items():
        (hit,) = seen[party]
        assert hit["party_count"] == 2
        assert [m["party"] for m in hit["members"]] == [other]
        (own,) = hit["own_signals"]
        assert own["reference"] == {"riec": "RIEC-3", "politie": "POL-17"}[party]
