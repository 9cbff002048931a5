"""A benchmark peer's own virtualenv, for peers whose pins clash with the project's
(OpenMined PSI, anonlink + clkhash, splink): created on first use under ``bench/``
(git-ignored) and checked by importing what the peer needs. Standard library only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

INSTALL_TIMEOUT_S = 1800


def works(python: Path, probe: str) -> bool:
    if not python.exists():
        return False
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", probe], capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def run_checked(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} timed out after {INSTALL_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")


def ensure(root: Path, folder: str, requirements: Sequence[str], probe: str) -> Path:
    """Create (or reuse) the venv ``root / folder`` with ``requirements``, which works when
    ``probe`` (Python code) runs there; return its python. A missing or broken venv is made
    again from scratch (``--clear`` wipes a half-built one)."""
    venv = root.resolve() / folder
    python = venv / "bin" / "python"
    if works(python, probe):
        return python
    run_checked([sys.executable, "-m", "venv", "--clear", str(venv)], f"creating {venv}")
    run_checked(
        [str(python), "-m", "pip", "install", "-q", *requirements],
        f"pip install {' '.join(requirements)} into {venv}",
    )
    if not works(python, probe):
        raise RuntimeError(f"{venv}: {probe!r} still fails")
    return python
