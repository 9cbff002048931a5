"""The node's tables, as SQLAlchemy 2 typed models.

The node keeps its partner's raw data (signals, their identifiers and
details: none of it ever leaves the node) and the durable state of its
protocol work: the token outbox, the hit inbox with its application feed, the
broker mailbox cursor, and the key-holder counters and replay cache.

Constraints live in the database (sizes, states and the columns each state
requires, uniqueness, foreign keys), timestamps are UTC
(:class:`UtcDateTime`). The migrations in ``samenloop.node.daemon.migrations`` create
exactly this schema; ``tests/test_node_store.py`` compares the two.

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
from datetime import date, datetime
from typing import Any, ClassVar, Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from samenloop.policies.audit_store import AuditCheckpointColumns, AuditEntryColumns
from samenloop.policies.database import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    RowId,
)

MAX_REFERENCE_CHARS: Final = 255
MAX_CATEGORY_CHARS: Final = 64
MAX_IMPORT_BATCH_CHARS: Final = 128
MAX_CANONICAL_CHARS: Final = 512
MAX_PARTY_CHARS: Final = 64


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


def _one_of(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(v.value)) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = TYPE_ANNOTATION_MAP


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
        CheckConstraint(_one_of("state", SignalState), name="state_known"),
        CheckConstraint("(state = 'active') = (ended_at IS NULL)", name="ended_iff_not_active"),
        CheckConstraint("(area_kind IS NULL) = (area_code IS NULL)", name="area_complete"),
        CheckConstraint(
            f"area_kind IS NULL OR {_one_of('area_kind', AreaKind)}", name="area_kind_known"
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
    type: Mapped[str] = mapped_column(String(16))
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
        CheckConstraint(_one_of("state", IdentifierState), name="state_known"),
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
        CheckConstraint(_one_of("kind", BatchKind), name="kind_known"),
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
        CheckConstraint(_one_of("kind", HitKind), name="kind_known"),
        CheckConstraint(_one_of("state", HitState), name="state_known"),
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


class Inbox(Base):
    """The one row of inbox state: the broker mailbox cursor processed, the feed's last seq.

    Every change of it happens in the transaction that processed the item, and
    locks this row first: accepted notices get their ``feed_seq`` in commit order.
    """

    __tablename__ = "inbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_cursor: Mapped[int] = mapped_column(BigInteger)
    last_feed_seq: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("mailbox_cursor >= 0", name="mailbox_cursor_not_negative"),
        CheckConstraint("last_feed_seq >= 0", name="last_feed_seq_not_negative"),
    )


class HolderUsage(Base):
    """Key-holder counters: requests and elements evaluated per requesting party per UTC day."""

    __tablename__ = "holder_usage"

    party: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests_served: Mapped[int] = mapped_column(BigInteger)
    elements_evaluated: Mapped[int] = mapped_column(BigInteger)
    requests_refused: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("length(party) >= 1", name="party_not_empty"),
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


class AuditLogEntry(AuditEntryColumns, Base):
    """One entry of the node's hash-chained audit log (see :mod:`samenloop.policies.audit`)."""

    __tablename__ = "audit_entries"


class AuditLogCheckpoint(AuditCheckpointColumns, Base):
    """A signed checkpoint of the node's audit log: its size and head, signed by its owner."""

    __tablename__ = "audit_checkpoints"


# --- disclosures, the envelope outbox, covenant versions --------------------------------


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


MAX_TEXT_BYTES: Final = 4096
MAX_REFUSAL_CHARS: Final = 32


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
        CheckConstraint(_one_of("direction", DisclosureDirection), name="direction_known"),
        CheckConstraint(_one_of("state", DisclosureState), name="state_known"),
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


class EnvelopeOutboxItem(Base):
    """A sealed envelope for another party, kept unchanged and resent until the broker has it.

    ``client_message_id`` is the idempotency key of ``SendEnvelope``: a resend
    after a lost answer is delivered once.
    """

    __tablename__ = "envelope_outbox"

    # Creation order: the order envelopes are sent in.
    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    client_message_id: Mapped[bytes] = mapped_column(unique=True)
    recipient: Mapped[str] = mapped_column(String(MAX_PARTY_CHARS))
    # The serialized ``samenloop.v1.Sealed``, exactly as it is sent.
    sealed: Mapped[bytes]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    # Set instead of sent_at when the broker refused the envelope for good.
    rejected_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_envelope_outbox_unsent",
            "id",
            sqlite_where=text("sent_at IS NULL AND rejected_at IS NULL"),
            postgresql_where=text("sent_at IS NULL AND rejected_at IS NULL"),
        ),
        CheckConstraint("length(client_message_id) = 16", name="client_message_id_size"),
        CheckConstraint("length(recipient) >= 1", name="recipient_not_empty"),
        CheckConstraint("length(sealed) >= 1", name="sealed_not_empty"),
        CheckConstraint("sent_at IS NULL OR rejected_at IS NULL", name="settled_once"),
    )


class CovenantVersion(Base):
    """A covenant version this node accepted after its root, replayed in order at start."""

    __tablename__ = "covenant_versions"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # The canonical covenant bytes, and the whole serialized ``samenloop.v1.SignedCovenant``.
    body: Mapped[bytes]
    signatures: Mapped[bytes]
    accepted_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("length(body) >= 1", name="body_not_empty"),
        CheckConstraint("length(signatures) >= 1", name="signatures_not_empty"),
    )


class CovenantTimestamp(Base):
    """The newest covenant timestamp this node verified (a serialized ``Signed``
    ``CovenantTimestamp``, as received), one row: at start it is verified again and says
    whether the node is fresh, so a restart neither forgets it nor trusts it blindly."""

    __tablename__ = "covenant_timestamp"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    signed: Mapped[bytes]
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    received_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("expires_at > issued_at", name="expires_after_issued"),
    )


# --- case coordination (casusregie) -------------------------------------------------------

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


# --- the regional picture -----------------------------------------------------------------

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
        CheckConstraint(_one_of("outcome", PictureAnswerOutcome), name="outcome_known"),
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
        CheckConstraint(_one_of("kind", PicturePartKind), name="kind_known"),
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
