"""Mailbox items set aside, and each party's use of its submission quotas.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

``set_aside_items`` keeps the mailbox items the broker could not deliver (larger
than one message: stored before the size limits); a ``set_aside`` marker takes
each one's place in ``mailbox_items``. ``party_usage`` counts each party's token
entries submitted per UTC day and held, for the covenant's quotas; the upgrade
fills in what every party holds now.

Written by hand, with types spelled out so that this revision never changes
when the models do; ``tests/test_broker_store.py`` checks that head matches
the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
_KINDS = "'hit_notice', 'envelope', 'covenant_update'"


def _mailbox_kinds(kinds: str) -> None:
    with op.batch_alter_table("mailbox_items") as batch:
        batch.drop_constraint(op.f("ck_mailbox_items_kind_known"), type_="check")
        batch.create_check_constraint(op.f("ck_mailbox_items_kind_known"), f"kind IN ({kinds})")


def upgrade() -> None:
    _mailbox_kinds(f"{_KINDS}, 'set_aside'")
    op.create_table(
        "set_aside_items",
        sa.Column("party_id", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("enqueued_at", TIMESTAMP, nullable=False),
        sa.Column("set_aside_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("cursor >= 1", name=op.f("ck_set_aside_items_cursor_positive")),
        sa.CheckConstraint(f"kind IN ({_KINDS})", name=op.f("ck_set_aside_items_kind_known")),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f("fk_set_aside_items_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("party_id", "cursor", name=op.f("pk_set_aside_items")),
    )
    op.create_table(
        "party_usage",
        sa.Column("party_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("submitted", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("day >= 0", name=op.f("ck_party_usage_day_not_negative")),
        sa.CheckConstraint("submitted >= 0", name=op.f("ck_party_usage_submitted_not_negative")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_party_usage_held_not_negative")),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f("fk_party_usage_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("party_id", name=op.f("pk_party_usage")),
    )
    op.execute(
        "INSERT INTO party_usage (party_id, day, submitted, held)"
        " SELECT p.id, 0, 0, (SELECT count(*) FROM token_entries AS t WHERE t.party_id = p.id)"
        " FROM parties AS p"
    )


def downgrade() -> None:
    op.drop_table("party_usage")
    # Each marker not yet acknowledged becomes the item it stands for again: nothing kept
    # is lost (the older software may then stall on it, as it did before).
    aside = "FROM set_aside_items AS s WHERE s.party_id = m.party_id AND s.cursor = m.cursor"
    op.execute(
        f"UPDATE mailbox_items AS m SET kind = (SELECT s.kind {aside}),"  # noqa: S608
        f" payload = (SELECT s.payload {aside})"
        f" WHERE m.kind = 'set_aside' AND EXISTS (SELECT 1 {aside})"
    )
    op.execute("DELETE FROM mailbox_items WHERE kind = 'set_aside'")
    op.drop_table("set_aside_items")
    _mailbox_kinds(_KINDS)
