"""``make bench-linked``: the picture's complementary suppression against τ-Argus (pytauargus).

Both protect the same cube: the counts of one period by every dimension collected, with
totals over every dimension, so that every table shown of the period (area by category,
areas, branch by category, the trend) is a slice of it (linked tables, issue 13 finding 3).
pytauargus 0.6.0's headless engine protects one table at a time (its linked-tables path,
table number 0, and the hypercube GH are not available), so protecting the cover table
is also how τ-Argus would protect these linked tables here.

Methods: ``samenloop`` (``picture.release``: lines with one suppressed cell, then exact
linear algebra); ``tau-OPT`` (τ-Argus's optimal suppression, Fischetti-Salazar, on
HiGHS); ``tau-MOD`` (τ-Argus's modular HiTaS); ``tau-MOD-given`` (HiTaS with the primary
cells handed over as a-priori status, as the picture hands over its own); ``released``
(what the RIEC's node releases: τ-Argus's pattern and the project's own, each checked
and completed by ``picture.release``, the one with less loss). Primary
rule the same for all: a count between 1 and ``min_count - 1`` (τ-Argus
``FREQ(min_count, 10)``).

Figures per table and method: suppressed cells and their total value (information loss),
over the whole cube and over the cells of the views the README and the report show
(at most two dimensions not totalled), wall time, and the audit: every suppressed cell's
realised protection interval, min and max of its value by LP (scipy's HiGHS) subject to
every released figure and non-negativity; ``degenerate`` counts intervals of width 0
(a disclosed cell), ``narrowest`` is the smallest width relative to the cell's value.

Runs in its own venv (``.venv-tau``: pytauargus, scipy, protobuf, this package without
its dependencies); prints a table and writes bench/results/linked_tables.json.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pytauargus import protect
from scipy.optimize import linprog
from scipy.sparse import lil_matrix

from samenloop.node.picture import arithmetic as p
from samenloop.node.picture import tau as picture_tau

MIN_COUNT = 5
Key = tuple[str, ...]


def _records(n: int, axes: Sequence[Sequence[str]], rng: random.Random) -> list[Key]:
    """``n`` records whose values follow Zipf-like weights per dimension (a few big areas,
    branches and categories, a long tail of small ones), as regional counts do."""
    weights = [[1 / (i + 1) ** 0.9 for i in range(len(a))] for a in axes]
    return [
        tuple(rng.choices(a, w)[0] for a, w in zip(axes, weights, strict=True)) for _ in range(n)
    ]


A, B, C, M = p.Dimension.AREA, p.Dimension.BRANCH, p.Dimension.CATEGORY, p.Dimension.MONTH


def tables() -> list[tuple[str, tuple[p.Dimension, ...], Counter[Key]]]:
    rng = random.Random(13)
    areas = [f"pc4:{4300 + i}" for i in range(25)]
    branches = [f"{5610 + 7 * i}" for i in range(10)]
    categories = ["woonfraude", "witwas", "vastgoed", "drugs", "mensenhandel", "leegstand"]
    months = ["2026-10", "2026-11", "2026-12"]
    out = []
    out.append(("2-D area x category", (A, C), Counter(_records(1500, [areas, categories], rng))))
    out.append(
        (
            "3-D area x branch x category",
            (A, B, C),
            Counter(_records(2000, [areas[:12], branches, categories[:5]], rng)),
        )
    )
    demo: Counter[Key] = Counter()  # the demo's shape (tests/test_picture_linked.py)
    d_areas = ("pc4:4331", "pc4:4332", "pc4:4333", "pc4:4381", "pc4:4382")
    d_branches = ("5610", "9602", "4520", "5510", "6810")
    for n, category in enumerate(("woonfraude", "vastgoedmisbruik", "witwas", "ondermijning")):
        for i in range(505 if n < 2 else 503):
            demo[(d_areas[(i * 7 + n) % 5], d_branches[(i * 3 + n * 2) % 5], category)] += 1
    demo[("pc4:4461", "6810", "leegstand")] += 3
    out.append(("3-D demo (README workflow)", (A, B, C), demo))
    out.append(
        (
            "4-D area x branch x category x month",
            (A, B, C, M),
            Counter(_records(2500, [areas[:8], branches[:6], categories[:4], months], rng)),
        )
    )
    return out


def _all_keys(axes: Sequence[Sequence[str]]) -> list[Key]:
    return list(itertools.product(*[(*a, p.TOTAL) for a in axes]))


def _values(cells: Counter[Key], axes: Sequence[Sequence[str]]) -> dict[Key, int]:
    """Every cube cell (leaves and marginals) with its count."""
    out: dict[Key, int] = {}
    for key in _all_keys(axes):
        out[key] = sum(
            v
            for leaf, v in cells.items()
            if all(k == p.TOTAL or k == x for k, x in zip(key, leaf, strict=True))
        )
    return out


def samenloop(dims: tuple[p.Dimension, ...], cells: Counter[Key]) -> set[Key]:
    table = p.Table(p.Measure.ACTIVE_SIGNALS, dims, p.Period("2026-10", "2026-12"), dict(cells))
    released = p.release(p.with_totals(table), min_count=MIN_COUNT)
    return {c.values for c in released.suppressed}


def released(dims: tuple[p.Dimension, ...], cells: Counter[Key]) -> set[Key]:
    """What the RIEC's node releases (``PictureDesk._release_cube``): τ-Argus's pattern
    (``picture_tau``) and the project's own, each checked and completed by
    ``picture.release``, the one with less loss (τ-Argus's on a tie)."""
    table = p.with_totals(
        p.Table(p.Measure.ACTIVE_SIGNALS, dims, p.Period("2026-10", "2026-12"), dict(cells))
    )
    primary = p.small_cells(table, MIN_COUNT)
    own = p.release(table, min_count=MIN_COUNT, primary=primary)
    pattern = picture_tau.complement(cells, [table.axis(d) for d in dims], primary)
    tau = p.release(table, min_count=MIN_COUNT, primary=primary, complement=pattern)
    best = tau if p.loss(table, tau) <= p.loss(table, own) else own
    return {c.values for c in best.suppressed}


def tau(method: str, dims: tuple[p.Dimension, ...], cells: Counter[Key]) -> set[Key]:
    names = [d.value for d in dims]
    micro = [
        {**dict(zip(names, key, strict=True)), "n": 1} for key, v in cells.items() for _ in range(v)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        result = protect(
            micro,
            names,
            response="n",
            safety_rules=f"FREQ({MIN_COUNT},10)",
            suppress=f"{method}(1)",
            workdir=tmp,
        )
        rows = result.tables[0].rows
    return {
        tuple(p.TOTAL if r[n] == "Total" else str(r[n]).strip() for n in names)
        for r in rows
        if r["status"] in ("U", "M")
    }


def tau_given(
    method: str, dims: tuple[p.Dimension, ...], cells: Counter[Key], primary: set[Key]
) -> set[Key]:
    """τ-Argus with the primary cells given (a-priori status ``U``, protection ``MAN(10)``)
    from one microdata row per leaf: how the picture would hand it its own primary cells."""
    from pytauargus.arb import micro_arb
    from pytauargus.engine import run_batch
    from pytauargus.micro import micro_asc_rda
    from pytauargus.result import TableResult

    names = [d.value for d in dims]
    micro: dict[str, list[Any]] = {n: [k[i] for k in cells] for i, n in enumerate(names)}
    micro["n"] = [float(v) for v in cells.values()]
    with tempfile.TemporaryDirectory() as tmp:
        asc, rda, arb, hst, out = (
            str(Path(tmp) / f) for f in ("m.asc", "m.rda", "b.arb", "a.hst", "t.tab")
        )
        micro_asc_rda(micro, asc_filename=asc, rda_filename=rda)
        Path(hst).write_text(
            "".join(",".join("" if v == p.TOTAL else v for v in key) + ",u\n" for key in primary)
        )
        micro_arb(
            arb_filename=arb,
            asc_filename=asc,
            rda_filename=rda,
            explanatory_vars=[names],
            response_var="n",
            safety_rules="MAN(10)",
            suppress=f"{method}(1)",
            output_names=[out],
            output_type="5",
            output_options="SO+",
            apriori=[hst],
        )
        run_batch(arb)
        rows = TableResult(path=out, exp_vars=names, response="n", is_freq=False).rows
    return {
        tuple(p.TOTAL if r[n] == "Total" else str(r[n]).strip() for n in names)
        for r in rows
        if r["status"] in ("U", "M")
    }


def audit(
    axes: Sequence[Sequence[str]], values: dict[Key, int], suppressed: set[Key]
) -> dict[str, Any]:
    """The LP interval of every suppressed cell: variables are the suppressed leaves
    (>= 0); every released cell fixes the sum of its suppressed leaves."""
    leaves = [k for k in _all_keys(axes) if p.TOTAL not in k]
    hidden = [k for k in leaves if k in suppressed]
    col = {k: j for j, k in enumerate(hidden)}

    def members(key: Key) -> tuple[list[int], int]:
        cols, known = [], 0
        for leaf in leaves:
            if all(k == p.TOTAL or k == x for k, x in zip(key, leaf, strict=True)):
                if leaf in col:
                    cols.append(col[leaf])
                else:
                    known += values[leaf]
        return cols, known

    released = [k for k in values if k not in suppressed and p.TOTAL in k]
    a_eq = lil_matrix((len(released), max(len(hidden), 1)))
    b_eq = np.zeros(len(released))
    for i, key in enumerate(released):
        cols, known = members(key)
        for j in cols:
            a_eq[i, j] = 1
        b_eq[i] = values[key] - known
    degenerate, narrowest = 0, float("inf")
    for key in suppressed:
        cols, known = members(key)
        c = np.zeros(max(len(hidden), 1))
        c[cols] = 1
        bounds = []
        for sign in (1, -1):
            found = linprog(
                sign * c, A_eq=a_eq.tocsr(), b_eq=b_eq, bounds=(0, None), method="highs"
            )
            if not found.success:
                raise RuntimeError(f"LP failed for {key}: {found.message}")
            bounds.append(sign * found.fun + known)
        width = bounds[1] - bounds[0]
        if width < 1e-6:
            degenerate += 1
        narrowest = min(narrowest, width / max(values[key], 1))
    return {"degenerate": degenerate, "narrowest": None if not suppressed else round(narrowest, 3)}


def _view_cell(key: Key) -> bool:
    return sum(v != p.TOTAL for v in key) <= 2


def main() -> int:
    # τ-Argus writes its work files (HiTaS.log, FullJJ.log, cspSCIP.*) into the current
    # directory: give it one of its own.
    os.chdir(tempfile.mkdtemp(prefix="bench-linked-"))
    results = []
    for name, dims, cells in tables():
        axes = [sorted({k[i] for k in cells}) for i in range(len(dims))]
        values = _values(cells, axes)
        primary = {k for k, v in values.items() if 0 < v < MIN_COUNT}
        for method in ("samenloop", "tau-OPT", "tau-MOD", "tau-MOD-given", "released"):
            started = time.perf_counter()
            try:
                if method == "samenloop":
                    suppressed = samenloop(dims, cells)
                elif method == "released":
                    suppressed = released(dims, cells)
                elif method == "tau-MOD-given":
                    suppressed = tau_given("MOD", dims, cells, primary)
                else:
                    suppressed = tau(method.removeprefix("tau-"), dims, cells)
            except Exception as error:  # report what the engine refused
                results.append({"table": name, "method": method, "error": str(error)[:200]})
                continue
            seconds = time.perf_counter() - started
            missing = primary - suppressed
            views = {k for k in suppressed if _view_cell(k)}
            results.append(
                {
                    "table": name,
                    "method": method,
                    "cube_cells": len(values),
                    "primary": len(primary),
                    "primary_not_suppressed": len(missing),
                    "suppressed": len(suppressed),
                    "suppressed_value": sum(values[k] for k in suppressed),
                    "view_suppressed": len(views),
                    "view_suppressed_value": sum(values[k] for k in views),
                    "seconds": round(seconds, 3),
                    **audit(axes, values, suppressed),
                }
            )
    columns = [
        "table", "method", "cube_cells", "primary", "suppressed", "suppressed_value",
        "view_suppressed", "view_suppressed_value", "seconds", "degenerate", "narrowest",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in results:
        if "error" in row:
            print(f"| {row['table']} | {row['method']} | error: {row['error']} |")
        else:
            print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    out = Path(__file__).parent / "results" / "linked_tables.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"min_count": MIN_COUNT, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
