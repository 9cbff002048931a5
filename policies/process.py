"""What both daemons and the CLI do as processes: keep what they write to their own
account (umask 0o077), refuse, as ssh does, a data directory or secret file that other
accounts may use and a configuration, covenant or CA file that they may write, hold their
data directory alone (a lock file), settle the heap after start-up, then run until
SIGTERM or SIGINT with a periodic task."""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from samenloop.policies.errors import ConfigurationError

#: Files the process creates are 0600 and directories 0700: databases with their WAL and
#: SHM, logs, sockets, exports, reports and keys hold raw data or secrets.
OWNER_ONLY_UMASK = 0o077


def keep_to_owner() -> None:
    """Set the process's umask so that everything it creates is its own account's alone."""
    os.umask(OWNER_ONLY_UMASK)


def check_private(
    data_dirs: Iterable[tuple[str, Path]],
    secrets: Iterable[tuple[str, Path]],
    trusted: Iterable[tuple[str, Path]] = (),
) -> None:
    """A daemon's check at start: each data directory (made 0700 if it is missing) and each
    secret file must be this account's and closed to group and others, and each trusted
    file (:func:`check_trusted`) closed to their writing, or ``ConfigurationError`` names
    the setting, the path and the fix (``chmod 700 ...``).

    Items are ``(setting, path)``, the setting being the configuration key it comes from.
    """
    from samenloop.policies.crypto import check_owner_only  # the CLI imports this module

    for setting, directory in data_dirs:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        what = "data directory" if setting == "data_dir" else f"directory of {setting}"
        check_owner_only(directory, what=what, field=setting)
    for setting, path in secrets:
        check_owner_only(path, what="secret file", field=setting)
    check_trusted(trusted)


def check_trusted(files: Iterable[tuple[str, Path]]) -> None:
    """Each file a daemon takes its orders from (its configuration, the covenant, the CA
    certificate), and the directory that holds it, must be this account's or root's and
    closed to writing by group and others; reading stays open, they are not secret.
    Whoever could write one would choose, at the next start, where raw data is stored and
    whom the daemon trusts. ``ConfigurationError`` names the setting, the path and the fix
    (``chmod go-w ...``).

    Items are ``(setting, path)``; the configuration file itself is ``("--config", path)``
    (the broker's) or ``("--node", path)`` (the node's).
    """
    from samenloop.policies.crypto import check_owner_only  # the CLI imports this module

    for setting, path in files:
        what = "configuration file" if setting in ("--config", "--node") else f"{setting} file"
        check_owner_only(path, what=what, field=setting, others_may_read=True)
        check_owner_only(
            path.absolute().parent,
            what=f"directory of {what}",
            field=setting,
            others_may_read=True,
        )


class DataDirectoryLock:
    """The one daemon of a data directory: an exclusive ``flock`` on ``<data_dir>/<name>.lock``
    for as long as the daemon runs.

    Two daemons on one data directory would share its database, its API socket (the
    second would take it over, and delete it when it stops) and its outbox. The lock is
    the kernel's: it goes with the process, so a daemon killed with SIGKILL leaves no
    stale lock behind, and the file (holding the pid, for the message) is never removed,
    so that two starts cannot each lock a file of their own.
    """

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, data_dir: Path, name: str) -> DataDirectoryLock:
        """Lock ``data_dir`` for the daemon ``name`` (``node``, ``broker``), or
        ``ConfigurationError`` naming ``data_dir`` and the pid that holds it."""
        path = data_dir / f"{name}.lock"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            descriptor = os.open(path, flags, 0o600)
        except OSError as error:
            raise ConfigurationError(
                f"cannot open the lock file {path}: {error.strerror}", field="data_dir"
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigurationError(
                    f"cannot lock {path}: {error.strerror}", field="data_dir"
                ) from error
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigurationError(
                f"another {name}{by} already runs on the data directory {data_dir}: stop it "
                f"first, or give this {name} a data_dir of its own",
                field="data_dir",
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, descriptor)

    def release(self) -> None:
        """Let another daemon have the data directory (idempotent)."""
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


def run_until_signalled(every: float, tick: Callable[[], None]) -> None:
    """Call ``tick`` every ``every`` seconds until the process gets SIGTERM or SIGINT."""
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.wait(every):
        tick()


def settle_heap() -> None:
    """Take what start-up made (modules, generated code, configuration), which lives as
    long as the process, out of the garbage collector's generations.

    A daemon holds about 130,000 such objects; each full collection would walk them
    all, some 35 ms in the middle of whatever request triggered it. Frozen, they are
    never collected, and full collections only look at what came after.
    """
    gc.collect()
    gc.freeze()
