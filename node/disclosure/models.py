"""The disclosure table: requests in both directions and their outcomes."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from samenloop.node.daemon.models import (
    MAX_PARTY_CHARS,
    MAX_REFUSAL_CHARS,
    MAX_TEXT_BYTES,
    Base,
    one_of,
)
from samenloop.node.signals.models import MAX_CATEGORY_CHARS
from samenloop.policies.database import RowId


class DisclosureDirection(enum.StrEnum):
    """Which way a disclosure request goes, seen from this node."""

    OUTGOING = "outgoing"
    INCOMING = "incoming"


class DisclosureState(enum.StrEnum):
    """Where a disclosure request stands (``samenloop.v1.DisclosureState`` without the prefix).

    Outgoing: ``sent`` -> (``pending_approval``) -> ``granted`` | ``refused``.
    Incoming: ``pending_approval`` -> ``granted`` | ``refused``, or straight to either.
    ``granted`` and ``refused`` are final.
    """

    SENT = "sent"
    PENDING_APPROVAL = "pending_approval"
    GRANTED = "granted"
    REFUSED = "refused"


class Disclosure(Base):
    """A disclosure request this node sent (outgoing) or received (incoming), and its outcome.

    ``released_fields`` is a JSON value: for an outgoing request the details
    received (the requester's own data now), for an incoming one the sorted
    names of the fields released, never their values. ``rule_category`` is the
    category of the release rule that granted an incoming request (``*`` for
    the wildcard): with the purpose and the requester it names the rule whose
    per-period maximum counts this grant.
    """

    __tablename__ = "disclosures"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    request_id: Mapped[bytes] = mapped_column(unique=True)
    direction: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(24))
    requester: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    owner: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    hit_group_id: Mapped[bytes | None]
    signal_ref: Mapped[bytes]
    # Incoming only: the owner's signal the ref belongs to, if it knows one.
    signal_id: Mapped[int | None] = mapped_column(ForeignKey("signals.id"))
    purpose: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    # A JSON array of the field names asked for.
    requested_fields: Mapped[str] = mapped_column(Text)
    requester_officer: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    justification: Mapped[str] = mapped_column(Text)
    # The covenant version the request was made (outgoing) or decided (incoming) under.
    covenant_version: Mapped[int] = mapped_column(BigInteger)
    released_fields: Mapped[str | None] = mapped_column(Text)
    # A JSON array of the fields asked for but withheld (granted requests only).
    withheld_fields: Mapped[str | None] = mapped_column(Text)
    rule_category: Mapped[str | None] = mapped_column(String(MAX_CATEGORY_CHARS))
    refusal_reason: Mapped[str | None] = mapped_column(String(MAX_REFUSAL_CHARS))
    refusal_message: Mapped[str | None] = mapped_column(Text)
    # The owner's second officer who approved or denied it (four eyes), with the note.
    decided_by: Mapped[str | None] = mapped_column(String(MAX_PARTY_CHARS))
    decision_approved: Mapped[bool | None]
    decision_note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]
    # On a probable person hit: the requester's score of it in bits, as its request said
    # (shown to the owner's officers; the owner decides on its own score).
    person_score: Mapped[float | None] = mapped_column(Float)
    # When the request was made (its issued_at), stored, last changed, and granted or refused.
    requested_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_disclosures_direction_state_id", "direction", "state", "id"),
        # Counts a requester's requests per day and its grants per rule and period.
        Index(
            "ix_disclosures_requester_direction_created_at", "requester", "direction", "created_at"
        ),
        CheckConstraint("length(request_id) = 16", name="request_id_size"),
        CheckConstraint(one_of("direction", DisclosureDirection), name="direction_known"),
        CheckConstraint(one_of("state", DisclosureState), name="state_known"),
        CheckConstraint("state <> 'sent' OR direction = 'outgoing'", name="sent_is_outgoing"),
        CheckConstraint("length(requester) >= 1 AND length(owner) >= 1", name="parties_not_empty"),
        CheckConstraint("requester <> owner", name="parties_differ"),
        CheckConstraint(
            "hit_group_id IS NULL OR length(hit_group_id) = 16", name="hit_group_id_size"
        ),
        CheckConstraint("length(signal_ref) = 16", name="signal_ref_size"),
        CheckConstraint("signal_id IS NULL OR direction = 'incoming'", name="signal_id_incoming"),
        CheckConstraint("length(purpose) >= 1", name="purpose_not_empty"),
        CheckConstraint(f"length(justification) <= {MAX_TEXT_BYTES}", name="justification_size"),
        CheckConstraint("covenant_version >= 1", name="covenant_version_positive"),
        CheckConstraint(
            "(state = 'granted') = (released_fields IS NOT NULL)", name="released_iff_granted"
        ),
        CheckConstraint(
            "(state = 'granted') = (withheld_fields IS NOT NULL)", name="withheld_iff_granted"
        ),
        CheckConstraint(
            "(state = 'refused') = (refusal_reason IS NOT NULL)", name="reason_iff_refused"
        ),
        CheckConstraint(
            "(refusal_reason IS NULL) = (refusal_message IS NULL)", name="refusal_complete"
        ),
        CheckConstraint(
            "rule_category IS NULL OR (state = 'granted' AND direction = 'incoming')",
            name="rule_of_incoming_grant",
        ),
        CheckConstraint(
            "(decided_by IS NULL) = (decided_at IS NULL)"
            " AND (decided_by IS NULL) = (decision_approved IS NULL)",
            name="decision_complete",
        ),
        CheckConstraint(
            "decided_by IS NULL OR direction = 'incoming'", name="decision_of_incoming"
        ),
        CheckConstraint("decided_by IS NULL OR decided_by <> requester_officer", name="four_eyes"),
        CheckConstraint(
            "(state IN ('granted', 'refused')) = (finished_at IS NOT NULL)",
            name="finished_iff_final",
        ),
    )
