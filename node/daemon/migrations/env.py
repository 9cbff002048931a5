"""Alembic environment of the node's migrations: every capability's tables are the target."""

from samenloop.node.daemon.models import metadata
from samenloop.policies.database import run_migrations

run_migrations(metadata())
