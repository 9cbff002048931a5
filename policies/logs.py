"""Logging for the daemons: one line per event on standard error, as text or JSON lines.

Log lines carry ids, counts, reasons and status codes, never a raw identifier, a key or a
decrypted detail. Every module logs through structlog, and what other libraries log
through the standard library (Alembic's migrations, gRPC) goes through the same
processors, so that this one place decides the format and the level of every line: with
``log_format = "json"`` each line is one JSON object with ``timestamp`` (ISO 8601, UTC),
``level``, ``event`` and, for a library's line, ``logger``.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

import structlog

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: ``log_format``: ``console`` for people at a terminal, ``json`` for a log collector.
FORMATS: Final = ("console", "json")


class _StandardError:
    """Standard error as it is when a line is written, not when logging was configured:
    a CLI command run in-process (tests, an embedding application) may have its
    ``sys.stderr`` swapped and closed afterwards."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", log_format: str = "console") -> None:
    """Send structlog and the standard library's logging to standard error at ``level``,
    rendered as ``log_format``."""
    numeric = LEVELS.get(level, logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(sort_keys=True)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[structlog.processors.add_log_level, stamp, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_StandardError()),  # type: ignore[arg-type]
        # Not cached: a logger bound before a later configure (a CLI command run in-process,
        # structlog.testing.capture_logs) would keep writing the old way; a lookup per line
        # costs microseconds, and no hot path logs per item.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_StandardError())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                stamp,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
