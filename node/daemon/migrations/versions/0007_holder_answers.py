"""The key holder's replay cache: the requests it answered, until they can no longer be fresh.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-14

Issue 12, finding 8: the replay cache was kept in memory only, so after a
restart a broker could replay requests answered within the freshness window
and burn the requester's quota. Each answered (requester, request id, holder
index) is now stored in the transaction that counts it, before the answer is
sent, and loaded at start. Written by hand; ``tests/test_node_store.py``
checks that head matches the models.
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


def upgrade() -> None:
    t = "holder_answers"
    op.create_table(
        t,
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("holder_index", sa.Integer(), nullable=False),
        sa.Column("keep_until", TIMESTAMP, nullable=False),
        sa.CheckConstraint("length(requester) >= 1", name=op.f(f"ck_{t}_requester_not_empty")),
        sa.CheckConstraint("length(request_id) = 16", name=op.f(f"ck_{t}_request_id_size")),
        sa.CheckConstraint(
            "holder_index >= 1 AND holder_index <= 16", name=op.f(f"ck_{t}_holder_index_range")
        ),
        sa.PrimaryKeyConstraint("requester", "request_id", "holder_index", name=op.f(f"pk_{t}")),
    )
    op.create_index("ix_holder_answers_keep_until", t, ["keep_until"])


def downgrade() -> None:
    op.drop_index("ix_holder_answers_keep_until", table_name="holder_answers")
    op.drop_table("holder_answers")
