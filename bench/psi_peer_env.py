"""Separate virtualenv for the OpenMined PSI benchmark peer.

``openmined-psi`` pins ``protobuf==6.30.2``, which clashes with the project's own
environment, so it is installed into ``bench/.peer-venv`` and ``psi_peer.py`` is run there
as a subprocess. Standard library only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import peer_venv

PSI_REQUIREMENT = "openmined-psi==2.0.6"
PEER_SCRIPT = Path(__file__).resolve().with_name("psi_peer.py")
RUN_TIMEOUT_S = 600


def ensure_peer_venv(root: Path) -> Path:
    """Create (or reuse) ``root / ".peer-venv"`` with openmined-psi; return its python."""
    return peer_venv.ensure(
        root, ".peer-venv", (PSI_REQUIREMENT,), "import private_set_intersection.python"
    )


def run_peer(python: Path, items: int, repeat: int) -> dict[str, object]:
    """Run psi_peer.py in the peer venv and return its JSON result."""
    cmd = [
        str(python),
        "-I",  # isolated: ignore PYTHONPATH etc. from the project's environment
        str(PEER_SCRIPT),
        "--items",
        str(items),
        "--repeat",
        str(repeat),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"psi_peer.py timed out after {RUN_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"psi_peer.py failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(
            f"psi_peer.py produced no JSON:\nstdout: {proc.stdout!r}\nstderr: {proc.stderr}"
        ) from exc
    if not isinstance(result, dict):
        raise RuntimeError(f"psi_peer.py output is not a JSON object: {result!r}")
    return {str(k): v for k, v in result.items()}
