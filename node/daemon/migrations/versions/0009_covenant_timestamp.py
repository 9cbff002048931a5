"""The newest covenant timestamp the node verified (issue 12: a withheld covenant version).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

One row: the signed statement, by the covenant's timestamp key, that the
version the node holds is current, with its times. While the node holds none
for its version that is unexpired, it seals and releases nothing new. Written
by hand, types and constraints spelled out.
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


def upgrade() -> None:
    op.create_table(
        "covenant_timestamp",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_covenant_timestamp_single_row")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_covenant_timestamp_version_positive")),
        sa.CheckConstraint(
            "expires_at > issued_at", name=op.f("ck_covenant_timestamp_expires_after_issued")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_covenant_timestamp")),
    )


def downgrade() -> None:
    op.drop_table("covenant_timestamp")
