"""Case coordination: cases, their members, actions and message log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09

Written by hand. Types and constraints are spelled out here (not imported from
the models) so that this revision never changes when the models do;
``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
PARTY = sa.String(length=64)


def _ck(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def _fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["case_id"], ["cases.id"], name=op.f(f"fk_{table}_case_id_cases")
    )


def upgrade() -> None:
    c = "cases"
    op.create_table(
        c,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("case_id", sa.LargeBinary(), nullable=False),
        sa.Column("coordinator", PARTY, nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("hit_group_id", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("access", sa.String(length=16), nullable=False),
        sa.Column("hit_notice", sa.LargeBinary(), nullable=True),
        sa.Column("opened_at", TIMESTAMP, nullable=False),
        sa.Column("closed_at", TIMESTAMP, nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        _ck(c, "case_id_size", "length(case_id) = 16"),
        _ck(c, "hit_group_id_size", "length(hit_group_id) = 16"),
        _ck(c, "coordinator_not_empty", "length(coordinator) >= 1"),
        _ck(c, "title_size", "length(title) >= 1 AND length(title) <= 256"),
        _ck(c, "state_known", "state IN ('open', 'closed')"),
        _ck(c, "access_known", "access IN ('member', 'removed')"),
        _ck(c, "closed_iff_closed_at", "(state = 'closed') = (closed_at IS NOT NULL)"),
        _ck(c, "outcome_iff_closed", "(state = 'closed') = (outcome IS NOT NULL)"),
        _ck(c, "outcome_size", "outcome IS NULL OR length(outcome) <= 4096"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.UniqueConstraint("case_id", name=op.f("uq_cases_case_id")),
    )
    op.create_index("ix_cases_coordinator_state", c, ["coordinator", "state"])

    m = "case_members"
    op.create_table(
        m,
        sa.Column("case_id", ROW_ID, nullable=False),
        sa.Column("party", PARTY, nullable=False),
        _ck(m, "party_not_empty", "length(party) >= 1"),
        _fk(m),
        sa.PrimaryKeyConstraint("case_id", "party", name=op.f("pk_case_members")),
    )

    a = "case_actions"
    op.create_table(
        a,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("case_id", ROW_ID, nullable=False),
        sa.Column("action_id", sa.LargeBinary(), nullable=False),
        sa.Column("owner", PARTY, nullable=False),
        sa.Column("intervention_type", sa.String(length=16), nullable=False),
        sa.Column("measure", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("deadline", TIMESTAMP, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("added_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("updated_by", PARTY, nullable=False),
        _ck(a, "action_id_size", "length(action_id) = 16"),
        _ck(a, "owner_not_empty", "length(owner) >= 1"),
        _ck(
            a,
            "intervention_type_known",
            "intervention_type IN ('bestuurlijk', 'fiscaal', 'strafrechtelijk', 'zorg', 'other')",
        ),
        _ck(a, "status_known", "status IN ('planned', 'in_progress', 'done', 'cancelled')"),
        _ck(a, "measure_size", "length(measure) >= 1 AND length(measure) <= 256"),
        _ck(a, "description_size", "length(description) <= 4096"),
        _ck(a, "note_size", "length(note) <= 4096"),
        _fk(a),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_actions")),
        sa.UniqueConstraint("case_id", "action_id", name=op.f("uq_case_actions_case_id_action_id")),
    )

    g = "case_messages"
    op.create_table(
        g,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("case_id", ROW_ID, nullable=False),
        sa.Column("message_id", sa.LargeBinary(), nullable=False),
        sa.Column("author", PARTY, nullable=False),
        sa.Column("author_officer", PARTY, nullable=False),
        sa.Column("author_sequence", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        _ck(g, "message_id_size", "length(message_id) = 16"),
        _ck(g, "author_not_empty", "length(author) >= 1"),
        _ck(g, "author_sequence_positive", "author_sequence >= 1"),
        _ck(
            g,
            "kind_known",
            "kind IN ('open', 'invite', 'action_add', 'action_update', 'close', 'member_remove')",
        ),
        _fk(g),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_messages")),
        sa.UniqueConstraint("message_id", name=op.f("uq_case_messages_message_id")),
        sa.UniqueConstraint(
            "case_id",
            "author",
            "author_sequence",
            name=op.f("uq_case_messages_case_id_author_author_sequence"),
        ),
    )


def downgrade() -> None:
    op.drop_table("case_messages")
    op.drop_table("case_actions")
    op.drop_table("case_members")
    op.drop_index("ix_cases_coordinator_state", table_name="cases")
    op.drop_table("cases")
