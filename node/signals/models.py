"""The signals' tables: signals, identifiers and refs, the token outbox, the hit inbox.

The node keeps its partner's raw data here (signals, their identifiers and details:
none of it ever leaves the node) and the durable state of its work on them: the token
outbox and the hit inbox with its application feed.

Life of an identifier (``signal_identifiers.state``)::

    pending --record_tokens--> tokenised --submit batch acked--> submitted
       |                           |                                 |
       |                           +--------- withdraw/expire -------+
       |                                          v
       +-- withdraw/expire --> withdrawn <--ack-- withdraw_pending

``tokenised`` means its token is stored and sits in an unacknowledged submit
batch of the outbox; a withdrawal of a ``tokenised`` identifier is queued
behind that batch, since batches are sent in creation order.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from samenloop.node.daemon.models import Base, one_of
from samenloop.policies.database import RowId

MAX_REFERENCE_CHARS: Final = 255

MAX_CATEGORY_CHARS: Final = 64

MAX_IMPORT_BATCH_CHARS: Final = 128

MAX_CANONICAL_CHARS: Final = 512

MAX_TYPE_CHARS: Final = 32

MAX_PARTY_LABEL_CHARS: Final = 80


class SignalState(enum.StrEnum):
    """Where a signal stands (``samenloop.v1.SignalState`` without the prefix)."""

    ACTIVE = "active"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


class IdentifierState(enum.StrEnum):
    """Where one identifier of a signal stands on its way to and from the broker."""

    PENDING = "pending"
    TOKENISED = "tokenised"
    SUBMITTED = "submitted"
    WITHDRAW_PENDING = "withdraw_pending"
    WITHDRAWN = "withdrawn"


class BatchKind(enum.StrEnum):
    """What an outbox batch asks of the broker: ``SubmitTokens`` or ``WithdrawTokens``."""

    SUBMIT = "submit"
    WITHDRAW = "withdraw"


class HitKind(enum.StrEnum):
    """Kind of a hit notice (``samenloop.v1.HitNoticeKind`` without the prefix)."""

    NEW = "new"
    GROWN = "grown"
    SHRUNK = "shrunk"
    CLOSED = "closed"
    UPDATED = "updated"


class HitState(enum.StrEnum):
    """Whether a hit is open for this node: closed once its latest notice is CLOSED."""

    OPEN = "open"
    CLOSED = "closed"


class AreaKind(enum.StrEnum):
    """Kind of a signal's coarse area (``samenloop.v1.AreaKind`` without the prefix)."""

    POSTCODE4 = "postcode4"
    CBS_WIJK = "cbs_wijk"
    CBS_BUURT = "cbs_buurt"


class Signal(Base):
    """A partner's signal about a subject. Its reference is unique among active signals."""

    __tablename__ = "signals"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    reference: Mapped[str] = mapped_column(String(MAX_REFERENCE_CHARS))
    category: Mapped[str] = mapped_column(String(MAX_CATEGORY_CHARS))
    # A JSON object of strings, keys sorted: the fields a disclosure can release.
    details: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    # When it was withdrawn or expired; null while active.
    ended_at: Mapped[datetime | None]
    # Coarse attributes for the regional picture; each may be unknown.
    area_kind: Mapped[str | None] = mapped_column(String(16))
    area_code: Mapped[str | None] = mapped_column(String(16))
    branch: Mapped[str | None] = mapped_column(String(5))
    month: Mapped[str | None] = mapped_column(String(7))
    # The import (file, run) the signal came from, if any.
    import_batch: Mapped[str | None] = mapped_column(String(MAX_IMPORT_BATCH_CHARS))

    __table_args__ = (
        Index(
            "uq_signals_active_reference",
            "reference",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
        Index("ix_signals_reference", "reference"),
        Index("ix_signals_state_expires_at", "state", "expires_at"),
        # The regional picture groups by these: in index order, without a sort.
        Index(
            "ix_signals_picture",
            "area_kind",
            "area_code",
            "branch",
            "category",
            "month",
            "ended_at",
        ),
        CheckConstraint("length(reference) >= 1", name="reference_not_empty"),
        CheckConstraint("length(category) >= 1", name="category_not_empty"),
        CheckConstraint(one_of("state", SignalState), name="state_known"),
        CheckConstraint("(state = 'active') = (ended_at IS NULL)", name="ended_iff_not_active"),
        CheckConstraint("(area_kind IS NULL) = (area_code IS NULL)", name="area_complete"),
        CheckConstraint(
            f"area_kind IS NULL OR {one_of('area_kind', AreaKind)}", name="area_kind_known"
        ),
        CheckConstraint("branch IS NULL OR length(branch) >= 2", name="branch_size"),
        CheckConstraint("month IS NULL OR length(month) = 7", name="month_size"),
    )


class SignalIdentifier(Base):
    """One identifier of a signal, with its own random ref and, once made, its token.

    A fresh ``signal_ref`` per signal and identifier, so that the broker cannot
    link two identifiers of one subject.
    """

    __tablename__ = "signal_identifiers"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    signal_id: Mapped[int] = mapped_column(ForeignKey("signals.id"))
    # Order of the identifier within its signal, from 0.
    position: Mapped[int] = mapped_column(Integer)
    # An identifier type, or a person key kind's wire name (``person.names_year``).
    type: Mapped[str] = mapped_column(String(MAX_TYPE_CHARS))
    canonical: Mapped[str] = mapped_column(String(MAX_CANONICAL_CHARS))
    signal_ref: Mapped[bytes] = mapped_column(unique=True)
    token: Mapped[bytes | None]
    key_epoch: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))

    __table_args__ = (
        UniqueConstraint("signal_id", "position"),
        UniqueConstraint("signal_id", "type", "canonical"),
        # Finds the identifiers waiting for tokens, oldest first.
        Index("ix_signal_identifiers_state_id", "state", "id"),
        CheckConstraint("position >= 0", name="position_not_negative"),
        CheckConstraint("length(canonical) >= 1", name="canonical_not_empty"),
        CheckConstraint("length(signal_ref) = 16", name="signal_ref_size"),
        CheckConstraint("token IS NULL OR length(token) = 32", name="token_size"),
        CheckConstraint(
            "key_epoch IS NULL OR (key_epoch >= 1 AND key_epoch <= 4294967295)",
            name="key_epoch_range",
        ),
        CheckConstraint("(token IS NULL) = (key_epoch IS NULL)", name="token_has_epoch"),
        CheckConstraint(one_of("state", IdentifierState), name="state_known"),
        CheckConstraint(
            "state IN ('pending', 'withdrawn') OR token IS NOT NULL", name="state_has_token"
        ),
        CheckConstraint("state <> 'pending' OR token IS NULL", name="pending_has_no_token"),
    )


class HitProofKey(Base):
    """The hit proof key of a tokenised identifier (:mod:`samenloop.node.tokens.derive`), stored in
    the transaction that stores its token and dropped when the token is.

    Secret: it never leaves the node. With it the node proves, when it asks for
    details, that it holds the subject of a hit, and checks such a proof from a
    party that asks it. An identifier tokenised before hit proofs existed has no
    row: requests about it are refused on both sides.
    """

    __tablename__ = "hit_proof_keys"

    identifier_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("signal_identifiers.id"), primary_key=True, autoincrement=False
    )
    proof_key: Mapped[bytes]

    __table_args__ = (CheckConstraint("length(proof_key) = 32", name="proof_key_size"),)


class RestatedToken(Base):
    """An identifier's token under the key epoch a rotation has staged, with its hit proof
    key: made by the re-tokenisation job in the transaction that puts it in the outbox
    (under the identifier's own ``signal_ref``), made the identifier's token when the
    covenant switches to that epoch, and dropped then (or when the staging is
    withdrawn). Never made for a withdrawn identifier."""

    __tablename__ = "restated_tokens"

    identifier_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("signal_identifiers.id"), primary_key=True, autoincrement=False
    )
    key_epoch: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[bytes]
    proof_key: Mapped[bytes | None]

    __table_args__ = (
        CheckConstraint("key_epoch >= 1 AND key_epoch <= 4294967295", name="key_epoch_range"),
        CheckConstraint("length(token) = 32", name="token_size"),
        CheckConstraint("proof_key IS NULL OR length(proof_key) = 32", name="proof_key_size"),
    )


class OutboxBatch(Base):
    """A batch for the broker, kept unchanged and resent until acknowledged (or rejected)."""

    __tablename__ = "outbox_batches"

    # Creation order: the order batches are sent in.
    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    client_batch_id: Mapped[bytes] = mapped_column(unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    # The tokens' key epoch (submit batches only).
    key_epoch: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    acked_at: Mapped[datetime | None]
    # Set instead of acked_at when the broker refused the batch for good.
    rejected_at: Mapped[datetime | None]

    __table_args__ = (
        # Finds the unsettled batches in order.
        Index(
            "ix_outbox_batches_unsettled",
            "id",
            sqlite_where=text("acked_at IS NULL AND rejected_at IS NULL"),
            postgresql_where=text("acked_at IS NULL AND rejected_at IS NULL"),
        ),
        CheckConstraint("length(client_batch_id) = 16", name="client_batch_id_size"),
        CheckConstraint(one_of("kind", BatchKind), name="kind_known"),
        CheckConstraint(
            "(kind = 'submit' AND key_epoch >= 1 AND key_epoch <= 4294967295)"
            " OR (kind = 'withdraw' AND key_epoch IS NULL)",
            name="epoch_matches_kind",
        ),
        CheckConstraint("acked_at IS NULL OR rejected_at IS NULL", name="settled_once"),
    )


class OutboxEntry(Base):
    """One entry of an outbox batch, frozen as it is sent: a token entry or a ref to withdraw."""

    __tablename__ = "outbox_entries"

    batch_id: Mapped[int] = mapped_column(ForeignKey("outbox_batches.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    identifier_id: Mapped[int] = mapped_column(ForeignKey("signal_identifiers.id"))
    signal_ref: Mapped[bytes]
    # Submit entries only: the token entry exactly as sent, sealed attributes included
    # (sealing again would change the batch, which the broker refuses under the same id).
    token: Mapped[bytes | None]
    expires_at: Mapped[datetime | None]
    sealed_attributes: Mapped[bytes | None]

    __table_args__ = (
        UniqueConstraint("batch_id", "identifier_id"),
        Index("ix_outbox_entries_identifier_id", "identifier_id"),
        CheckConstraint("position >= 0", name="position_not_negative"),
        CheckConstraint("length(signal_ref) = 16", name="signal_ref_size"),
        CheckConstraint("token IS NULL OR length(token) = 32", name="token_size"),
        CheckConstraint("(token IS NULL) = (expires_at IS NULL)", name="token_has_expiry"),
        CheckConstraint(
            "sealed_attributes IS NULL OR (token IS NOT NULL AND length(sealed_attributes) >= 1)",
            name="sealed_attributes_with_token",
        ),
    )


class Hit(Base):
    """The latest accepted hit notice of a hit group, and its place in the application feed."""

    __tablename__ = "hits"

    group_id: Mapped[bytes] = mapped_column(primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    # The Signed HitNotice exactly as the broker signed it: the proof for disclosures.
    notice: Mapped[bytes]
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    received_at: Mapped[datetime]
    # Strictly increasing over the node's accepted notices, in commit order.
    feed_seq: Mapped[int] = mapped_column(BigInteger, unique=True)

    __table_args__ = (
        Index("ix_hits_state_feed_seq", "state", "feed_seq"),
        CheckConstraint("length(group_id) = 16", name="group_id_size"),
        CheckConstraint("revision >= 1", name="revision_positive"),
        CheckConstraint(one_of("kind", HitKind), name="kind_known"),
        CheckConstraint(one_of("state", HitState), name="state_known"),
        CheckConstraint("(state = 'closed') = (kind = 'closed')", name="closed_iff_kind_closed"),
        CheckConstraint("length(notice) >= 1", name="notice_not_empty"),
        CheckConstraint("first_seen <= last_seen", name="seen_order"),
        CheckConstraint("feed_seq >= 1", name="feed_seq_positive"),
    )


class HitRef(Base):
    """One of this node's own signal refs named by a hit's latest notice."""

    __tablename__ = "hit_refs"

    group_id: Mapped[bytes] = mapped_column(ForeignKey("hits.group_id"), primary_key=True)
    signal_ref: Mapped[bytes] = mapped_column(primary_key=True)
    # The local identifier the ref belongs to; null for a ref this node does not know.
    identifier_id: Mapped[int | None] = mapped_column(ForeignKey("signal_identifiers.id"))

    __table_args__ = (
        Index("ix_hit_refs_identifier_id", "identifier_id"),
        CheckConstraint("length(signal_ref) = 16", name="signal_ref_size"),
    )


class HitParty(Base):
    """One other member of a hit as its latest notice shows it: the party id, else
    ``role:<role>``, else the empty label (hidden). Replaced with each accepted notice;
    what probable person hits are combined from (:mod:`samenloop.node.identifiers.person_hits`)."""

    __tablename__ = "hit_parties"

    group_id: Mapped[bytes] = mapped_column(ForeignKey("hits.group_id"), primary_key=True)
    party: Mapped[str] = mapped_column(String(MAX_PARTY_LABEL_CHARS), primary_key=True)
