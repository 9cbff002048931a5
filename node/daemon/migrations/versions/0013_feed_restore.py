"""A node restored from a backup: its new feed epoch and how far it caught up.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

``feed_restore`` holds one row in a database that ``samenloop node restore``
installed: the feed epoch it started, the epoch and last feed sequence of the
backup, the mailbox head the broker answered ``ResyncHits`` with, and the last
feed sequence that may repeat what the application saw before the restore.

Written by hand; ``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def _ck(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def upgrade() -> None:
    t = "feed_restore"
    op.create_table(
        t,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_epoch", sa.BigInteger(), nullable=False),
        sa.Column("previous_epoch", sa.BigInteger(), nullable=False),
        sa.Column("base_seq", sa.BigInteger(), nullable=False),
        sa.Column("restored_at", TIMESTAMP, nullable=False),
        sa.Column("resync_head", sa.BigInteger(), nullable=True),
        sa.Column("restated_until_seq", sa.BigInteger(), nullable=True),
        _ck(t, "single_row", "id = 1"),
        _ck(t, "feed_epoch_range", "feed_epoch >= 2"),
        _ck(t, "previous_epoch_range", "previous_epoch >= 1"),
        _ck(t, "epoch_changes", "feed_epoch <> previous_epoch"),
        _ck(t, "base_seq_not_negative", "base_seq >= 0"),
        _ck(t, "resync_head_range", "resync_head IS NULL OR resync_head >= 0"),
        _ck(
            t,
            "caught_up_after_resync",
            "restated_until_seq IS NULL OR (resync_head IS NOT NULL"
            " AND restated_until_seq >= base_seq)",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{t}")),
    )


def downgrade() -> None:
    op.drop_table("feed_restore")
