"""The cases' tables: cases, their members, actions and message log."""

from __future__ import annotations

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

from samenloop.node.daemon.models import MAX_PARTY_CHARS, MAX_TEXT_BYTES, Base
from samenloop.policies.database import RowId

MAX_CASE_TITLE_BYTES: Final = 256

MAX_MEASURE_BYTES: Final = 256


class Case(Base):
    """A case this node is (or was) a member of, as folded from its signed case messages.

    ``access`` is ``removed`` once the coordinator removed this node: it keeps what
    it had, read-only, and receives nothing further. ``hit_notice`` is the
    coordinator's broker-signed notice (serialized ``Signed``), when this node has it.
    Titles and outcomes are free text: they never leave the node but sealed.
    """

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    case_id: Mapped[bytes] = mapped_column(unique=True)
    coordinator: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    title: Mapped[str] = mapped_column(Text)
    hit_group_id: Mapped[bytes]
    state: Mapped[str] = mapped_column(String(16))
    access: Mapped[str] = mapped_column(String(16))
    hit_notice: Mapped[bytes | None]
    # A case on a component of the subject network: its other hit groups, 16 bytes each.
    linked_group_ids: Mapped[bytes | None]
    opened_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_cases_coordinator_state", "coordinator", "state"),
        CheckConstraint("length(case_id) = 16", name="case_id_size"),
        CheckConstraint("length(hit_group_id) = 16", name="hit_group_id_size"),
        CheckConstraint("length(coordinator) >= 1", name="coordinator_not_empty"),
        CheckConstraint(
            f"length(title) >= 1 AND length(title) <= {MAX_CASE_TITLE_BYTES}", name="title_size"
        ),
        CheckConstraint("state IN ('open', 'closed')", name="state_known"),
        CheckConstraint("access IN ('member', 'removed')", name="access_known"),
        CheckConstraint(
            "(state = 'closed') = (closed_at IS NOT NULL)", name="closed_iff_closed_at"
        ),
        CheckConstraint("(state = 'closed') = (outcome IS NOT NULL)", name="outcome_iff_closed"),
        CheckConstraint(
            f"outcome IS NULL OR length(outcome) <= {MAX_TEXT_BYTES}", name="outcome_size"
        ),
    )


class CaseMember(Base):
    """A current member of a case (the coordinator included)."""

    __tablename__ = "case_members"

    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    party: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS), primary_key=True)

    __table_args__ = (CheckConstraint("length(party) >= 1", name="party_not_empty"),)


class CaseAction(Base):
    """An action of a case's plan of approach. ``added_at``: when its ACTION_ADD was issued."""

    __tablename__ = "case_actions"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    action_id: Mapped[bytes]
    owner: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    intervention_type: Mapped[str] = mapped_column(String(16))
    measure: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    deadline: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text)
    added_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))

    __table_args__ = (
        UniqueConstraint("case_id", "action_id"),
        CheckConstraint("length(action_id) = 16", name="action_id_size"),
        CheckConstraint("length(owner) >= 1", name="owner_not_empty"),
        CheckConstraint(
            "intervention_type IN ('bestuurlijk', 'fiscaal', 'strafrechtelijk', 'zorg', 'other')",
            name="intervention_type_known",
        ),
        CheckConstraint(
            "status IN ('planned', 'in_progress', 'done', 'cancelled')", name="status_known"
        ),
        CheckConstraint(
            f"length(measure) >= 1 AND length(measure) <= {MAX_MEASURE_BYTES}", name="measure_size"
        ),
        CheckConstraint(f"length(description) <= {MAX_TEXT_BYTES}", name="description_size"),
        CheckConstraint(f"length(note) <= {MAX_TEXT_BYTES}", name="note_size"),
    )


class CaseMessage(Base):
    """An applied case message: the log of a case, one row per change, never two per author
    sequence. ``summary`` is a line for people without free text."""

    __tablename__ = "case_messages"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    message_id: Mapped[bytes] = mapped_column(unique=True)
    author: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    author_officer: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    author_sequence: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime]
    received_at: Mapped[datetime]
    summary: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("case_id", "author", "author_sequence"),
        CheckConstraint("length(message_id) = 16", name="message_id_size"),
        CheckConstraint("length(author) >= 1", name="author_not_empty"),
        CheckConstraint("author_sequence >= 1", name="author_sequence_positive"),
        CheckConstraint(
            "kind IN ('open', 'invite', 'action_add', 'action_update', 'close', 'member_remove')",
            name="kind_known",
        ),
    )
