"""Each party's use of its envelope quotas, and the hit-notice bytes it caused.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

``envelope_usage`` counts, per party, the envelopes it sent on its last counted UTC
day and their bytes (for ``envelopes_per_day`` and ``envelope_bytes_per_day``), and
the bytes of envelopes waiting unacknowledged in its own mailbox (for
``envelope_bytes_waiting``); the upgrade fills that in from every mailbox.
``party_usage.notice_bytes`` counts the hit-notice bytes a party's submissions and
withdrawals put in other parties' mailboxes on its last counted day (for
``hit_notice_bytes_per_day``).

Written by hand, with types spelled out so that this revision never changes
when the models do; ``tests/test_broker_store.py`` checks that head matches
the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("party_usage") as batch:
        batch.add_column(
            sa.Column("notice_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.create_check_constraint(
            op.f("ck_party_usage_notice_bytes_not_negative"), "notice_bytes >= 0"
        )
    op.create_table(
        "envelope_usage",
        sa.Column("party_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("sent", sa.BigInteger(), nullable=False),
        sa.Column("sent_bytes", sa.BigInteger(), nullable=False),
        sa.Column("waiting_bytes", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("day >= 0", name=op.f("ck_envelope_usage_day_not_negative")),
        sa.CheckConstraint("sent >= 0", name=op.f("ck_envelope_usage_sent_not_negative")),
        sa.CheckConstraint(
            "sent_bytes >= 0", name=op.f("ck_envelope_usage_sent_bytes_not_negative")
        ),
        sa.CheckConstraint(
            "waiting_bytes >= 0", name=op.f("ck_envelope_usage_waiting_bytes_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f("fk_envelope_usage_party_id_parties")
        ),
        sa.PrimaryKeyConstraint("party_id", name=op.f("pk_envelope_usage")),
    )
    op.execute(
        "INSERT INTO envelope_usage (party_id, day, sent, sent_bytes, waiting_bytes)"
        " SELECT p.id, 0, 0, 0, (SELECT coalesce(sum(length(m.payload)), 0)"
        "  FROM mailbox_items AS m WHERE m.party_id = p.id AND m.kind = 'envelope')"
        " FROM parties AS p"
    )


def downgrade() -> None:
    op.drop_table("envelope_usage")
    with op.batch_alter_table("party_usage") as batch:
        batch.drop_constraint(op.f("ck_party_usage_notice_bytes_not_negative"), type_="check")
        batch.drop_column("notice_bytes")
