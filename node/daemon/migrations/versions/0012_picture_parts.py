"""The regional picture's shares in parts: a vector larger than one message.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

A share (or the aggregator's sum) longer than ``LIMITS_MAX_PICTURE_SHARE_VALUES``
travels in up to ``LIMITS_MAX_PICTURE_SHARE_PARTS`` sealed messages. The receiver
keeps the parts in ``picture_parts`` until all are in; then it keeps the whole
vector where a whole one would be and deletes the parts, in one transaction.

Written by hand; ``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def _ck(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def upgrade() -> None:
    t = "picture_parts"
    op.create_table(
        t,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("part_index", sa.Integer(), nullable=False),
        sa.Column("part_count", sa.Integer(), nullable=False),
        sa.Column("total_values", sa.BigInteger(), nullable=False),
        sa.Column("vector_digest", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        _ck(t, "kind_known", "kind IN ('contribution', 'share', 'sum')"),
        _ck(t, "request_id_size", "length(request_id) = 16"),
        _ck(t, "digest_size", "length(vector_digest) = 32"),
        _ck(t, "index_in_count", "part_index >= 0 AND part_index < part_count"),
        _ck(t, "total_positive", "total_values >= 1"),
        _ck(t, "data_not_empty", "length(data) >= 8"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_picture_parts")),
        sa.UniqueConstraint(
            "kind",
            "request_id",
            "sender",
            "part_index",
            name=op.f("uq_picture_parts_kind_request_id_sender_part_index"),
        ),
    )


def downgrade() -> None:
    op.drop_table("picture_parts")
