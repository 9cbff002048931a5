"""A key of the broker's own that keeps each key epoch's tokens in a space of their own.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

While a rotation of the OPRF key is staged a token value could be held under one key epoch
only, so the refusal of another epoch's entry on it (``token.other_epoch``) told a partner
whether anyone held a guessed subject, and nobody was told of the probe. The broker keeps
the tokens of every epoch after the first as HMAC-SHA256 under this key of the epoch and
the token (``TokenLanes.held_token``), which no party can compute: no value a party sends
under one epoch can meet what is held under another. The first epoch's tokens stay as they
are (nothing stored is rewritten). The key is made here, once, from the operating system's
CSPRNG; every replica reads it from this table.

Written by hand, with types spelled out so that this revision never changes when the
models do; ``tests/test_broker_store.py`` checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from samenloop.policies import crypto

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    secrets = op.create_table(
        "broker_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_broker_secrets")),
    )
    op.bulk_insert(secrets, [{"name": "token_lane", "value": crypto.secretbox_key()}])


def downgrade() -> None:
    op.drop_table("broker_secrets")
