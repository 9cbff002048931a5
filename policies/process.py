"""What both daemons do as processes: run until SIGTERM or SIGINT, with a periodic task."""

from __future__ import annotations

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
