"""``make bench``: tokenising throughput and the broker, against limits measured in the same run.

Tokenising, measured on one core:
1. the node's whole pipeline per token — normalise, blind, t key holders
   evaluate in-process (with their DLEQ proofs), verify and combine,
   finalise, derive — in tokens/s, split into the holders' share and the
   node's own share;
2. the crypto bound: the group operations and hashes-to-group/scalar that the
   pipeline performs (counted by instrumenting one run), each timed alone in a
   tight loop; the bound is the time those calls alone would take;
3. OpenMined PSI (``openmined-psi``, in its own venv, see psi_peer_env.py):
   client request + server processing for the same N, in items/s.

Then the broker (``broker_bench.py``, on every core: the daemons and PostgreSQL
are processes of their own): ingest against bare-insert and bare-gRPC bounds,
the scale ratio, hit latency through the daemons, end-to-end import.
``--broker-only`` and ``--no-broker`` select; ``--scale full`` measures the
scale ratio at 10M/1M (longer than the default's 3M/1M).

Then the regional picture (``picture_bench.py``): one period's picture for 20
partners' node stores, computed and combined, against reading the same rows;
``--picture-only`` runs just that (20 x 100,000 signals at either scale;
``--picture-signals`` sets another size).

Prints tables and writes bench/results/latest.json and broker.json. No timed
assertions: the figures are ratios against what this machine does in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import rbcl
from rich.console import Console
from rich.table import Table

from samenloop.node.identifiers import normalise as identifiers
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import oprf, threshold

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import broker_bench  # noqa: E402
import linkage  # noqa: E402
import picture_bench  # noqa: E402
import psi_peer_env  # noqa: E402

#: The libsodium calls the pipeline makes, by the name ``oprf`` imports them under.
_PRIMITIVES = (
    "crypto_scalarmult_ristretto255",
    "crypto_scalarmult_ristretto255_base",
    "crypto_core_ristretto255_add",
    "crypto_core_ristretto255_is_valid_point",
    "crypto_core_ristretto255_from_hash",
    "crypto_core_ristretto255_scalar_mul",
    "crypto_core_ristretto255_scalar_add",
    "crypto_core_ristretto255_scalar_sub",
    "crypto_core_ristretto255_scalar_invert",
    "crypto_core_ristretto255_scalar_reduce",
    "crypto_core_ristretto255_scalar_random",
)


def pin_to_one_core() -> tuple[int, set[int]]:
    """Pin this process to one core; returns the core and the affinity it had."""
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    return core, before


def valid_bsn(rng: random.Random) -> str:
    while True:
        digits = [rng.randrange(10) for _ in range(8)]
        check = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10 and any(digits):
            return "".join(map(str, digits)) + str(check)


def raw_inputs(n: int, seed: int = 7) -> list[str]:
    """BSNs written as partners write them: dots, spaces, dropped leading zeros."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        bsn = valid_bsn(rng)
        style = i % 3
        if style == 0:
            out.append(bsn)
        elif style == 1:
            out.append(f"{bsn[:4]}.{bsn[4:6]}.{bsn[6:]}")
        else:
            out.append(f" {bsn} ")
    return out


class Pipeline:
    """The tokenising pipeline with in-process holders, timed by phase."""

    def __init__(self, t: int, n: int) -> None:
        key = oprf.random_scalar()
        self.shares = threshold.split_key(key, t, n)
        self.epoch = threshold.KeyEpoch(
            covenant_id="bench",
            epoch=1,
            threshold=t,
            group_public_key=oprf.scalar_mult_gen(key),
            holders=tuple(
                threshold.Holder(s.index, f"holder-{s.index}", s.commitment) for s in self.shares
            ),
            created_at=datetime.now(UTC),
            retire_after=datetime.now(UTC) + timedelta(days=1),
        )
        self.domain = tokens.TokenDomain("bench", 1)
        self.responding_set = tuple(range(1, t + 1))

    def run(self, raw: Sequence[str], batch: int) -> dict[str, float]:
        timing = Counter[str]()
        for start in range(0, len(raw), batch):
            chunk = raw[start : start + batch]
            t0 = time.perf_counter()
            parsed = [identifiers.parse(identifiers.IdentifierType.BSN, v) for v in chunk]
            pending = tokens.start(self.domain, parsed)
            t1 = time.perf_counter()
            partials = {
                s.index: threshold.evaluate_partial(
                    s, pending.blinded_elements, self.responding_set
                )
                for s in self.shares
                if s.index in self.responding_set
            }
            t2 = time.perf_counter()
            combined = threshold.combine(
                self.epoch, self.responding_set, pending.blinded_elements, partials
            )
            out = tokens.finish(pending, combined)
            t3 = time.perf_counter()
            assert len(out) == len(chunk)
            # The proofs again, alone: how much of the node's share is verification.
            for partial in partials.values():
                threshold.verify_partial(
                    self.epoch, self.responding_set, pending.blinded_elements, partial
                )
            t4 = time.perf_counter()
            timing["node"] += (t1 - t0) + (t3 - t2)
            timing["holders"] += t2 - t1
            timing["verify"] += t4 - t3
        return dict(timing)


@contextmanager
def counting_primitives() -> Iterator[Counter[str]]:
    """Count every libsodium group call the pipeline makes (through ``oprf``'s ``rbcl``)."""
    counts: Counter[str] = Counter()
    originals = {name: getattr(rbcl, name) for name in _PRIMITIVES}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            counts[name] += 1
            return fn(*args)

        return counted

    for name, fn in originals.items():
        setattr(rbcl, name, wrap(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(rbcl, name, fn)


def unit_costs(repeat: int = 2000) -> dict[str, float]:
    """Seconds per call of each primitive, timed alone (best of 3 loops)."""
    s = oprf.random_scalar()
    p = oprf.scalar_mult_gen(s)
    h = os.urandom(64)
    args: dict[str, tuple[bytes, ...]] = {
        "crypto_scalarmult_ristretto255": (s, p),
        "crypto_scalarmult_ristretto255_base": (s,),
        "crypto_core_ristretto255_add": (p, p),
        "crypto_core_ristretto255_is_valid_point": (p,),
        "crypto_core_ristretto255_from_hash": (h,),
        "crypto_core_ristretto255_scalar_mul": (s, s),
        "crypto_core_ristretto255_scalar_add": (s, s),
        "crypto_core_ristretto255_scalar_sub": (s, s),
        "crypto_core_ristretto255_scalar_invert": (s,),
        "crypto_core_ristretto255_scalar_reduce": (h,),
        "crypto_core_ristretto255_scalar_random": (),
    }
    costs = {}
    for name in _PRIMITIVES:
        fn = getattr(rbcl, name)
        a = args[name]
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn(*a)
            best = min(best, (time.perf_counter() - t0) / repeat)
        costs[name] = best
    return costs


def measure(n: int, batch: int, t: int, holders: int, repeat: int) -> dict[str, Any]:
    raw = raw_inputs(n)
    pipeline = Pipeline(t, holders)
    pipeline.run(raw[: min(200, n)], batch)  # warm-up
    best: dict[str, float] | None = None
    for _ in range(repeat):
        timing = pipeline.run(raw, batch)
        if best is None or timing["node"] + timing["holders"] < best["node"] + best["holders"]:
            best = timing
    assert best is not None
    # Count what one run costs in group operations, split by phase.
    with counting_primitives() as counts:
        pipeline_counts = _phase_counts(pipeline, raw, batch, counts)
    costs = unit_costs()
    bound = {
        phase: sum(costs[name] * c for name, c in phase_counts.items())
        for phase, phase_counts in pipeline_counts.items()
    }
    total = best["node"] + best["holders"]
    bound_total = bound["node"] + bound["holders"]
    return {
        "n": n,
        "batch": batch,
        "threshold": f"{t}-of-{holders}",
        "pipeline_tokens_per_s": n / total,
        "node_share_tokens_per_s": n / best["node"],
        "holders_share_tokens_per_s": n / best["holders"],
        "node_share_without_proof_checks_tokens_per_s": n / (best["node"] - best["verify"]),
        "proof_checks_fraction_of_node_share": best["verify"] / best["node"],
        "bound_tokens_per_s": n / bound_total,
        "bound_node_tokens_per_s": n / bound["node"],
        "ratio_to_bound": bound_total / total,
        "node_ratio_to_bound": bound["node"] / best["node"],
        "ops_per_token": {
            phase: {k: round(v / n, 3) for k, v in sorted(c.items())}
            for phase, c in pipeline_counts.items()
        },
        "unit_cost_us": {k: round(v * 1e6, 3) for k, v in costs.items()},
    }


def _phase_counts(
    pipeline: Pipeline, raw: Sequence[str], batch: int, counts: Counter[str]
) -> dict[str, Counter[str]]:
    node: Counter[str] = Counter()
    holders: Counter[str] = Counter()
    for start in range(0, len(raw), batch):
        chunk = raw[start : start + batch]
        counts.clear()
        parsed = [identifiers.parse(identifiers.IdentifierType.BSN, v) for v in chunk]
        pending = tokens.start(pipeline.domain, parsed)
        node.update(counts)
        counts.clear()
        partials = {
            s.index: threshold.evaluate_partial(
                s, pending.blinded_elements, pipeline.responding_set
            )
            for s in pipeline.shares
            if s.index in pipeline.responding_set
        }
        holders.update(counts)
        counts.clear()
        combined = threshold.combine(
            pipeline.epoch, pipeline.responding_set, pending.blinded_elements, partials
        )
        tokens.finish(pending, combined)
        node.update(counts)
    return {"node": node, "holders": holders}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=int(os.environ.get("BENCH_TOKENS", "5000")))
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip OpenMined PSI")
    parser.add_argument("--broker-only", action="store_true", help="only the broker benchmark")
    parser.add_argument("--no-broker", action="store_true", help="skip the broker benchmark")
    parser.add_argument(
        "--picture-only", action="store_true", help="only the regional picture benchmark"
    )
    parser.add_argument("--no-picture", action="store_true", help="skip the picture benchmark")
    parser.add_argument(
        "--linkage-only", action="store_true", help="only the person linkage benchmark"
    )
    parser.add_argument("--no-linkage", action="store_true", help="skip the linkage benchmark")
    broker_bench.add_arguments(parser)
    picture_bench.add_arguments(parser)
    linkage.add_arguments(parser)
    args = parser.parse_args(argv)
    console = Console()
    if args.picture_only:
        picture_bench.run(args, console)
        return 0
    if args.linkage_only:
        linkage.run_and_write(args, console)
        return 0
    pipeline_rate: float | None = None
    if not args.broker_only:
        pipeline_rate = tokenising(args, console)
    if not args.no_broker:
        broker_bench.run(args, console, pipeline_tokens_per_s=pipeline_rate)
    if not args.no_picture and not args.broker_only:
        picture_bench.run(args, console)
    if not args.no_linkage and not args.broker_only:
        linkage.run_and_write(args, console)
    return 0


def tokenising(args: argparse.Namespace, console: Console) -> float:
    """The tokenising benchmark, pinned to one core (restored afterwards); returns the
    pipeline's tokens/s."""
    core, affinity = pin_to_one_core()
    try:
        return _tokenising(args, console, core)
    finally:
        os.sched_setaffinity(0, affinity)


def _tokenising(args: argparse.Namespace, console: Console, core: int) -> float:
    console.print(f"pinned to core {core}; {args.tokens} tokens in batches of {args.batch}")
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "samenloop": [measure(args.tokens, args.batch, 2, 3, args.repeat)],
    }
    if not args.no_peer:
        console.print("OpenMined PSI peer: preparing its own venv (first run installs it)")
        python = psi_peer_env.ensure_peer_venv(HERE)
        results["openmined_psi"] = psi_peer_env.run_peer(python, args.tokens, args.repeat)

    table = Table(title="Samenloop tokenising, one core")
    table.add_column("figure")
    table.add_column("value", justify="right")
    s = results["samenloop"][0]
    rate = "{:,.0f} tokens/s".format
    table.add_row("pipeline (2-of-3, incl. holders)", rate(s["pipeline_tokens_per_s"]))
    table.add_row("crypto bound, same ops timed alone", rate(s["bound_tokens_per_s"]))
    table.add_row("ratio to bound (target >= 0.7)", f"{s['ratio_to_bound']:.2f}")
    table.add_row("node's own share", rate(s["node_share_tokens_per_s"]))
    table.add_row("node's share ratio to its bound", f"{s['node_ratio_to_bound']:.2f}")
    table.add_row(
        "node's share without the holders' proof checks",
        rate(s["node_share_without_proof_checks_tokens_per_s"]),
    )
    table.add_row("holders' share (t holders, in series)", rate(s["holders_share_tokens_per_s"]))
    if "openmined_psi" in results:
        peer = results["openmined_psi"]
        psi_rate = float(peer["items_per_s"])
        ratio = s["node_share_tokens_per_s"] / psi_rate
        results["node_share_vs_psi"] = ratio
        results["node_share_without_proof_checks_vs_psi"] = (
            s["node_share_without_proof_checks_tokens_per_s"] / psi_rate
        )
        table.add_row("OpenMined PSI (request + processing)", f"{psi_rate:,.0f} items/s")
        table.add_row("node's share / OpenMined PSI (target >= 1.0)", f"{ratio:.2f}")
        table.add_row(
            "  same, without proof checks",
            f"{results['node_share_without_proof_checks_vs_psi']:.2f}",
        )
    console.print(table)
    for phase, ops in s["ops_per_token"].items():
        console.print(f"group operations per token, {phase}: {ops}")

    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written {out / 'latest.json'}")
    return float(s["pipeline_tokens_per_s"])


if __name__ == "__main__":
    raise SystemExit(main())
