"""``make mutate``: mutation testing of the decision cores, each against its own tests.

Runs mutmut 3 (pinned in pyproject.toml) over one module at a time, with only
the test files that :data:`MODULES` names for it, and prints per module the
mutants, how many the tests killed, survived or timed out, how many no test
reaches, and the percentage killed. Exits 1 if a module falls below
:data:`MIN_KILLED`.

    python mutation/run.py                          # every module of MODULES
    python mutation/run.py policies/rules.py        # one (make mutate MODULE=...)
    python mutation/run.py --survivors policies/rules.py   # and the diff of each survivor

Why a staging tree: mutmut names a mutant after the module path of its file
(``node/disclosure/protocol.py`` -> ``node.disclosure``) and switches it on only inside
functions whose ``__module__`` is that name, but this project maps ``node/``
to ``samenloop.node`` through setuptools' package-dir (an import hook in the
editable install). So each module runs in ``.mutate/<module>/``, a copy of the
packages laid out as they import (``samenloop/node/...``) plus the tests;
mutmut copies that into ``mutants/``, puts it first on ``sys.path`` (ahead of
the editable hook), and every ``samenloop.*`` import then loads the mutated
copy. The working tree is never modified.

Machine manners (2 cores, shared): one mutant at a time (``--max-children
1``), one mutation run at a time on the machine (a lock in the temp
directory: a second run waits), and ``make mutate`` runs this under ``nice``.

Counting: *killed* means a test failed with the mutant switched on. A mutant
that no selected test reaches ("no tests") and one that timed out count as not
killed. mutmut mutates the bodies of functions and methods (also
``staticmethod``/``classmethod``), not module-level constants, class
attributes or other decorated functions (``@property``); see docs/mutation.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutate"

#: Each decision core and the test files that are its own: the one place this mapping lives.
MODULES: dict[str, tuple[str, ...]] = {
    "policies/rules.py": ("tests/test_rules.py",),
    "policies/policy.py": ("tests/test_policy.py", "tests/test_covenant.py"),
    "node/picture/arithmetic.py": ("tests/test_picture.py",),
    "node/tokens/threshold.py": ("tests/test_threshold.py",),
    "node/disclosure/protocol.py": ("tests/test_disclosure.py",),
    "broker/matching.py": (
        "tests/test_broker_matching.py",
        "tests/test_broker_matching_visibility.py",
    ),
}

#: The share of a module's mutants its tests must kill.
MIN_KILLED = 0.90

#: Where each source folder lives in the import layout (pyproject.toml's package-dir).
PACKAGES = {
    "node": "samenloop/node",
    "broker": "samenloop/broker",
    "policies": "samenloop/policies",
    "proto/samenloop/v1": "samenloop/v1",
}

#: mutmut's settings; test selection and the module to mutate are added per module.
_MUTMUT = """
[tool.mutmut]
source_paths = ["samenloop"]
only_mutate = [{module}]
pytest_add_cli_args_test_selection = [{tests}]
pytest_add_cli_args = ["-p", "no:cacheprovider"]
also_copy = ["docs"]
process_isolation = "forkserver"
use_git_change_detection = false
timeout_multiplier = 30.0
"""


@dataclass(frozen=True, slots=True)
class Figures:
    """One module's result."""

    module: str
    mutants: int
    killed: int
    survived: int
    timeouts: int
    no_tests: int
    other: int
    survivors: tuple[str, ...]
    seconds: float

    @property
    def share_killed(self) -> float:
        return self.killed / self.mutants if self.mutants else 1.0


def staged_path(module: str) -> str:
    """Where ``module`` sits in the import layout: ``node/picture/x.py`` ->
    ``samenloop/node/picture/x.py`` (the longest source folder it is under decides)."""
    for folder in sorted(PACKAGES, key=len, reverse=True):
        if module.startswith(folder + "/"):
            return f"{PACKAGES[folder]}/{module.removeprefix(folder + '/')}"
    raise SystemExit(f"{module} is in none of the source folders: {', '.join(PACKAGES)}")


def stage(module: str, tests: Sequence[str]) -> Path:
    """A fresh copy of the packages (as they import) and the tests, configured for ``module``."""
    work = WORK / module.replace("/", "-").removesuffix(".py")
    shutil.rmtree(work, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in PACKAGES.items():
        shutil.copytree(ROOT / source, work / target, ignore=ignore)
    for folder in ("tests", "docs"):  # a test may check a doc against the code
        shutil.copytree(ROOT / folder, work / folder, ignore=ignore)
    settings = _MUTMUT.format(
        module=json.dumps(staged_path(module)), tests=", ".join(json.dumps(t) for t in tests)
    )
    (work / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text(encoding="utf-8") + settings, encoding="utf-8"
    )
    return work


@contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine-wide mutation lock: other worktrees' runs wait for this one."""
    path = Path(tempfile.gettempdir()) / "samenloop-mutate.lock"
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another mutation run to finish ({path})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    """Run the venv's mutmut in ``work``; its output goes to ``log`` (or is returned)."""
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    # pytest keeps only the newest few numbered temporary directories of a temp root and
    # deletes older ones: a mutant a second makes thousands, so the runs get a root of
    # their own and cannot delete a test suite's directories running beside them.
    # A short path: the tests' node sockets live under it, and a Unix socket path has
    # at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="mu") as temp_root:
        env = {
            **os.environ,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTEST_DEBUG_TEMPROOT": temp_root,
        }
        if log is None:
            return subprocess.run(  # noqa: S603 - the venv's mutmut, fixed arguments
                command, cwd=work, env=env, check=True, capture_output=True, text=True
            ).stdout
        with log.open("w") as out:
            result = subprocess.run(  # noqa: S603 - the venv's mutmut, fixed arguments
                command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT
            )
    if result.returncode != 0:
        spinner = tuple("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
        lines = log.read_text(errors="replace").splitlines()
        tail = "\n".join([line for line in lines if not line.startswith(spinner)][-40:])
        raise SystemExit(f"mutmut failed in {work} (exit {result.returncode}); log {log}:\n{tail}")
    return ""


def run_module(module: str, *, show_survivors: bool) -> Figures:
    """Mutate one module against its own tests and count the outcomes."""
    from mutmut.stats import status_by_exit_code

    tests = MODULES[module]
    work = stage(module, tests)
    log = work / "mutmut.log"
    print(
        f"{module}: mutating against {', '.join(tests)} (log: {log.relative_to(ROOT)})", flush=True
    )
    started = time.monotonic()
    mutmut(work, "run", "--max-children", "1", log=log)
    seconds = time.monotonic() - started
    meta = work / "mutants" / f"{staged_path(module)}.meta"
    exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    status = {name: status_by_exit_code[code] for name, code in exit_codes.items()}
    counts = Counter(status.values())
    survivors = tuple(sorted(n for n, s in status.items() if s != "killed"))
    if show_survivors:
        for name in survivors:
            print(f"--- {status[name]}: {mutmut(work, 'show', name).strip()}\n")
    return Figures(
        module=module,
        mutants=len(status),
        killed=counts["killed"],
        survived=counts["survived"],
        timeouts=counts["timeout"],
        no_tests=counts["no tests"],
        other=len(status)
        - counts["killed"]
        - counts["survived"]
        - counts["timeout"]
        - counts["no tests"],
        survivors=tuple(f"{status[n]}: {n.rpartition('.')[2]}" for n in survivors),
        seconds=seconds,
    )


def print_table(results: Sequence[Figures]) -> None:
    header = (
        "module",
        "mutants",
        "killed",
        "survived",
        "timeouts",
        "no tests",
        "other",
        "killed %",
    )
    rows = [
        (
            f.module,
            str(f.mutants),
            str(f.killed),
            str(f.survived),
            str(f.timeouts),
            str(f.no_tests),
            str(f.other),
            f"{100 * f.share_killed:.1f}",
        )
        for f in results
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "modules", nargs="*", metavar="MODULE", help=f"any of: {', '.join(MODULES)} (default: all)"
    )
    parser.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(
            f"not a module of MODULES: {', '.join(unknown)}; use any of: {', '.join(MODULES)}"
        )
    modules = args.modules or list(MODULES)
    results: list[Figures] = []
    with machine_lock():
        for module in modules:
            figures = run_module(module, show_survivors=args.survivors)
            results.append(figures)
            print(
                f"{module}: {figures.killed}/{figures.mutants} killed "
                f"({100 * figures.share_killed:.1f}%) in {figures.seconds:.0f} s",
                flush=True,
            )
            for line in figures.survivors:
                print(f"    {line}")
    print()
    print_table(results)
    below = [f.module for f in results if f.share_killed < MIN_KILLED]
    if below:
        print(f"\nbelow {MIN_KILLED:.0%} killed: {', '.join(below)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
