"""What both daemons do as processes: settle the heap after start-up, then run until
SIGTERM or SIGINT, with a periodic task."""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable


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
