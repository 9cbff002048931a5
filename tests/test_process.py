"""The daemons' process helpers."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from samenloop.policies import process
from samenloop.policies.errors import ConfigurationError


class _Node:
    def __init__(self) -> None:
        self.other: object = self  # a cycle: only the collector can free it


def test_settling_the_heap_freezes_start_up_and_still_collects_what_comes_after():
    before = _Node()
    tracked = len(gc.get_objects())
    try:
        process.settle_heap()
        assert gc.get_freeze_count() >= tracked // 2  # less what was garbage already
        frozen = weakref.ref(before)
        del before
        later = _Node()
        collected = weakref.ref(later)
        del later
        gc.collect()
        assert frozen() is not None  # frozen: never collected
        assert collected() is None
    finally:
        gc.unfreeze()


# --- one daemon per data directory ------------------------------------------------------------


def test_a_data_directory_is_locked_for_one_daemon_at_a_time(tmp_path: Path) -> None:
    first = process.DataDirectoryLock.acquire(tmp_path, "node")
    assert first.path.read_text() == f"{os.getpid()}\n"
    assert first.path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigurationError) as refused:
        process.DataDirectoryLock.acquire(tmp_path, "node")
    assert refused.value.field == "data_dir"
    assert f"another node (pid {os.getpid()}) already runs on the data directory" in str(
        refused.value
    )
    other = process.DataDirectoryLock.acquire(tmp_path, "broker")  # another daemon's lock
    other.release()
    first.release()
    first.release()  # idempotent
    again = process.DataDirectoryLock.acquire(tmp_path, "node")  # free once released
    again.release()
    assert first.path.exists()  # kept: removing it would let two starts lock two files


def test_a_killed_daemon_leaves_no_stale_lock(tmp_path: Path) -> None:
    """The kernel's lock goes with the process: after SIGKILL, the next start proceeds."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from samenloop.policies.process import DataDirectoryLock;"
            f"DataDirectoryLock.acquire(Path({str(tmp_path)!r}), 'node');"
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(ConfigurationError) as refused:
            process.DataDirectoryLock.acquire(tmp_path, "node")
        assert f"(pid {holder.pid})" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    process.DataDirectoryLock.acquire(tmp_path, "node").release()


def test_a_lock_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """A local user who may not write the data directory cannot plant one; and where a
    link is there anyway, the daemon does not follow it to lock (and truncate) another file."""
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "node.lock").symlink_to(target)
    with pytest.raises(ConfigurationError) as refused:
        process.DataDirectoryLock.acquire(tmp_path, "node")
    assert refused.value.field == "data_dir"
    assert target.read_text() == "keep me"
