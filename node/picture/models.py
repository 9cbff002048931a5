"""The regional picture's tables: collections, answers, budget, shares, sums, parts."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from samenloop.node.daemon.models import MAX_PARTY_CHARS, MAX_REFUSAL_CHARS, Base, one_of
from samenloop.policies.database import RowId

MAX_PICTURE_LIST_CHARS: Final = 1024


class PictureAnswerOutcome(enum.StrEnum):
    """What this node did with a picture request it received (or made for itself)."""

    CONTRIBUTED = "contributed"
    REFUSED = "refused"


class PictureCollection(Base):
    """A picture collection this node started as a viewer: the request it sealed to each party.

    ``measures``, ``dimensions`` and ``asked`` are JSON arrays of names and party
    ids, in request order; ``asked`` includes this node (it contributes locally).
    """

    __tablename__ = "picture_collections"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    request_id: Mapped[bytes] = mapped_column(unique=True)
    first_month: Mapped[str] = mapped_column(String(7))
    last_month: Mapped[str] = mapped_column(String(7))
    measures: Mapped[str] = mapped_column(String(MAX_PICTURE_LIST_CHARS))
    dimensions: Mapped[str] = mapped_column(String(MAX_PICTURE_LIST_CHARS))
    asked: Mapped[str] = mapped_column(Text)
    officer: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    covenant_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    # Secure aggregation (issue 13): the request sent (its domain and aggregator), when
    # the aggregator was asked for its sum, and what came of it: the sum over the
    # contributors it names (the viewer's shares added; never one partner's counts), or
    # the aggregator's refusal.
    request_body: Mapped[bytes | None] = mapped_column()
    sum_requested_at: Mapped[datetime | None]
    aggregate: Mapped[bytes | None] = mapped_column()
    aggregate_contributors: Mapped[str | None] = mapped_column(Text)
    aggregate_refusal: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # Finds the latest collection of a period.
        Index("ix_picture_collections_period", "first_month", "last_month", "id"),
        CheckConstraint("length(request_id) = 16", name="request_id_size"),
        CheckConstraint(
            "length(first_month) = 7 AND length(last_month) = 7 AND first_month <= last_month",
            name="period_order",
        ),
        CheckConstraint("covenant_version >= 1", name="covenant_version_positive"),
    )


class PictureContribution(Base):
    """One party's answer to a collection of this node: its counts or its refusal.

    ``body`` is the serialized ``samenloop.v1.PictureContribution`` as the
    contributor signed it (verified on arrival): aggregates only, never a subject.
    The first answer of a party counts; a repeat is dropped.
    """

    __tablename__ = "picture_contributions"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    request_id: Mapped[bytes] = mapped_column(ForeignKey("picture_collections.request_id"))
    contributor: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    contributor_role: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    refusal_reason: Mapped[str | None] = mapped_column(String(MAX_REFUSAL_CHARS))
    refusal_message: Mapped[str | None] = mapped_column(Text)
    epsilon_spent: Mapped[float]
    body: Mapped[bytes]
    received_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("request_id", "contributor"),
        CheckConstraint("length(contributor) >= 1", name="contributor_not_empty"),
        CheckConstraint(
            "(refusal_reason IS NULL) = (refusal_message IS NULL)", name="refusal_complete"
        ),
        CheckConstraint("epsilon_spent >= 0", name="epsilon_not_negative"),
        CheckConstraint("length(body) >= 1", name="body_not_empty"),
    )


class PictureAnswer(Base):
    """A picture request this node answered: remembered for good, so a replay is refused."""

    __tablename__ = "picture_answers"

    request_id: Mapped[bytes] = mapped_column(primary_key=True)
    requester: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    outcome: Mapped[str] = mapped_column(String(16))
    refusal_reason: Mapped[str | None] = mapped_column(String(MAX_REFUSAL_CHARS))
    epsilon_spent: Mapped[float]
    answered_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("length(request_id) = 16", name="request_id_size"),
        CheckConstraint(one_of("outcome", PictureAnswerOutcome), name="outcome_known"),
        CheckConstraint(
            "(outcome = 'refused') = (refusal_reason IS NOT NULL)", name="reason_iff_refused"
        ),
        CheckConstraint("epsilon_spent >= 0", name="epsilon_not_negative"),
    )


class PictureBudget(Base):
    """The node's privacy budget ledger: epsilon spent on picture contributions per month,
    in integer units of 1e-9 (as ``samenloop.node.picture.arithmetic.BudgetLedger`` counts), so that
    sums are exact and the budget is never exceeded by rounding."""

    __tablename__ = "picture_budget"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    spent_units: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("length(month) = 7", name="month_size"),
        CheckConstraint("spent_units >= 0", name="spent_not_negative"),
    )


class PictureShareHeld(Base):
    """At the covenant's picture aggregator: the second share of one contribution, kept
    until the viewer's one sum request for it is answered, then deleted. Alone it is
    uniformly random: it says nothing of the contributor's counts."""

    __tablename__ = "picture_shares"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    request_id: Mapped[bytes] = mapped_column()
    requester: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    contributor: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    request_digest: Mapped[bytes] = mapped_column()
    share: Mapped[bytes] = mapped_column()
    first_month: Mapped[str] = mapped_column(String(7))
    last_month: Mapped[str] = mapped_column(String(7))
    received_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("request_id", "contributor"),
        CheckConstraint("length(request_id) = 16", name="request_id_size"),
        CheckConstraint("length(request_digest) = 32", name="digest_size"),
        CheckConstraint("length(share) >= 8", name="share_not_empty"),
    )


class PicturePartKind(enum.StrEnum):
    """What a held part is a part of: a partner's share to the viewer (in its
    contribution), a partner's share to the aggregator, or the aggregator's sum."""

    CONTRIBUTION = "contribution"
    SHARE = "share"
    SUM = "sum"


class PicturePartHeld(Base):
    """One part of a shared vector too large for one message, kept until every part of
    it is in (then the whole is checked, kept where a whole one would be, and its parts
    deleted in the same transaction). A part alone is a slice of a uniformly random share
    or of a sum not yet usable: nothing is summed or marked answered from it."""

    __tablename__ = "picture_parts"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[bytes] = mapped_column()
    sender: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    part_index: Mapped[int]
    part_count: Mapped[int]
    total_values: Mapped[int] = mapped_column(BigInteger)
    vector_digest: Mapped[bytes] = mapped_column()
    data: Mapped[bytes] = mapped_column()
    received_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("kind", "request_id", "sender", "part_index"),
        CheckConstraint(one_of("kind", PicturePartKind), name="kind_known"),
        CheckConstraint("length(request_id) = 16", name="request_id_size"),
        CheckConstraint("length(vector_digest) = 32", name="digest_size"),
        CheckConstraint("part_index >= 0 AND part_index < part_count", name="index_in_count"),
        CheckConstraint("total_values >= 1", name="total_positive"),
        CheckConstraint("length(data) >= 8", name="data_not_empty"),
    )


class PictureSumAnswer(Base):
    """At the aggregator: a viewer's sum request, answered at most once per request id.
    ``contributors`` (JSON) is what the viewer listed, then what was summed."""

    __tablename__ = "picture_sums"

    request_id: Mapped[bytes] = mapped_column(primary_key=True)
    requester: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    contributors: Mapped[str] = mapped_column(Text)
    asked_at: Mapped[datetime]
    answered_at: Mapped[datetime | None]
    refusal_reason: Mapped[str | None] = mapped_column(String(MAX_REFUSAL_CHARS))
    # The period summed (exact mode keeps later sums from singling out a party).
    first_month: Mapped[str | None] = mapped_column(String(7))
    last_month: Mapped[str | None] = mapped_column(String(7))

    __table_args__ = (
        CheckConstraint("length(request_id) = 16", name="request_id_size"),
        Index("ix_picture_sums_requester", "requester", "first_month"),
    )
