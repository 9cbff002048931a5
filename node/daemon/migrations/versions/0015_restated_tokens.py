"""The tokens of a staged key epoch, beside the identifiers' current ones.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

While a rotation of the OPRF key is staged, the node re-tokenises every live
identifier under the staged epoch and submits it under the identifier's own
signal ref; ``restated_tokens`` keeps that token (and its hit proof key) until
the covenant switches to the epoch, when it becomes the identifier's token
(docs/operations.md "Rotating the OPRF key").

Written by hand; ``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
T = "restated_tokens"


def upgrade() -> None:
    op.create_table(
        T,
        sa.Column("identifier_id", ROW_ID, autoincrement=False, nullable=False),
        sa.Column("key_epoch", sa.BigInteger(), nullable=False),
        sa.Column("token", sa.LargeBinary(), nullable=False),
        sa.Column("proof_key", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint(
            "key_epoch >= 1 AND key_epoch <= 4294967295", name=op.f(f"ck_{T}_key_epoch_range")
        ),
        sa.CheckConstraint("length(token) = 32", name=op.f(f"ck_{T}_token_size")),
        sa.CheckConstraint(
            "proof_key IS NULL OR length(proof_key) = 32", name=op.f(f"ck_{T}_proof_key_size")
        ),
        sa.ForeignKeyConstraint(
            ["identifier_id"],
            ["signal_identifiers.id"],
            name=op.f(f"fk_{T}_identifier_id_signal_identifiers"),
        ),
        sa.PrimaryKeyConstraint("identifier_id", name=op.f(f"pk_{T}")),
    )


def downgrade() -> None:
    op.drop_table(T)
