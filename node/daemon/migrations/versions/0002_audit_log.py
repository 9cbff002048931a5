"""Audit log: hash-chained entries and signed checkpoints.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Written by hand. Types and constraints are spelled out here (not imported from
the models) so that this revision never changes when the models do;
``tests/test_node_store.py`` checks that head matches the models. The node and the
broker get the same two tables (see ``samenloop.policies.audit_store``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_audit_entries_seq_positive")),
        sa.CheckConstraint("length(kind) >= 1", name=op.f("ck_audit_entries_kind_not_empty")),
        sa.CheckConstraint("length(actor) >= 1", name=op.f("ck_audit_entries_actor_not_empty")),
        sa.CheckConstraint("length(subject) <= 4160", name=op.f("ck_audit_entries_subject_size")),
        sa.CheckConstraint(
            "length(details) >= 2 AND length(details) <= 4096",
            name=op.f("ck_audit_entries_details_size"),
        ),
        sa.CheckConstraint("length(prev_hash) = 32", name=op.f("ck_audit_entries_prev_hash_size")),
        sa.CheckConstraint("length(hash) = 32", name=op.f("ck_audit_entries_hash_size")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_entries")),
        # No entry has two successors: the chain cannot fork.
        sa.UniqueConstraint("prev_hash", name=op.f("uq_audit_entries_prev_hash")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_entries_hash")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("size >= 1", name=op.f("ck_audit_checkpoints_size_positive")),
        sa.CheckConstraint(
            "length(signed) >= 1 AND length(signed) <= 1024",
            name=op.f("ck_audit_checkpoints_signed_size"),
        ),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_audit_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_entries")
