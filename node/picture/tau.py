"""The exact cube's complementary suppression by τ-Argus (pytauargus), in a child process.

Why τ-Argus: ``make bench-linked`` protects the same cubes with the project's own
complementary suppression (``picture._complement``) and with τ-Argus; on the 4-D cube
(area, branch, category and month) τ-Argus's modular method (HiTaS on HiGHS) gives up 8 %
fewer cells and 27 % less value with every protection interval at least a third of the
cell's value (docs/picture.md). So the RIEC's node hands the exact cube and its primary
cells (judged by the picture's own rules: ``picture.primary_sensitive``) to τ-Argus and
takes its pattern as the complement; ``picture.release`` then checks the pattern with its
own line and linear-algebra rules and adds a cell wherever they do not hold, so the
guarantee does not rest on the engine alone.

Why a child process: pytauargus runs native code (a bad call segfaults) and writes its
work files (``HiTaS.log``, ``cspSCIP.*``) into the current directory. The child runs in a
private temporary directory, gets only numbered codes (never an area, branch or category
name) on stdin and writes the pattern as codes to a file there (the engine may print).

Noisy tables keep the project's own suppression: τ-Argus does not take signed counts.
When τ-Argus is not installed, fails or runs past ``timeout``, :func:`complement` raises
``TauArgusUnavailable`` and the desk falls back to the project's own suppression, which is
complete on its own (more loss, the same guarantee), and logs that it did.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from samenloop.node.picture.arithmetic import TOTAL, Key
from samenloop.policies.errors import SamenloopError

#: Protection level asked of τ-Argus for every primary cell (``MAN(10)``): the realised
#: interval of a suppressed cell is at least 10 % of its value either side.
PROTECTION_PERCENT: Final = 10
#: Seconds the child may take before the desk falls back (a 4-D cube of 1,260 cells
#: takes about 8 s on the CI machine).
DEFAULT_TIMEOUT: Final = 120.0
_MODULE: Final = "samenloop.node.picture.tau"
_ANSWER: Final = "answer.json"


class TauArgusUnavailable(SamenloopError):
    """τ-Argus could not protect the cube (not installed, failed or too slow)."""


def complement(
    leaves: Mapping[Key, int],
    axes: Sequence[Sequence[str]],
    primary: Collection[Key],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    work_dir: Path | None = None,
) -> frozenset[Key]:
    """τ-Argus's suppression pattern (primary cells included) of the cube whose leaf
    counts are ``leaves`` (keys without totals, values from ``axes``) with totals over
    every dimension, protecting the cells ``primary`` names (leaves or marginals,
    ``TOTAL`` where totalled). Raises ``TauArgusUnavailable``.

    A dimension with one value is left out of what τ-Argus sees (its engine crashes on
    one, and the value and its total are one figure): a cell suppressed without it is
    suppressed with the value and with the total. The child works in a new directory
    under ``work_dir`` (by default the system's temporary directory)."""
    kept = [d for d, axis in enumerate(axes) if len(axis) > 1]
    if not kept:
        return frozenset(primary)
    dropped = [d for d in range(len(axes)) if d not in kept]
    codes = [{v: i for i, v in enumerate(axes[d])} for d in kept]

    def encode(key: Key) -> list[int]:
        return [-1 if key[d] == TOTAL else codes[j][key[d]] for j, d in enumerate(kept)]

    def decode(coded: Sequence[int]) -> list[Key]:
        at = {d: TOTAL if i == -1 else axes[d][i] for d, i in zip(kept, coded, strict=True)}
        out = []
        for fill in itertools.product(*[(axes[d][0], TOTAL) for d in dropped]):
            at.update(zip(dropped, fill, strict=True))
            out.append(tuple(at[d] for d in range(len(axes))))
        return out

    request = {
        "axes": [len(axes[d]) for d in kept],
        "leaves": [[*encode(k), v] for k, v in leaves.items() if v > 0],
        "primary": sorted({tuple(encode(k)) for k in primary}),
        "protection": PROTECTION_PERCENT,
    }
    # The cube's counts are written to files there: a directory only the node's user
    # reads (``work_dir``, the node's data directory), removed when done.
    with tempfile.TemporaryDirectory(prefix="tau-", dir=work_dir) as workdir:
        try:
            done = subprocess.run(  # noqa: S603 (argv is this interpreter and module)
                [sys.executable, "-m", _MODULE],
                input=json.dumps(request).encode(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=workdir,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise TauArgusUnavailable(f"τ-Argus took longer than {timeout:g} s") from error
        if done.returncode != 0:
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise TauArgusUnavailable(
                f"τ-Argus exited with {done.returncode}: {' '.join(last) or 'no message'}"
            )
        try:
            answer = json.loads((Path(workdir) / _ANSWER).read_bytes())
            pattern = frozenset(key for coded in answer["suppressed"] for key in decode(coded))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
            raise TauArgusUnavailable("τ-Argus's answer could not be read") from error
    if any(len(k) != len(axes) for k in pattern) or not set(primary) <= pattern:
        raise TauArgusUnavailable("τ-Argus's pattern does not cover the primary cells")
    return pattern


# --- the child ---------------------------------------------------------------------------


def _code(i: int) -> str:
    return f"c{i:05d}"


def _protect(request: Mapping[str, Any]) -> list[list[int]]:
    """Run τ-Argus (modular, HiTaS) in the current directory on ``request`` (see
    ``complement``); the suppressed cells as codes."""
    from pytauargus.arb import micro_arb
    from pytauargus.engine import run_batch
    from pytauargus.micro import micro_asc_rda
    from pytauargus.result import TableResult

    n_dims = len(request["axes"])
    names = [f"d{d}" for d in range(n_dims)]
    leaves = request["leaves"]
    micro: dict[str, list[Any]] = {
        name: [_code(leaf[d]) for leaf in leaves] for d, name in enumerate(names)
    }
    micro["n"] = [float(leaf[-1]) for leaf in leaves]
    here = Path.cwd()
    asc, rda, arb, hst, out = (str(here / f) for f in ("m.asc", "m.rda", "b.arb", "a.hst", "t.tab"))
    micro_asc_rda(micro, asc_filename=asc, rda_filename=rda)
    Path(hst).write_text(
        "".join(
            ",".join("" if i == -1 else _code(i) for i in key) + ",u\n"
            for key in request["primary"]
        )
    )
    micro_arb(
        arb_filename=arb,
        asc_filename=asc,
        rda_filename=rda,
        explanatory_vars=[names],
        response_var="n",
        safety_rules=f"MAN({int(request['protection'])})",
        suppress="MOD(1)",
        output_names=[out],
        output_type="5",
        output_options="SO+",
        apriori=[hst],
    )
    run_batch(arb)
    rows = TableResult(path=out, exp_vars=names, response="n", is_freq=False).rows
    return [
        [-1 if str(r[n]).strip() == "Total" else int(str(r[n]).strip()[1:]) for n in names]
        for r in rows
        if r["status"] in ("U", "M")
    ]


def _main() -> int:
    # Native code must not write into anything but this private directory.
    os.umask(0o077)
    request = json.loads(sys.stdin.buffer.read())
    if not request["primary"]:
        suppressed: list[list[int]] = []
    else:
        suppressed = _protect(request)
    Path(_ANSWER).write_text(json.dumps({"suppressed": suppressed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
