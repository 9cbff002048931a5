"""The OPRF relay between broker replicas: open holder seats, relayed requests.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Several broker processes may serve one covenant from one PostgreSQL database.
``relay_seats`` says which replica holds which key holder's channel;
``relay_requests`` carries an evaluation request from the replica that took the
``Evaluate`` call to that replica, and the signed answer back (rows live for
seconds). Both are empty on SQLite, which serves one broker process.

Written by hand, with types spelled out so that this revision never changes
when the models do; ``tests/test_broker_store.py`` checks that head matches
the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "relay_seats",
        sa.Column("replica", sa.String(length=64), nullable=False),
        sa.Column("key_epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("holder_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("opened_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(
            "replica", "key_epoch", "holder_index", name=op.f("pk_relay_seats")
        ),
    )
    op.create_table(
        "relay_requests",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("key_epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder_index", sa.Integer(), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("failure", sa.Integer(), nullable=True),
        sa.Column("answered", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_requests")),
    )


def downgrade() -> None:
    op.drop_table("relay_requests")
    op.drop_table("relay_seats")
