"""Separate virtualenvs for the linkage benchmark's peers (anonlink + clkhash, splink).

Their dependencies (clkhash's pins, splink's DuckDB and pandas) are not the project's, so
each lives in its own venv under ``bench/`` (git-ignored), created on first use, and
``linkage_peer.py`` runs there as a subprocess. Standard library only; the same pattern
as ``psi_peer_env.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
INSTALL_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 1200


def _works(python: Path, probe: str) -> bool:
    if not python.exists():
        return False
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", probe], capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _run_checked(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} timed out after {INSTALL_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")


def ensure_venv(root: Path, peer: str) -> Path:
    """Create (or reuse) the peer's venv under ``root``; return its python."""
    folder, requirements, probe = PEERS[peer]
    venv = root.resolve() / folder
    python = venv / "bin" / "python"
    if _works(python, probe):
        return python
    _run_checked([sys.executable, "-m", "venv", "--clear", str(venv)], f"creating {venv}")
    _run_checked(
        [str(python), "-m", "pip", "install", "-q", *requirements],
        f"pip install {' '.join(requirements)} into {venv}",
    )
    if not _works(python, probe):
        raise RuntimeError(f"{venv}: {probe!r} still fails")
    return python


def run_peer(python: Path, peer: str, directory: Path) -> list[tuple[str, str, float]]:
    """Run linkage_peer.py for ``peer`` on the CSV files in ``directory``; its scored pairs."""
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
    return [(str(a), str(b), float(s)) for a, b, s in result["pairs"]]
