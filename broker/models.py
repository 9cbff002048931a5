"""The broker's tables, as SQLAlchemy 2 typed models.

Constraints live in the database (checks on sizes, ranges and cursors, foreign
keys, uniqueness), timestamps are UTC (:class:`UtcDateTime`). The migrations
in ``samenloop.broker.migrations`` create exactly this schema; a test compares
the two.

The token index must stay fast at tens of millions of entries. Every batch
inserts its rows into each index of ``token_entries``; an index whose keys are
random (tokens, signal refs) takes each insert to a random leaf page, so once
it outgrows the cache every insert reads a cold page and dirties it. Hence:

* ``ix_token_entries_token_prefix``, the one index that must be random (it
  finds a batch's tokens), holds only a signed 64-bit prefix of the token: an
  entry is a few bytes plus the row id, so the index stays small and mostly
  cached. The full token is compared after the lookup.
* ``ix_token_entries_party_ref`` finds a party's signal refs for withdrawals,
  which are rare, so it is built for cheap inserts instead: its key is
  (party, first byte of the ref, row id) with the ref's prefix carried along.
  Row ids grow, so an insert lands at the end of one of 256 runs per party, a
  small set of pages that stays hot; a lookup scans the ref's run (about
  1/256 of the party's entries) reading index pages only.
* ``ix_token_entries_expiry_bucket`` is by week, for the same reason.
* Rows are appended in row-id order.

There is no unique index on (token, party, ref): it would be a second random
index as large as the token index. Matching writes are serialized, and the
store only inserts entries that matching found absent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from samenloop.policies.audit_store import AuditCheckpointColumns, AuditEntryColumns
from samenloop.policies.database import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    RowId,
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = TYPE_ANNOTATION_MAP


class Party(Base):
    """A party the broker has heard from or about; the other tables refer to its small id."""

    __tablename__ = "parties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)

    __table_args__ = (CheckConstraint("length(name) >= 1", name="name_not_empty"),)


class TokenEntry(Base):
    """One party's token for one signal ref (one row per token, party and ref)."""

    __tablename__ = "token_entries"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    token_prefix: Mapped[int] = mapped_column(BigInteger)
    # A parties.id, deliberately without a foreign key: its per-row check halves
    # PostgreSQL's COPY rate on this, the hottest table, and parties are never deleted.
    party_id: Mapped[int] = mapped_column(Integer)
    ref_bucket: Mapped[int] = mapped_column(SmallInteger)
    ref_prefix: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[bytes]
    signal_ref: Mapped[bytes]
    key_epoch: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime]
    # Whole weeks from 1970-01-01 to expires_at: the expiry sweep's index key.
    expiry_bucket: Mapped[int] = mapped_column(Integer)
    # Serialized SecretBox, opaque to the broker.
    sealed_attributes: Mapped[bytes | None]

    __table_args__ = (
        Index("ix_token_entries_token_prefix", "token_prefix"),
        Index("ix_token_entries_party_ref", "party_id", "ref_bucket", "id", "ref_prefix"),
        Index("ix_token_entries_expiry_bucket", "expiry_bucket"),
        CheckConstraint("length(token) = 32", name="token_size"),
        CheckConstraint("length(signal_ref) = 16", name="signal_ref_size"),
        CheckConstraint("ref_bucket >= 0 AND ref_bucket <= 255", name="ref_bucket_range"),
        CheckConstraint("key_epoch >= 1 AND key_epoch <= 4294967295", name="key_epoch_range"),
    )


class HitGroup(Base):
    """A hit group: random id, revision, first and last seen; at most one open per token.

    Members are not stored: they are the token's live entries.
    """

    __tablename__ = "hit_groups"

    group_id: Mapped[bytes] = mapped_column(primary_key=True)
    token_prefix: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[bytes]
    revision: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    is_open: Mapped[bool]

    __table_args__ = (
        Index(
            "uq_hit_groups_open_token",
            "token_prefix",
            "token",
            unique=True,
            sqlite_where=text("is_open = 1"),
            postgresql_where=text("is_open"),
        ),
        CheckConstraint("length(group_id) = 16", name="group_id_size"),
        CheckConstraint("length(token) = 32", name="token_size"),
        CheckConstraint("revision >= 1", name="revision_positive"),
        CheckConstraint("first_seen <= last_seen", name="seen_order"),
    )


class ProcessedBatch(Base):
    """A submission or withdrawal already acknowledged: its digest and recorded result."""

    __tablename__ = "processed_batches"

    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    client_batch_id: Mapped[bytes] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the batch's canonical content (see matching.parse_batch).
    digest: Mapped[bytes]
    stored: Mapped[int | None] = mapped_column(Integer)
    unchanged: Mapped[int | None] = mapped_column(Integer)
    withdrawn: Mapped[int | None] = mapped_column(Integer)
    unknown: Mapped[int | None] = mapped_column(Integer)
    accepted_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("length(client_batch_id) = 16", name="client_batch_id_size"),
        CheckConstraint("length(digest) = 32", name="digest_size"),
        CheckConstraint(
            "(kind = 'submit' AND stored IS NOT NULL AND unchanged IS NOT NULL"
            " AND withdrawn IS NULL AND unknown IS NULL)"
            " OR (kind = 'withdraw' AND withdrawn IS NOT NULL AND unknown IS NOT NULL"
            " AND stored IS NULL AND unchanged IS NULL)",
            name="result_matches_kind",
        ),
    )


class MailboxHead(Base):
    """A party's mailbox: the last cursor handed out, the last acknowledged, closed or not."""

    __tablename__ = "mailbox_heads"

    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    head_cursor: Mapped[int] = mapped_column(BigInteger)
    acked_cursor: Mapped[int] = mapped_column(BigInteger)
    closed: Mapped[bool]

    __table_args__ = (
        CheckConstraint("acked_cursor >= 0 AND acked_cursor <= head_cursor", name="cursor_order"),
    )


class MailboxItem(Base):
    """One item in a party's mailbox, until the party acknowledges it."""

    __tablename__ = "mailbox_items"

    party_id: Mapped[int] = mapped_column(ForeignKey("mailbox_heads.party_id"), primary_key=True)
    cursor: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[bytes]
    enqueued_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("cursor >= 1", name="cursor_positive"),
        CheckConstraint(
            "kind IN ('hit_notice', 'envelope', 'covenant_update', 'covenant_timestamp',"
            " 'set_aside')",
            name="kind_known",
        ),
    )


class LatestNotice(Base):
    """The latest hit notice the broker put in a party's mailbox for a group, as signed.

    Kept after the party acknowledged it (the mailbox item itself is deleted then), so that
    ``ResyncHits`` can hand a node restored from an older backup the notices it had
    acknowledged since: one row per party and group, replaced by each newer notice, dropped
    with the party's mailbox when a covenant version removes it.
    """

    __tablename__ = "latest_notices"

    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    group_id: Mapped[bytes] = mapped_column(primary_key=True)
    # The group's revision count (hit_groups.revision) when the notice was issued: a newer
    # notice replaces an older one, never the other way round.
    revision: Mapped[int] = mapped_column(BigInteger)
    # The Signed HitNotice exactly as it went into the mailbox.
    payload: Mapped[bytes]

    __table_args__ = (
        CheckConstraint("length(group_id) = 16", name="group_id_size"),
        CheckConstraint("revision >= 1", name="revision_positive"),
        CheckConstraint("length(payload) >= 1", name="payload_not_empty"),
    )


class Resync(Base):
    """A party's last ``ResyncHits``: the mailbox head after the notices it put there again.
    Another is refused until the party has acknowledged that far, so a party keeps at most
    one copy of its latest notices waiting in its mailbox."""

    __tablename__ = "resyncs"

    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    head_cursor: Mapped[int] = mapped_column(BigInteger)
    resynced_at: Mapped[datetime]

    __table_args__ = (CheckConstraint("head_cursor >= 0", name="head_cursor_not_negative"),)


class SetAsideItem(Base):
    """A mailbox item the broker could not deliver (larger than one message), moved out of
    its party's mailbox and kept for the operator; a marker took its place."""

    __tablename__ = "set_aside_items"

    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    cursor: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[bytes]
    enqueued_at: Mapped[datetime]
    set_aside_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("cursor >= 1", name="cursor_positive"),
        CheckConstraint(
            "kind IN ('hit_notice', 'envelope', 'covenant_update', 'covenant_timestamp')",
            name="kind_known",
        ),
    )


class PartyUsage(Base):
    """A party's use of its submission quotas: the UTC day (since 1970) of its last counted
    submission, the token entries it submitted that day, the entries it holds.

    ``held`` moves with every insert and delete of its ``token_entries``, in the same
    transaction, so that the quota check never counts the index.
    """

    __tablename__ = "party_usage"

    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    day: Mapped[int] = mapped_column(Integer)
    submitted: Mapped[int] = mapped_column(BigInteger)
    held: Mapped[int] = mapped_column(BigInteger)
    notice_bytes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (
        CheckConstraint("day >= 0", name="day_not_negative"),
        CheckConstraint("submitted >= 0", name="submitted_not_negative"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("notice_bytes >= 0", name="notice_bytes_not_negative"),
    )


class PartyEnvelopeUsage(Base):
    """A party's use of its envelope quotas: the UTC day (since 1970) of its last counted
    envelope, the envelopes it sent that day and their bytes as stored; and the bytes of
    envelopes waiting unacknowledged in its own mailbox, from every sender.

    ``waiting_bytes`` moves with every insert, acknowledgement, set-aside and removal of
    its ``mailbox_items`` of kind ``envelope``, in the same transaction. A table of its
    own, apart from ``party_usage``, so that envelopes never wait for matching's locks.
    """

    __tablename__ = "envelope_usage"

    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    day: Mapped[int] = mapped_column(Integer)
    sent: Mapped[int] = mapped_column(BigInteger)
    sent_bytes: Mapped[int] = mapped_column(BigInteger)
    waiting_bytes: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("day >= 0", name="day_not_negative"),
        CheckConstraint("sent >= 0", name="sent_not_negative"),
        CheckConstraint("sent_bytes >= 0", name="sent_bytes_not_negative"),
        CheckConstraint("waiting_bytes >= 0", name="waiting_bytes_not_negative"),
    )


class RelayedEnvelope(Base):
    """An envelope already relayed: sender and message id, its digest, where it went."""

    __tablename__ = "relayed_envelopes"

    sender_id: Mapped[int] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    client_message_id: Mapped[bytes] = mapped_column(primary_key=True)
    digest: Mapped[bytes]
    recipient_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    cursor: Mapped[int] = mapped_column(BigInteger)
    accepted_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("length(client_message_id) = 16", name="client_message_id_size"),
        CheckConstraint("length(digest) = 32", name="digest_size"),
    )


class AuditLogEntry(AuditEntryColumns, Base):
    """One entry of the broker's hash-chained audit log (see :mod:`samenloop.policies.audit`)."""

    __tablename__ = "audit_entries"


class AuditLogCheckpoint(AuditCheckpointColumns, Base):
    """A signed checkpoint of the broker's audit log: its size and head, signed by its owner."""

    __tablename__ = "audit_checkpoints"


class CovenantVersion(Base):
    """A covenant version the broker accepted and published, as the signed bytes it received.

    At start the broker replays these over its root covenant, checking every
    signature again, so that a restart keeps the newest version.
    """

    __tablename__ = "covenant_versions"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    signed: Mapped[bytes]
    accepted_at: Mapped[datetime]

    __table_args__ = (CheckConstraint("version >= 1", name="version_positive"),)


class CovenantTimestamp(Base):
    """The newest covenant timestamp the broker holds for a covenant version (a serialized
    ``Signed`` ``CovenantTimestamp``, as received): handed out in ``Hello`` and
    ``GetCovenant``. The broker verified it when it took it, and verifies it again when
    it loads it; it cannot make one."""

    __tablename__ = "covenant_timestamps"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    signed: Mapped[bytes]
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("expires_at > issued_at", name="expires_after_issued"),
    )


class RelaySeat(Base):
    """A holder seat whose ``HolderChannel`` is open at a broker replica (PostgreSQL, several
    replicas): an evaluation that reaches another replica is relayed through
    :class:`RelayRequest`. A replica's rows count only while its listener's connection is
    alive (``pg_stat_activity``): a replica killed leaves rows nobody follows."""

    __tablename__ = "relay_seats"

    replica: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    holder_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    opened_at: Mapped[datetime]


class RelayRequest(Base):
    """One evaluation request relayed from the replica that took the ``Evaluate`` call to
    the replica that holds the holder's channel, and its answer: signed bytes the broker
    only forwards. Deleted by the requesting replica once answered or timed out."""

    __tablename__ = "relay_requests"

    id: Mapped[int] = mapped_column(RowId, primary_key=True)
    key_epoch: Mapped[int] = mapped_column(BigInteger)
    holder_index: Mapped[int] = mapped_column(Integer)
    request: Mapped[bytes]
    created_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    response: Mapped[bytes | None]
    failure: Mapped[int | None] = mapped_column(Integer)
    answered: Mapped[bool] = mapped_column(server_default=text("false"))


class BrokerSecret(Base):
    """A secret of the broker itself, shared by its replicas through the database: the key
    that keeps the tokens of every key epoch after the first in a space of their own
    (``token_lane``: see :meth:`TokenLanes.held_token`). Made by migration 0010."""

    __tablename__ = "broker_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes]
