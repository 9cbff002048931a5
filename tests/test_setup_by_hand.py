"""The README's set-up by hand runs as written, with the CLI alone, up to a first hit,
and so does its new covenant version with a new attribute key.

The commands and configuration files are read out of the README's section "Running a broker
and a node for real" (its ``console`` and ``toml`` blocks of steps 1 to 6, before "Files and
accounts", and the ``console`` block of step 9), so that the README and this test cannot drift
apart: every ``$ samenloop ...`` line runs with the console script in one empty directory,
``serve`` lines start daemons, and the only changes are the broker's address (``localhost``
and a free port for the README's host and port 7443) and the second node's ``node.toml``,
which the README derives from the first. Each node imports a signal with the same identifier
through the CLI, and both see the hit; after step 9 a second pair of signals makes a hit whose
categories both read under the new attribute key.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
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
#: Where the set-up's steps (1 to 6) end, and where the new covenant version's (9) are.
SET_UP_END = "**Files and accounts.**"
NEW_VERSION = ("9. **A new covenant version**", "10. **Audit**")
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


def read_blocks(section: str) -> SetUp:
    """The ``$`` commands (continuation lines joined) and the ``toml`` files of ``section``;
    a ``toml`` block's file is the first ``*.toml`` the text before it names."""
    found = SetUp()
    previous_end = 0
    block = re.compile(r"^( *)```(console|toml)\n(.*?)^\1```", flags=re.MULTILINE | re.DOTALL)
    for match in block.finditer(section):
        indent, kind, body = match.groups()
        lines = [line.removeprefix(indent) for line in body.splitlines()]
        if kind == "toml":
            before = section[previous_end : match.start()]
            names = re.findall(r"`([\w./-]+\.toml)`", before)
            assert names, f"no file named before the toml block at {before[-80:]!r}"
            found.files[names[0]] = "".join(f"{line}\n" for line in lines)
        else:
            joined = "\n".join(lines).replace("\\\n", " ")
            for line in joined.splitlines():
                assert line.startswith("$ "), f"a set-up block shows commands only: {line!r}"
                found.commands.append(line[2:])
        previous_end = match.end()
    return found


def between(text: str, start: str, end: str) -> str:
    """The README's section from ``start`` up to ``end``."""
    at = text.index(start, text.index(SECTION))
    return text[at : text.index(end, at)]


def read_set_up(text: str) -> SetUp:
    """Steps 1 to 6, with the second node's ``node.toml`` made as the README says."""
    section = between(text, SECTION, SET_UP_END)
    set_up = read_blocks(section)
    derived = re.search(r"`(\w+)/node\.toml` is the same with `(\w+)` for `(\w+)`", section)
    assert derived is not None, "the README says how the second node.toml differs"
    target, new, old = derived.groups()
    set_up.files[f"{target}/node.toml"] = set_up.files[f"{old}/node.toml"].replace(old, new)
    return set_up


def read_new_version(text: str) -> list[str]:
    """Step 9's commands: a new covenant version with a new attribute key, published."""
    found = read_blocks(between(text, *NEW_VERSION))
    assert not found.files
    return found.commands


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

    def run_readme(self, commands: list[str]) -> None:
        """Run README commands: ``serve`` lines as daemons, the others to a good end."""
        for command in commands:
            words = shlex.split(self.localise(command), comments=True)
            assert words[0] == "samenloop", f"the set-up uses the CLI alone: {command!r}"
            if words[2:3] == ["serve"]:
                self.serve(words[1:])
            else:
                self.ok(*words[1:])

    def hits(self, party: str) -> list[dict[str, Any]]:
        listed = json.loads(self.ok("hits", "list", "--json", "--node", f"{party}/node.toml"))
        assert isinstance(listed, list)
        return listed

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
    text = README.read_text()
    set_up = read_set_up(text)
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
    later = [" ".join(shlex.split(c, comments=True)[:3]) for c in read_new_version(text)]
    assert "samenloop covenant rotate-attribute-key" in later
    assert later[-1] == "samenloop covenant publish"


def wait_for_hit(site: Site, references: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Wait until each node lists a hit on its signal ``references[party]``; those hits."""
    found: dict[str, dict[str, Any]] = {}
    listed: dict[str, list[dict[str, Any]]] = {}

    def both() -> bool:
        for party, reference in references.items():
            listed[party] = site.hits(party)
            for hit in listed[party]:
                if [o["reference"] for o in hit["own_signals"]] == [reference]:
                    found[party] = hit
        return set(found) == set(references)

    wait_until(
        both,
        HIT_SECONDS,
        lambda: f"a hit on {references} at both nodes; listed so far: {listed}",
        check=site.check_alive,
        interval=0.5,
    )
    return found


def add_signal(site: Site, party: str, reference: str, bsn: str) -> None:
    (site.root / f"{reference}.txt").write_text(f"id bsn={bsn}\n")
    site.ok(
        "signal", "add", "--reference", reference, "--category", "vastgoedmisbruik",
        "--from", f"{reference}.txt", "--node", f"{party}/node.toml",
    )  # fmt: skip


def covenant_version(site: Site, party: str) -> int:
    shown = site.run("node", "status", "--json", "--node", f"{party}/node.toml")
    assert shown.returncode in (0, 3), shown.stderr  # 3: running, not connected (yet)
    status = json.loads(shown.stdout)
    return int(status["covenant_version"])


def test_readme_set_up_by_hand_reaches_a_first_hit(site: Site):
    text = README.read_text()
    set_up = read_set_up(text)
    for name, content in set_up.files.items():
        path = site.root / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(site.localise(content))
    site.run_readme(set_up.commands)
    assert set(site.daemons) == {"broker", "riec", "politie"}
    # Every secret the commands wrote is the owner's alone (the daemons check the ones they
    # read; the CA's and the administrators' keys no daemon reads).
    secrets = [
        "ca/ca.key", "admin/beheer-riec.json", "admin/ts-key.json", "broker/signing-keys.json",
        "broker/tls.key", *(f"{p}/{f}" for p in ("riec", "politie")
                            for f in ("party-keys.json", "tls.key", "key-share.json")),
    ]  # fmt: skip
    modes = {name: stat.S_IMODE((site.root / name).stat().st_mode) for name in secrets}
    assert modes == dict.fromkeys(secrets, 0o600)
    assert stat.S_IMODE((site.root / "ca").stat().st_mode) == 0o700
    others = {"riec": "politie", "politie": "riec"}

    # A signal with the same BSN at each node: one imported from a CSV file, one added.
    (site.root / "signalen.csv").write_text("Dossier,BSN\nPOL-17,1234.56.782\n")
    site.ok(
        "signal", "import", "signalen.csv", "--node", "politie/node.toml", "--map", "bsn=BSN",
        "--reference-column", "Dossier", "--category", "vastgoedmisbruik",
    )  # fmt: skip
    add_signal(site, "riec", "RIEC-3", "123456782")
    first = wait_for_hit(site, {"riec": "RIEC-3", "politie": "POL-17"})
    for party, hit in first.items():
        assert hit["party_count"] == 2
        # the other's category opens: the attribute key 'covenant init' sealed to each party
        assert [(m["party"], m["categories"]) for m in hit["members"]] == [
            (others[party], ["vastgoedmisbruik"])
        ]

    # Step 9: a new attribute key in covenant version 2, signed and published by the CLI.
    site.run_readme(read_new_version(text))
    wait_until(
        lambda: all(covenant_version(site, p) == 2 for p in others),
        HIT_SECONDS,
        "both nodes on covenant version 2",
        check=site.check_alive,
        interval=0.5,
    )
    add_signal(site, "riec", "RIEC-4", "111222333")
    add_signal(site, "politie", "POL-18", "111222333")
    second = wait_for_hit(site, {"riec": "RIEC-4", "politie": "POL-18"})
    for party, hit in second.items():
        assert hit["group_id"] != first[party]["group_id"]
        assert [(m["party"], m["categories"]) for m in hit["members"]] == [
            (others[party], ["vastgoedmisbruik"])
        ]
