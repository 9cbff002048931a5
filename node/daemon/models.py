"""The node's shared tables and the one ``Base`` every capability's tables extend.

Each capability keeps its tables in its own ``models.py`` (``signals``, ``tokens``,
``disclosure``, ``picture``, ``cases``); here are the ``Base`` they all extend, so that
one ``Base.metadata`` holds every table, and the tables no single capability owns: the
inbox row (the mailbox cursor), the audit log, the envelope outbox and the covenant's
versions and timestamp. :func:`metadata` imports every capability's tables and returns
that one metadata: what the Alembic environment compares the migrations against
(``tests/test_node_store.py`` checks they agree).

Constraints live in the database (sizes, states and the columns each state
requires, uniqueness, foreign keys), timestamps are UTC
(:class:`UtcDateTime`).
"""

from __future__ import annotations

import enum
import importlib
from datetime import datetime
from typing import Any, ClassVar, Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    MetaData,
    String,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from samenloop.policies.audit_store import AuditCheckpointColumns, AuditEntryColumns
from samenloop.policies.database import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, RowId

#: The capabilities that keep tables of their own, each in its ``models.py``.
CAPABILITIES: Final = ("signals", "tokens", "disclosure", "picture", "cases", "network")

MAX_PARTY_CHARS: Final = 64
MAX_TEXT_BYTES: Final = 4096
MAX_REFUSAL_CHARS: Final = 32


def one_of(column: str, values: type[enum.StrEnum]) -> str:
    """A CHECK that ``column`` holds one of an enum's values."""
    return f"{column} IN ({', '.join(repr(str(v.value)) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = TYPE_ANNOTATION_MAP


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


#: The feed epoch of a node never restored from a backup.
ORIGINAL_FEED_EPOCH: Final = 1


class FeedRestore(Base):
    """The one row that says this node's database was restored from a backup, and how far
    it has caught up since; absent in a node never restored.

    ``node restore`` writes it into the copy it installs: a new random ``feed_epoch``
    (feed sequence numbers after ``base_seq`` are handed out again, so the application's
    position after it means nothing in the new epoch), the epoch of the backup it came
    from, and the backup's last ``feed_seq``. The uplink asks the broker to put the latest
    notice of every group in the mailbox again (``ResyncHits``) and records the mailbox
    head it answered (``resync_head``); once the node has processed that cursor, it holds
    every notice the application may have seen, and ``restated_until_seq`` closes the
    window of feed entries that may repeat what the application processed before.
    """

    __tablename__ = "feed_restore"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_epoch: Mapped[int] = mapped_column(BigInteger)
    previous_epoch: Mapped[int] = mapped_column(BigInteger)
    base_seq: Mapped[int] = mapped_column(BigInteger)
    restored_at: Mapped[datetime]
    resync_head: Mapped[int | None] = mapped_column(BigInteger)
    restated_until_seq: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("feed_epoch >= 2", name="feed_epoch_range"),
        CheckConstraint("previous_epoch >= 1", name="previous_epoch_range"),
        CheckConstraint("feed_epoch <> previous_epoch", name="epoch_changes"),
        CheckConstraint("base_seq >= 0", name="base_seq_not_negative"),
        CheckConstraint("resync_head IS NULL OR resync_head >= 0", name="resync_head_range"),
        CheckConstraint(
            "restated_until_seq IS NULL OR (resync_head IS NOT NULL"
            " AND restated_until_seq >= base_seq)",
            name="caught_up_after_resync",
        ),
    )


class AuditLogEntry(AuditEntryColumns, Base):
    """One entry of the node's hash-chained audit log (see :mod:`samenloop.policies.audit`)."""

    __tablename__ = "audit_entries"


class AuditLogCheckpoint(AuditCheckpointColumns, Base):
    """A signed checkpoint of the node's audit log: its size and head, signed by its owner."""

    __tablename__ = "audit_checkpoints"


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


def metadata() -> MetaData:
    """Every table of the node in one metadata: each capability's ``models`` imported
    (they import this module's ``Base``, so this one cannot import them at its top)."""
    for capability in CAPABILITIES:
        importlib.import_module(f"samenloop.node.{capability}.models")
    return Base.metadata
