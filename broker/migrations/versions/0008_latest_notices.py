"""The latest hit notice per party and group, kept for ``ResyncHits``; each party's last one.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

``latest_notices`` keeps, for each party and hit group, the latest signed notice the
broker put in the party's mailbox, after the party acknowledged it: a node restored
from an older backup asks for them again (``ResyncHits``) to catch up with what it had
acknowledged since. Notices issued before this revision are not in it: a group that
has not changed since is re-sent only once it changes again. ``resyncs`` holds each
party's last ``ResyncHits`` (the mailbox head after it): another is refused until the
party has acknowledged that far.

Written by hand, with types spelled out so that this revision never changes
when the models do; ``tests/test_broker_store.py`` checks that head matches
the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    t = "latest_notices"
    op.create_table(
        t,
        sa.Column("party_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.LargeBinary(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("length(group_id) = 16", name=op.f(f"ck_{t}_group_id_size")),
        sa.CheckConstraint("revision >= 1", name=op.f(f"ck_{t}_revision_positive")),
        sa.CheckConstraint("length(payload) >= 1", name=op.f(f"ck_{t}_payload_not_empty")),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f(f"fk_{t}_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("party_id", "group_id", name=op.f(f"pk_{t}")),
    )

    t = "resyncs"
    op.create_table(
        t,
        sa.Column("party_id", sa.Integer(), nullable=False),
        sa.Column("head_cursor", sa.BigInteger(), nullable=False),
        sa.Column("resynced_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("head_cursor >= 0", name=op.f(f"ck_{t}_head_cursor_not_negative")),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f(f"fk_{t}_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("party_id", name=op.f(f"pk_{t}")),
    )


def downgrade() -> None:
    op.drop_table("resyncs")
    op.drop_table("latest_notices")
