"""Alembic environment of the node's migrations: the models are the target."""

from samenloop.node.daemon.models import Base
from samenloop.policies.database import run_migrations

run_migrations(Base.metadata)
