"""Times on the wire: a received ``google.protobuf.Timestamp`` as an aware UTC datetime.

Every message a party or the broker receives may carry a time outside what a
``datetime`` holds (years 1..9999); reading it must give ``InvalidInput``
naming the field, never a ``ValueError`` out of a request handler or a mailbox
loop. One function for every place that reads one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from samenloop.policies.errors import InvalidInput

__all__ = ["received_time"]


def received_time(
    stamp: timestamp_pb2.Timestamp, *, field: str, reason: str | None = None
) -> datetime:
    """``stamp`` as an aware UTC datetime; ``InvalidInput`` naming ``field`` (with
    ``reason``) when it is out of range."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidInput("the time is out of range", field=field, reason=reason) from None
