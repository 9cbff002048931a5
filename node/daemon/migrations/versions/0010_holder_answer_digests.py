"""The key holder's replay cache keeps the digest of each answered request's signed body.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-16

Issue 12, the fresh review's broker-operator finding: an operator that dropped a
holder's answer made the node ask again under a new request id, which the
holder counted again. A node now first sends the same signed request again; a
holder recognises the very request it answered by this digest and answers it
again uncounted (any other request under the same key is still a REPLAY). Rows
stored before have no digest: their repeats stay REPLAY. Numbered 0010 because
another change of issue 12 adds a 0009; until they are chained this revises
0008. Written by hand; ``tests/test_node_store.py`` checks that head matches the
models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite adds a column with a CHECK constraint only by rebuilding the table
    # (nothing references it).
    with op.batch_alter_table("holder_answers") as batch:
        batch.add_column(sa.Column("request_digest", sa.LargeBinary(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_holder_answers_request_digest_size"),
            "request_digest IS NULL OR length(request_digest) = 32",
        )


def downgrade() -> None:
    with op.batch_alter_table("holder_answers") as batch:
        batch.drop_constraint(op.f("ck_holder_answers_request_digest_size"), type_="check")
        batch.drop_column("request_digest")
