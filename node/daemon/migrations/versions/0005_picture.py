"""The regional picture: collections, contributions, answers and the privacy budget ledger.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09

Written by hand. Types and constraints are spelled out here (not imported from
the models) so that this revision never changes when the models do;
``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def _ck(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def upgrade() -> None:
    c = "picture_collections"
    op.create_table(
        c,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("first_month", sa.String(length=7), nullable=False),
        sa.Column("last_month", sa.String(length=7), nullable=False),
        sa.Column("measures", sa.String(length=1024), nullable=False),
        sa.Column("dimensions", sa.String(length=1024), nullable=False),
        sa.Column("asked", sa.Text(), nullable=False),
        sa.Column("officer", sa.String(length=64), nullable=False),
        sa.Column("covenant_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        _ck(c, "request_id_size", "length(request_id) = 16"),
        _ck(
            c,
            "period_order",
            "length(first_month) = 7 AND length(last_month) = 7 AND first_month <= last_month",
        ),
        _ck(c, "covenant_version_positive", "covenant_version >= 1"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_picture_collections")),
        sa.UniqueConstraint("request_id", name=op.f("uq_picture_collections_request_id")),
    )
    op.create_index("ix_picture_collections_period", c, ["first_month", "last_month", "id"])

    p = "picture_contributions"
    op.create_table(
        p,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("contributor", sa.String(length=64), nullable=False),
        sa.Column("contributor_role", sa.String(length=64), nullable=False),
        sa.Column("refusal_reason", sa.String(length=32), nullable=True),
        sa.Column("refusal_message", sa.Text(), nullable=True),
        sa.Column("epsilon_spent", sa.Double(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        _ck(p, "contributor_not_empty", "length(contributor) >= 1"),
        _ck(p, "refusal_complete", "(refusal_reason IS NULL) = (refusal_message IS NULL)"),
        _ck(p, "epsilon_not_negative", "epsilon_spent >= 0"),
        _ck(p, "body_not_empty", "length(body) >= 1"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["picture_collections.request_id"],
            name=op.f("fk_picture_contributions_request_id_picture_collections"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_picture_contributions")),
        sa.UniqueConstraint(
            "request_id",
            "contributor",
            name=op.f("uq_picture_contributions_request_id_contributor"),
        ),
    )

    a = "picture_answers"
    op.create_table(
        a,
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("refusal_reason", sa.String(length=32), nullable=True),
        sa.Column("epsilon_spent", sa.Double(), nullable=False),
        sa.Column("answered_at", TIMESTAMP, nullable=False),
        _ck(a, "request_id_size", "length(request_id) = 16"),
        _ck(a, "outcome_known", "outcome IN ('contributed', 'refused')"),
        _ck(a, "reason_iff_refused", "(outcome = 'refused') = (refusal_reason IS NOT NULL)"),
        _ck(a, "epsilon_not_negative", "epsilon_spent >= 0"),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_picture_answers")),
    )

    b = "picture_budget"
    op.create_table(
        b,
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("spent_units", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        _ck(b, "month_size", "length(month) = 7"),
        _ck(b, "spent_not_negative", "spent_units >= 0"),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_picture_budget")),
    )


def downgrade() -> None:
    op.drop_table("picture_budget")
    op.drop_table("picture_answers")
    op.drop_table("picture_contributions")
    op.drop_index("ix_picture_collections_period", table_name="picture_collections")
    op.drop_table("picture_collections")
