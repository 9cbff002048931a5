"""The subject network's tables: the links a node reported, and the links it was told of.

``network_links_sent`` is the reporter's side: per viewer and group pair, the count and
revision it last sent, so that it sends each change once (and a count of 0 when the
link ends). ``network_links`` is the viewer's side: per reporter and group pair, the
latest link it accepted, with the identifier type (and person score) the reporter gave
each end. Neither names a signal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import BigInteger, CheckConstraint, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from samenloop.node.daemon.models import MAX_PARTY_CHARS, Base

#: The longest identifier type a link end names ("vestiging", "person").
MAX_LINK_TYPE_CHARS: Final = 16


class NetworkLinkSent(Base):
    """The last state of a link this node reported to one viewer."""

    __tablename__ = "network_links_sent"

    recipient: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS), primary_key=True)
    group_a: Mapped[bytes] = mapped_column(primary_key=True)
    group_b: Mapped[bytes] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("length(group_a) = 16", name="group_a_size"),
        CheckConstraint("length(group_b) = 16", name="group_b_size"),
        CheckConstraint("group_a < group_b", name="groups_ordered"),
        CheckConstraint("count >= 0", name="count_not_negative"),
        CheckConstraint("revision >= 1", name="revision_positive"),
    )


class NetworkLink(Base):
    """A link a reporter told this node of; ``count`` 0: it ended."""

    __tablename__ = "network_links"

    reporter: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS), primary_key=True)
    group_a: Mapped[bytes] = mapped_column(primary_key=True)
    group_b: Mapped[bytes] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(BigInteger)
    type_a: Mapped[str] = mapped_column(String(MAX_LINK_TYPE_CHARS))
    type_b: Mapped[str] = mapped_column(String(MAX_LINK_TYPE_CHARS))
    score_a: Mapped[float | None] = mapped_column(Float)
    score_b: Mapped[float | None] = mapped_column(Float)
    first_reported: Mapped[datetime]
    last_reported: Mapped[datetime]

    __table_args__ = (
        Index("ix_network_links_group_a", "group_a"),
        Index("ix_network_links_group_b", "group_b"),
        CheckConstraint("length(group_a) = 16", name="group_a_size"),
        CheckConstraint("length(group_b) = 16", name="group_b_size"),
        CheckConstraint("group_a < group_b", name="groups_ordered"),
        CheckConstraint("count >= 0", name="count_not_negative"),
        CheckConstraint("revision >= 1", name="revision_positive"),
        CheckConstraint("first_reported <= last_reported", name="reported_order"),
    )
