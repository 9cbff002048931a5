"""Hit proof keys: the second key from each identifier's OPRF output (issue 12, finding 1).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

A table of its own rather than a column of ``signal_identifiers``: on SQLite a
new column with its CHECK constraint would mean rebuilding that table, which
other tables reference. Identifiers tokenised before this revision get no row
(their OPRF output is gone): disclosure requests about them are refused until
they are tokenised again. Written by hand, types and constraints spelled out.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hit_proof_keys",
        sa.Column("identifier_id", ROW_ID, autoincrement=False, nullable=False),
        sa.Column("proof_key", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("length(proof_key) = 32", name=op.f("ck_hit_proof_keys_proof_key_size")),
        sa.ForeignKeyConstraint(
            ["identifier_id"],
            ["signal_identifiers.id"],
            name=op.f("fk_hit_proof_keys_identifier_id_signal_identifiers"),
        ),
        sa.PrimaryKeyConstraint("identifier_id", name=op.f("pk_hit_proof_keys")),
    )


def downgrade() -> None:
    op.drop_table("hit_proof_keys")
