"""Separate virtualenvs for the linkage benchmark's peers (anonlink + clkhash, splink).

Their dependencies (clkhash's pins, splink's DuckDB and pandas) are not the project's, so
each lives in its own venv under ``bench/`` (git-ignored), created on first use, and
``linkage_peer.py`` runs there as a subprocess. Standard library only; the same pattern
as ``psi_peer_env.py`` (both through ``peer_venv.py``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import peer_venv

PEERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    # name: (venv folder, requirements, import that proves the venv works)
    "anonlink": (
        ".linkage-anonlink-venv",
        ("anonlink==0.15.3", "clkhash==0.18.3"),
        "import anonlink, clkhash",
    ),
    "splink": (".linkage-splink-venv", ("splink==5.0.0", "pandas"), "import splink, duckdb"),
}
PEER_SCRIPT = Path(__file__).resolve().with_name("linkage_peer.py")
RUN_TIMEOUT_S = 1200


def ensure_venv(root: Path, peer: str) -> Path:
    """Create (or reuse) the peer's venv under ``root``; return its python."""
    folder, requirements, probe = PEERS[peer]
    return peer_venv.ensure(root, folder, requirements, probe)


Scored = list[tuple[str, str, float]]


def run_peer(python: Path, peer: str, directory: Path) -> tuple[Scored, Scored]:
    """Run linkage_peer.py for ``peer`` on the CSV files in ``directory``.

    Returns its scored pairs with and without its one-to-one solver.
    """
    cmd = [str(python), "-I", str(PEER_SCRIPT), peer, "--dir", str(directory)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"linkage_peer.py {peer} timed out after {RUN_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"linkage_peer.py {peer} failed:\n{proc.stderr.strip()[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result = json.loads(lines[-1])
    return tuple(  # type: ignore[return-value]
        [(str(a), str(b), float(s)) for a, b, s in result[key]] for key in ("pairs", "raw")
    )
