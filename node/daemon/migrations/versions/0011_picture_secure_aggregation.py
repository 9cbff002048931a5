"""The regional picture's secure aggregation (issue 13, finding 2).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

A viewer's node no longer holds any partner's own counts: partners send it one
additive share of their tables and the covenant's picture aggregator the other;
the viewer keeps only the sum over the aggregator's contributors. This adds, to
``picture_collections``, the request sent and the outcome of the one sum request
(``aggregate`` or ``aggregate_refusal``); and, at the aggregator, the shares it
holds (``picture_shares``) and the sum requests it answered (``picture_sums``).

Upgrading also erases what the finding was about: every partner's plaintext
table that an older version kept in ``picture_contributions`` (its body becomes
``-``; the viewer's own contribution, the first party asked, is kept). Those
collections then show only the viewer's own counts and list the partners as not
yet summed: collect again. A downgrade cannot bring them back.

Written by hand; ``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def _ck(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy): the table is referenced by picture_contributions,
    # and SQLite (3.35+) adds and drops columns without constraints in place.
    c = "picture_collections"
    op.add_column(c, sa.Column("request_body", sa.LargeBinary(), nullable=True))
    op.add_column(c, sa.Column("sum_requested_at", TIMESTAMP, nullable=True))
    op.add_column(c, sa.Column("aggregate", sa.LargeBinary(), nullable=True))
    op.add_column(c, sa.Column("aggregate_contributors", sa.Text(), nullable=True))
    op.add_column(c, sa.Column("aggregate_refusal", sa.Text(), nullable=True))

    s = "picture_shares"
    op.create_table(
        s,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("contributor", sa.String(length=64), nullable=False),
        sa.Column("request_digest", sa.LargeBinary(), nullable=False),
        sa.Column("share", sa.LargeBinary(), nullable=False),
        sa.Column("first_month", sa.String(length=7), nullable=False),
        sa.Column("last_month", sa.String(length=7), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        _ck(s, "request_id_size", "length(request_id) = 16"),
        _ck(s, "digest_size", "length(request_digest) = 32"),
        _ck(s, "share_not_empty", "length(share) >= 8"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_picture_shares")),
        sa.UniqueConstraint(
            "request_id", "contributor", name=op.f("uq_picture_shares_request_id_contributor")
        ),
    )
    m = "picture_sums"
    op.create_table(
        m,
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("contributors", sa.Text(), nullable=False),
        sa.Column("asked_at", TIMESTAMP, nullable=False),
        sa.Column("answered_at", TIMESTAMP, nullable=True),
        sa.Column("refusal_reason", sa.String(length=32), nullable=True),
        sa.Column("first_month", sa.String(length=7), nullable=True),
        sa.Column("last_month", sa.String(length=7), nullable=True),
        _ck(m, "request_id_size", "length(request_id) = 16"),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_picture_sums")),
    )
    op.create_index("ix_picture_sums_requester", m, ["requester", "first_month"])

    # Erase the partners' plaintext tables an older version kept (finding 2).
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT request_id, asked FROM picture_collections")).all()
    for request_id, asked in rows:
        parties = json.loads(asked)
        own = parties[0] if parties else ""
        conn.execute(
            sa.text(
                "UPDATE picture_contributions SET body = :blank "
                "WHERE request_id = :request_id AND contributor != :own"
            ),
            {"blank": b"-", "request_id": request_id, "own": own},
        )


def downgrade() -> None:
    op.drop_index("ix_picture_sums_requester", table_name="picture_sums")
    op.drop_table("picture_sums")
    op.drop_table("picture_shares")
    for column in (
        "aggregate_refusal",
        "aggregate_contributors",
        "aggregate",
        "sum_requested_at",
        "request_body",
    ):
        op.drop_column("picture_collections", column)
