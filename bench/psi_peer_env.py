"""Separate virtualenv for the OpenMined PSI benchmark peer.

``openmined-psi`` pins ``protobuf==6.30.2``, which clashes with the project's own
environment, so it is installed into ``bench/.peer-venv`` and ``psi_peer.py`` is run there
as a subprocess. Standard library only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PSI_REQUIREMENT = "openmined-psi==2.0.6"
PEER_SCRIPT = Path(__file__).resolve().with_name("psi_peer.py")
INSTALL_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 600


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _imports_psi(python: Path) -> bool:
    if not python.exists():
        return False
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", "import private_set_intersection.python"],
            capture_output=True,
            timeout=120,
            check=False,
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


def ensure_peer_venv(root: Path) -> Path:
    """Create (or reuse) ``root / ".peer-venv"`` with openmined-psi; return its python."""
    venv = root.resolve() / ".peer-venv"
    python = _venv_python(venv)
    if _imports_psi(python):
        return python
    # Missing or broken: (re)create from scratch; --clear wipes any half-built venv.
    _run_checked([sys.executable, "-m", "venv", "--clear", str(venv)], "creating peer venv")
    _run_checked(
        [str(python), "-m", "pip", "install", "-q", PSI_REQUIREMENT],
        f"pip install {PSI_REQUIREMENT} into {venv}",
    )
    if not _imports_psi(python):
        raise RuntimeError(f"{venv}: private_set_intersection still not importable")
    return python


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
