"""Covenant versions the broker accepted and published.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Written by hand, with types spelled out so that this revision never changes
when the models do; ``tests/test_broker_store.py`` checks that head matches
the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "covenant_versions",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_covenant_versions_version_positive")),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_covenant_versions")),
    )


def downgrade() -> None:
    op.drop_table("covenant_versions")
