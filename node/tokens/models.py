"""The key holder's tables: its usage counters and its replay cache."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from samenloop.node.daemon.models import MAX_PARTY_CHARS, Base


class HolderUsage(Base):
    """Key-holder counters: requests and elements evaluated per requesting party, UTC day and
    key epoch (each epoch has its own daily allowance)."""

    __tablename__ = "holder_usage"

    party: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    #: The key epoch evaluated under; 0 for refusals and for counts from before 0014.
    key_epoch: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False, server_default="0"
    )
    requests_served: Mapped[int] = mapped_column(BigInteger)
    elements_evaluated: Mapped[int] = mapped_column(BigInteger)
    requests_refused: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("length(party) >= 1", name="party_not_empty"),
        CheckConstraint("key_epoch >= 0 AND key_epoch <= 4294967295", name="key_epoch_range"),
        CheckConstraint(
            "requests_served >= 0 AND elements_evaluated >= 0 AND requests_refused >= 0",
            name="counts_not_negative",
        ),
    )


class HolderAnswer(Base):
    """A request this node answered as a key holder: its replay is refused until ``keep_until``.

    Stored in the transaction that counts the evaluation, before the answer is
    sent, and loaded at start, so a restart does not reopen the replay window.
    ``keep_until`` is the request's issued_at plus the oldest age a holder
    accepts plus the clock skew; rows past it are deleted. ``request_digest``
    (SHA-256 of the signed body) recognises the very request, which is answered
    again uncounted; rows stored before it was kept have none.
    """

    __tablename__ = "holder_answers"

    requester: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS), primary_key=True)
    request_id: Mapped[bytes] = mapped_column(primary_key=True)
    holder_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    keep_until: Mapped[datetime]
    request_digest: Mapped[bytes | None]

    __table_args__ = (
        Index("ix_holder_answers_keep_until", "keep_until"),
        CheckConstraint("length(requester) >= 1", name="requester_not_empty"),
        CheckConstraint("length(request_id) = 16", name="request_id_size"),
        CheckConstraint("holder_index >= 1 AND holder_index <= 16", name="holder_index_range"),
        CheckConstraint(
            "request_digest IS NULL OR length(request_digest) = 32", name="request_digest_size"
        ),
    )
