"""How long a ``samenloop`` command takes to start, against the interpreter's own start.

``python bench/cli_start.py [--runs N]`` runs each command line N times (default 10) in a
fresh process and prints the mean wall time and the number of modules it imported, beside
``python -c pass`` (the bound: no command starts faster than the interpreter) and the
import of the ``samenloop`` entry point alone. The command lines are the ones issue 15
names: ``--help`` (every role's arguments), ``identifier check`` and ``--version``. No
node is needed. No timed assertion: ``tests/test_cli_imports.py`` counts the modules.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

#: Runs one command line and reports, on stderr's last line, how many modules it imported.
_COUNTED = """
import json, sys
from samenloop.policies import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(len(sys.modules)), file=sys.stderr)
"""

#: The console script as installed (``pip install -e .``), as a user runs it.
SAMENLOOP = str(Path(sys.executable).parent / "samenloop")

LINES: dict[str, list[str]] = {
    "python -c pass (the bound)": [sys.executable, "-c", "pass"],
    "import samenloop.policies.cli": [
        sys.executable,
        "-c",
        "from samenloop.policies import cli",
    ],
    "samenloop --help": [SAMENLOOP, "--help"],
    "samenloop identifier check bsn 111222333": [
        SAMENLOOP,
        "identifier",
        "check",
        "bsn",
        "111222333",
    ],
    "samenloop --version": [SAMENLOOP, "--version"],
}

_ARGV = {
    "samenloop --help": ["--help"],
    "samenloop identifier check bsn 111222333": ["identifier", "check", "bsn", "111222333"],
    "samenloop --version": ["--version"],
}


def _seconds(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def _modules(name: str) -> int | None:
    if name not in _ARGV:
        return None
    done = subprocess.run(
        [sys.executable, "-c", _COUNTED, *_ARGV[name]], capture_output=True, text=True, check=False
    )
    return int(json.loads(done.stderr.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command line (10)")
    args = parser.parse_args()
    table = Table(title=f"CLI start, mean of {args.runs} runs")
    for name in ("command line", "seconds", "stdev", "modules"):
        table.add_column(name, justify="left" if name == "command line" else "right")
    results = {}
    for name, argv in LINES.items():
        times = _seconds(argv, args.runs)
        modules = _modules(name)
        results[name] = {"mean_s": statistics.mean(times), "modules": modules}
        table.add_row(
            name,
            f"{statistics.mean(times):.3f}",
            f"{statistics.stdev(times):.3f}" if len(times) > 1 else "",
            "" if modules is None else str(modules),
        )
    Console().print(table)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
