"""Disclosures, the envelope outbox and accepted covenant versions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Written by hand. Types and constraints are spelled out here (not imported from
the models) so that this revision never changes when the models do;
``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
UNSENT = sa.text("sent_at IS NULL AND rejected_at IS NULL")


def _ck(table: str, name: str, condition: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(f"ck_{table}_{name}"))


def upgrade() -> None:
    d = "disclosures"
    op.create_table(
        d,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("request_id", sa.LargeBinary(), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("hit_group_id", sa.LargeBinary(), nullable=True),
        sa.Column("signal_ref", sa.LargeBinary(), nullable=False),
        sa.Column("signal_id", ROW_ID, nullable=True),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("requested_fields", sa.Text(), nullable=False),
        sa.Column("requester_officer", sa.String(length=64), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("covenant_version", sa.BigInteger(), nullable=False),
        sa.Column("released_fields", sa.Text(), nullable=True),
        sa.Column("withheld_fields", sa.Text(), nullable=True),
        sa.Column("rule_category", sa.String(length=64), nullable=True),
        sa.Column("refusal_reason", sa.String(length=32), nullable=True),
        sa.Column("refusal_message", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decision_approved", sa.Boolean(), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.Column("requested_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        _ck(d, "request_id_size", "length(request_id) = 16"),
        _ck(d, "direction_known", "direction IN ('outgoing', 'incoming')"),
        _ck(d, "state_known", "state IN ('sent', 'pending_approval', 'granted', 'refused')"),
        _ck(d, "sent_is_outgoing", "state <> 'sent' OR direction = 'outgoing'"),
        _ck(d, "parties_not_empty", "length(requester) >= 1 AND length(owner) >= 1"),
        _ck(d, "parties_differ", "requester <> owner"),
        _ck(d, "hit_group_id_size", "hit_group_id IS NULL OR length(hit_group_id) = 16"),
        _ck(d, "signal_ref_size", "length(signal_ref) = 16"),
        _ck(d, "signal_id_incoming", "signal_id IS NULL OR direction = 'incoming'"),
        _ck(d, "purpose_not_empty", "length(purpose) >= 1"),
        _ck(d, "justification_size", "length(justification) <= 4096"),
        _ck(d, "covenant_version_positive", "covenant_version >= 1"),
        _ck(d, "released_iff_granted", "(state = 'granted') = (released_fields IS NOT NULL)"),
        _ck(d, "withheld_iff_granted", "(state = 'granted') = (withheld_fields IS NOT NULL)"),
        _ck(d, "reason_iff_refused", "(state = 'refused') = (refusal_reason IS NOT NULL)"),
        _ck(d, "refusal_complete", "(refusal_reason IS NULL) = (refusal_message IS NULL)"),
        _ck(
            d,
            "rule_of_incoming_grant",
            "rule_category IS NULL OR (state = 'granted' AND direction = 'incoming')",
        ),
        _ck(
            d,
            "decision_complete",
            "(decided_by IS NULL) = (decided_at IS NULL)"
            " AND (decided_by IS NULL) = (decision_approved IS NULL)",
        ),
        _ck(d, "decision_of_incoming", "decided_by IS NULL OR direction = 'incoming'"),
        _ck(d, "four_eyes", "decided_by IS NULL OR decided_by <> requester_officer"),
        _ck(
            d,
            "finished_iff_final",
            "(state IN ('granted', 'refused')) = (finished_at IS NOT NULL)",
        ),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signals.id"], name=op.f("fk_disclosures_signal_id_signals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disclosures")),
        sa.UniqueConstraint("request_id", name=op.f("uq_disclosures_request_id")),
    )
    op.create_index("ix_disclosures_direction_state_id", d, ["direction", "state", "id"])
    op.create_index(
        "ix_disclosures_requester_direction_created_at",
        d,
        ["requester", "direction", "created_at"],
    )

    e = "envelope_outbox"
    op.create_table(
        e,
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("client_message_id", sa.LargeBinary(), nullable=False),
        sa.Column("recipient", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.Column("rejected_at", TIMESTAMP, nullable=True),
        _ck(e, "client_message_id_size", "length(client_message_id) = 16"),
        _ck(e, "recipient_not_empty", "length(recipient) >= 1"),
        _ck(e, "sealed_not_empty", "length(sealed) >= 1"),
        _ck(e, "settled_once", "sent_at IS NULL OR rejected_at IS NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_envelope_outbox")),
        sa.UniqueConstraint("client_message_id", name=op.f("uq_envelope_outbox_client_message_id")),
    )
    op.create_index(
        "ix_envelope_outbox_unsent",
        e,
        ["id"],
        sqlite_where=UNSENT,
        postgresql_where=UNSENT,
    )

    c = "covenant_versions"
    op.create_table(
        c,
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("signatures", sa.LargeBinary(), nullable=False),
        sa.Column("accepted_at", TIMESTAMP, nullable=False),
        _ck(c, "version_positive", "version >= 1"),
        _ck(c, "body_not_empty", "length(body) >= 1"),
        _ck(c, "signatures_not_empty", "length(signatures) >= 1"),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_covenant_versions")),
    )


def downgrade() -> None:
    op.drop_table("covenant_versions")
    op.drop_index("ix_envelope_outbox_unsent", table_name="envelope_outbox")
    op.drop_table("envelope_outbox")
    op.drop_index("ix_disclosures_requester_direction_created_at", table_name="disclosures")
    op.drop_index("ix_disclosures_direction_state_id", table_name="disclosures")
    op.drop_table("disclosures")
