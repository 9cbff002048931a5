"""A key holder counts its daily evaluations per key epoch.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

While a rotation of the OPRF key is staged a holder serves two epochs, and the
nodes re-tokenise every live identifier under the staged one: counted per
epoch, that re-tokenisation has its own daily allowance and ordinary imports
under the current epoch are not starved (docs/operations.md "Rotating the OPRF
key"). ``holder_usage`` gets ``key_epoch`` in its primary key; rows from before
(and the summed refusals, which no quota reads) have epoch 0, which counts
towards the current epoch. Down, the rows of a day are summed again.

Written by hand; ``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

T = "holder_usage"


def upgrade() -> None:
    # Batch mode: SQLite changes a primary key only by rebuilding the table.
    with op.batch_alter_table(T, recreate="always") as batch:
        batch.add_column(
            sa.Column("key_epoch", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.drop_constraint(op.f(f"pk_{T}"), type_="primary")
        batch.create_primary_key(op.f(f"pk_{T}"), ["party", "day", "key_epoch"])
        batch.create_check_constraint(
            op.f(f"ck_{T}_key_epoch_range"), "key_epoch >= 0 AND key_epoch <= 4294967295"
        )


def downgrade() -> None:
    # The rows of one party and day, of every epoch, become one again.
    op.execute(
        """
        UPDATE holder_usage SET
          requests_served = (SELECT SUM(u.requests_served) FROM holder_usage u
                             WHERE u.party = holder_usage.party AND u.day = holder_usage.day),
          elements_evaluated = (SELECT SUM(u.elements_evaluated) FROM holder_usage u
                                WHERE u.party = holder_usage.party AND u.day = holder_usage.day),
          requests_refused = (SELECT SUM(u.requests_refused) FROM holder_usage u
                              WHERE u.party = holder_usage.party AND u.day = holder_usage.day)
        """
    )
    op.execute(
        """
        DELETE FROM holder_usage WHERE key_epoch <> (
          SELECT MIN(u.key_epoch) FROM holder_usage u
          WHERE u.party = holder_usage.party AND u.day = holder_usage.day)
        """
    )
    with op.batch_alter_table(T, recreate="always") as batch:
        batch.drop_constraint(op.f(f"ck_{T}_key_epoch_range"), type_="check")
        batch.drop_constraint(op.f(f"pk_{T}"), type_="primary")
        batch.create_primary_key(op.f(f"pk_{T}"), ["party", "day"])
        batch.drop_column("key_epoch")
