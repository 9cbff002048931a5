"""Covenant timestamps: the newest per covenant version, and their mailbox items.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

``covenant_timestamps`` keeps the newest covenant timestamp (a signed statement
that a version is current, by the covenant's timestamp key) the broker holds per
version. Mailbox items may now be ``covenant_timestamp`` items, whose kind name
needs a wider column (32 characters, in ``set_aside_items`` too).

Written by hand, with types spelled out so that this revision never changes
when the models do; ``tests/test_broker_store.py`` checks that head matches
the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
_KINDS = "'hit_notice', 'envelope', 'covenant_update'"
_NEW = "'covenant_timestamp'"


def _kinds(table: str, kinds: str, *, was: int, length: int) -> None:
    """Set the kinds a table's ``kind`` column allows, and its length (``was`` before)."""
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(op.f(f"ck_{table}_kind_known"), type_="check")
        batch.alter_column(
            "kind",
            existing_type=sa.String(length=was),
            type_=sa.String(length=length),
            existing_nullable=False,
        )
        batch.create_check_constraint(op.f(f"ck_{table}_kind_known"), f"kind IN ({kinds})")


def upgrade() -> None:
    _kinds("mailbox_items", f"{_KINDS}, {_NEW}, 'set_aside'", was=16, length=32)
    _kinds("set_aside_items", f"{_KINDS}, {_NEW}", was=16, length=32)
    op.create_table(
        "covenant_timestamps",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("accepted_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_covenant_timestamps_version_positive")),
        sa.CheckConstraint(
            "expires_at > issued_at", name=op.f("ck_covenant_timestamps_expires_after_issued")
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_covenant_timestamps")),
    )


def downgrade() -> None:
    op.drop_table("covenant_timestamps")
    # Timestamp items mean nothing to the older software: they go, acknowledged or not
    # (a node of that version would skip them as of an unknown kind).
    op.execute("DELETE FROM set_aside_items WHERE kind = 'covenant_timestamp'")
    op.execute("DELETE FROM mailbox_items WHERE kind = 'covenant_timestamp'")
    _kinds("set_aside_items", _KINDS, was=32, length=16)
    _kinds("mailbox_items", f"{_KINDS}, 'set_aside'", was=32, length=16)
