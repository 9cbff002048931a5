"""Alembic environment of the broker's migrations: the models are the target."""

from samenloop.broker.models import Base
from samenloop.policies.database import run_migrations

run_migrations(Base.metadata)
