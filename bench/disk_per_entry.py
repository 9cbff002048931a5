"""Disk per million token entries at the broker (docs/operations.md, "Deployment").

Loads token entries through the store's own insert path (``broker_bench.preload``: the
rows, indexes, 1% of them in open hit groups and a batch record per 1,000, as the ingest
benchmark does), checkpoints, and reports the growth between two levels, per million:
``python bench/disk_per_entry.py --low 200000 --high 1000000 --backends sqlite,postgresql``.
No assertions: a figure for sizing a disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import broker_bench as bench

from samenloop.node.provision import provision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=200_000)
    parser.add_argument("--high", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="samenloop-disk-"))
    dbs = bench.Databases(work)
    covenant = provision(
        work / "covenant", bench.COVENANT, bench.SPECS, [bench.FIRST, bench.SECOND], 2,
        now=datetime.now(UTC),
    ).covenant  # fmt: skip
    results: dict[str, object] = {}
    try:
        for backend in args.backends.split(","):
            with bench.broker_store(dbs, backend, "disk") as store:
                workload = bench.Workload(covenant, seed=5)
                bench.preload(store, workload, args.low)
                bench.settle(store.engine)
                rows_low = store.tokens.count_tokens()
                bytes_low = bench.database_size(store.engine)
                bench.preload(store, workload, args.high - args.low)
                bench.settle(store.engine)
                rows_high = store.tokens.count_tokens()
                bytes_high = bench.database_size(store.engine)
                per_million = (bytes_high - bytes_low) / (rows_high - rows_low) * 1e6
                results[backend] = {
                    "rows": [rows_low, rows_high],
                    "bytes": [bytes_low, bytes_high],
                    "mb_per_million_entries": round(per_million / 1e6, 1),
                }
                print(f"{backend}: {per_million / 1e6:,.0f} MB per million token entries")
    finally:
        dbs.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
