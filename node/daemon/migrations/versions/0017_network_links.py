"""The subject network: the links a node reported to each viewer, and the links a viewer
was told of (docs/network.md).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08

``network_links_sent`` keeps, per viewer and hit group pair, the count and revision the
node last reported, so that each change is sealed and queued once, in the transaction
that records it. ``network_links`` keeps, per reporter and pair, the latest link a
viewer accepted. Neither names a signal. ``cases.linked_group_ids``: the other hit groups
of a case opened on a component of the network (16 bytes each, concatenated).

Written by hand; ``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SENT = "network_links_sent"
LINKS = "network_links"


def _pair_checks(t: str) -> list[sa.CheckConstraint]:
    return [
        sa.CheckConstraint("length(group_a) = 16", name=op.f(f"ck_{t}_group_a_size")),
        sa.CheckConstraint("length(group_b) = 16", name=op.f(f"ck_{t}_group_b_size")),
        sa.CheckConstraint("group_a < group_b", name=op.f(f"ck_{t}_groups_ordered")),
        sa.CheckConstraint("count >= 0", name=op.f(f"ck_{t}_count_not_negative")),
        sa.CheckConstraint("revision >= 1", name=op.f(f"ck_{t}_revision_positive")),
    ]


def upgrade() -> None:
    op.create_table(
        SENT,
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("group_a", sa.LargeBinary(), nullable=False),
        sa.Column("group_b", sa.LargeBinary(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *_pair_checks(SENT),
        sa.PrimaryKeyConstraint("recipient", "group_a", "group_b", name=op.f(f"pk_{SENT}")),
    )
    op.create_table(
        LINKS,
        sa.Column("reporter", sa.String(64), nullable=False),
        sa.Column("group_a", sa.LargeBinary(), nullable=False),
        sa.Column("group_b", sa.LargeBinary(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("type_a", sa.String(16), nullable=False),
        sa.Column("type_b", sa.String(16), nullable=False),
        sa.Column("score_a", sa.Float(), nullable=True),
        sa.Column("score_b", sa.Float(), nullable=True),
        sa.Column("first_reported", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_reported", sa.DateTime(timezone=True), nullable=False),
        *_pair_checks(LINKS),
        sa.CheckConstraint(
            "first_reported <= last_reported", name=op.f(f"ck_{LINKS}_reported_order")
        ),
        sa.PrimaryKeyConstraint("reporter", "group_a", "group_b", name=op.f(f"pk_{LINKS}")),
    )
    op.create_index("ix_network_links_group_a", LINKS, ["group_a"])
    op.create_index("ix_network_links_group_b", LINKS, ["group_b"])
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("linked_group_ids", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("linked_group_ids")
    op.drop_index("ix_network_links_group_b", table_name=LINKS)
    op.drop_index("ix_network_links_group_a", table_name=LINKS)
    op.drop_table(LINKS)
    op.drop_table(SENT)
