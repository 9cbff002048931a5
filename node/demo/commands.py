"""``samenloop demo``: its arguments; the demo itself is in :mod:`.inprocess` and
:mod:`.daemons`, imported when it runs (the rule in :mod:`samenloop.policies.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from samenloop.policies.cli import lazy


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the demo: a broker and five nodes on loopback (or --core: in-process)"
    )
    parser.add_argument("--signals", type=int, default=500, help="unshared signals per partner")
    parser.add_argument(
        "--workdir", type=Path, help="keep the generated covenant, keys, databases and logs here"
    )
    parser.add_argument(
        "--core", action="store_true", help="only the protocol core, in one process, no daemons"
    )
    parser.set_defaults(func=lazy("samenloop.node.demo.inprocess:run"))
