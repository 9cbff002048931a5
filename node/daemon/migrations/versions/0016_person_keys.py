"""Person keys: identifier types as long as a person key kind's wire name, and the other
parties of each hit (what probable person hits are combined from).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

A covenant's ``[person_matching] kinds`` adds, per ``person`` identifier, one identifier
per kind turned on, typed by the kind's wire name (``person.names_year_month``: longer
than the 16 characters the type had). ``hit_parties`` keeps, per hit group, the labels of
the other members the latest notice shows (party id, else role, else hidden): a probable
person hit is the set of kinds on which one other party shares a group with one of the
node's signals (docs/linkage.md). ``disclosures.person_score`` keeps the requester's score
of the probable person hit a request is about, for the owner's officers to see.

Written by hand; ``tests/test_node_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

T = "hit_parties"


def upgrade() -> None:
    with op.batch_alter_table("signal_identifiers") as batch:
        batch.alter_column(
            "type", existing_type=sa.String(16), type_=sa.String(32), existing_nullable=False
        )
    op.create_table(
        T,
        sa.Column("group_id", sa.LargeBinary(), nullable=False),
        sa.Column("party", sa.String(80), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["hits.group_id"], name=op.f(f"fk_{T}_group_id_hits")
        ),
        sa.PrimaryKeyConstraint("group_id", "party", name=op.f(f"pk_{T}")),
    )
    with op.batch_alter_table("disclosures") as batch:
        batch.add_column(sa.Column("person_score", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("disclosures") as batch:
        batch.drop_column("person_score")
    op.drop_table(T)
    # Person key identifiers have no type of 16 characters: they go with the feature.
    op.execute(
        "DELETE FROM hit_proof_keys WHERE identifier_id IN "
        "(SELECT id FROM signal_identifiers WHERE type LIKE 'person.%')"
    )
    op.execute(
        "DELETE FROM restated_tokens WHERE identifier_id IN "
        "(SELECT id FROM signal_identifiers WHERE type LIKE 'person.%')"
    )
    op.execute(
        "UPDATE hit_refs SET identifier_id = NULL WHERE identifier_id IN "
        "(SELECT id FROM signal_identifiers WHERE type LIKE 'person.%')"
    )
    op.execute(
        "DELETE FROM outbox_entries WHERE identifier_id IN "
        "(SELECT id FROM signal_identifiers WHERE type LIKE 'person.%')"
    )
    op.execute("DELETE FROM signal_identifiers WHERE type LIKE 'person.%'")
    with op.batch_alter_table("signal_identifiers") as batch:
        batch.alter_column(
            "type", existing_type=sa.String(32), type_=sa.String(16), existing_nullable=False
        )
