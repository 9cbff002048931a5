"""PostgreSQL: the token index in partitions by row id, so that inserts stay in cache.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

A new token's prefix lands on a random leaf of the prefix index. Once that index
outgrows the server's buffer pool (about five million tokens at the default 128 MB)
most of those leaves are misses, and a batch costs more the larger the index. With
``token_entries`` partitioned by ranges of row ids, inserts go to the newest
partition only, whose indexes stay cached; lookups, which the broker's prefix
filter keeps to the few tokens that may be held, visit every partition. The broker
creates the next partition before ids reach it (``TokenIndex.ensure_partitions``).

SQLite keeps one table: its B-tree lives in the broker's own page cache.
Same columns, checks and index names as before, so that the models still describe
the schema; ``tests/test_broker_store.py`` checks it, ignoring the partitions.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Row ids per partition; ``broker/token_index.py``'s ``PARTITION_IDS`` must be the same.
PARTITION_IDS = 1_000_000

_INDEXES = {
    "ix_token_entries_token_prefix": "token_prefix",
    "ix_token_entries_party_ref": "party_id, ref_bucket, id, ref_prefix",
    "ix_token_entries_expiry_bucket": "expiry_bucket",
}
_CHECKS = (
    "CONSTRAINT ck_token_entries_key_epoch_range"
    " CHECK (key_epoch >= 1 AND key_epoch <= 4294967295),"
    " CONSTRAINT ck_token_entries_signal_ref_size CHECK (length(signal_ref) = 16),"
    " CONSTRAINT ck_token_entries_token_size CHECK (length(token) = 32),"
    " CONSTRAINT ck_token_entries_ref_bucket_range CHECK (ref_bucket >= 0 AND ref_bucket <= 255)"
)
_COLUMNS = (
    "id bigint NOT NULL DEFAULT nextval('token_entries_id_seq'::regclass),"
    " token_prefix bigint NOT NULL, party_id integer NOT NULL, ref_bucket smallint NOT NULL,"
    " ref_prefix bigint NOT NULL, token bytea NOT NULL, signal_ref bytea NOT NULL,"
    " key_epoch bigint NOT NULL, expires_at timestamp with time zone NOT NULL,"
    " expiry_bucket integer NOT NULL, sealed_attributes bytea"
)


def _set_aside() -> None:
    """Rename the current table, its key and indexes, so that the new one takes the names."""
    op.execute("ALTER TABLE token_entries RENAME TO token_entries_old")
    op.execute("ALTER TABLE token_entries_old RENAME CONSTRAINT pk_token_entries TO pk_old")
    for name in _INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_old")
    for check in ("key_epoch_range", "signal_ref_size", "token_size", "ref_bucket_range"):
        op.execute(
            f"ALTER TABLE token_entries_old RENAME CONSTRAINT ck_token_entries_{check}"
            f" TO ck_old_{check}"
        )


def _create(partitioning: str) -> None:
    """The table with its key, checks and indexes, partitioned as ``partitioning`` says."""
    op.execute(
        f"CREATE TABLE token_entries ({_COLUMNS}, CONSTRAINT pk_token_entries PRIMARY KEY (id),"
        f" {_CHECKS}){partitioning}"
    )
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON token_entries ({columns})")


def _move_rows() -> None:
    """Copy the rows over, hand the id sequence to the new table, drop the old one."""
    op.execute("INSERT INTO token_entries SELECT * FROM token_entries_old")
    op.execute("ALTER SEQUENCE token_entries_id_seq OWNED BY token_entries.id")
    op.execute("DROP TABLE token_entries_old")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _set_aside()
    _create(" PARTITION BY RANGE (id)")
    newest = op.get_bind().exec_driver_sql("SELECT coalesce(max(id), 0) FROM token_entries_old")
    last = int(newest.scalar_one())
    # Partitions for the rows there are, and one ahead.
    for start in range(0, last + PARTITION_IDS + 1, PARTITION_IDS):
        op.execute(
            f"CREATE TABLE token_entries_p{start} PARTITION OF token_entries"
            f" FOR VALUES FROM ({start}) TO ({start + PARTITION_IDS})"
        )
    _move_rows()


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _set_aside()
    _create("")
    _move_rows()  # the partitions go with the partitioned table
