"""OpenMined PSI peer benchmark (runs inside bench/.peer-venv, not the project venv).

Measures, for the same N items, the time for the client to build its PSI request
(``client.CreateRequest``) and for the server to process it (``server.ProcessRequest``),
pinned to one CPU core. Prints one JSON object on stdout.

Usage: python psi_peer.py --items N --repeat R

Only the standard library and ``private_set_intersection`` (PyPI ``openmined-psi``) are
imported, because this script runs in a separate virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

import private_set_intersection.python as psi  # type: ignore[import-not-found, unused-ignore]

FPR = 1e-9  # false-positive rate for the correctness check's server setup
SEED = 20240101


def pin_to_one_core() -> int | None:
    """Pin this process to the first allowed core; return it (None if unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def make_items(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct 9-digit BSN-like strings."""
    return [str(n) for n in rng.sample(range(100_000_000, 1_000_000_000), count)]


def time_once(client: Any, server: Any, items: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    request = client.CreateRequest(items)
    t1 = time.perf_counter()
    server.ProcessRequest(request)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def check_intersection(client_items: list[str], rng: random.Random) -> bool:
    """Run the full protocol once with a known overlap and check size and indices."""
    n = len(client_items)
    overlap = n // 2
    shared_idx = sorted(rng.sample(range(n), overlap))
    client_set = set(client_items)
    extra: list[str] = []
    while len(extra) < n - overlap:
        cand = str(rng.randrange(100_000_000, 1_000_000_000))
        if cand not in client_set:
            client_set.add(cand)
            extra.append(cand)
    server_items = [client_items[i] for i in shared_idx] + extra
    rng.shuffle(server_items)

    ok = True
    for reveal in (False, True):
        client = psi.client.CreateWithNewKey(reveal)
        server = psi.server.CreateWithNewKey(reveal)
        setup = server.CreateSetupMessage(FPR, n, server_items, psi.DataStructure.GCS)
        request = client.CreateRequest(client_items)
        response = server.ProcessRequest(request)
        if reveal:
            ok = ok and sorted(client.GetIntersection(setup, response)) == shared_idx
        else:
            ok = ok and client.GetIntersectionSize(setup, response) == overlap
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, required=True, help="number of client items N")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats (best-of)")
    args = parser.parse_args(argv)
    if args.items < 1 or args.repeat < 1:
        parser.error("--items and --repeat must be >= 1")

    core = pin_to_one_core()
    rng = random.Random(SEED)
    items = make_items(args.items, rng)

    # Cardinality-only mode (reveal_intersection=False) on both sides for the timing.
    client = psi.client.CreateWithNewKey(False)
    server = psi.server.CreateWithNewKey(False)
    time_once(client, server, items)  # warm-up

    client_times: list[float] = []
    server_times: list[float] = []
    for _ in range(args.repeat):
        c, s = time_once(client, server, items)
        client_times.append(c)
        server_times.append(s)
    client_s = min(client_times)
    server_s = min(server_times)

    intersection_ok = check_intersection(items, rng)

    result = {
        "psi_version": psi.__version__,
        "items": args.items,
        "repeat": args.repeat,
        "reveal_intersection": False,
        "cpu_core": core,
        "client_request_s": client_s,
        "server_process_s": server_s,
        "items_per_s": args.items / (client_s + server_s),
        "client_items_per_s": args.items / client_s,
        "server_items_per_s": args.items / server_s,
        "intersection_ok": intersection_ok,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
