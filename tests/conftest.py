"""Shared fixtures: real databases; hypothesis without a deadline.

PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth, database ``test``) is
part of every machine and of CI: a test that needs it FAILS when it cannot be
reached; it never skips. Each test module that asks for ``postgres_url`` gets a
fresh database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from psycopg import sql

# Hypothesis fails an example that runs longer than its deadline (200 ms by default): a
# timed assertion, which this project keeps out of tests (speed claims go in benchmarks).
# On a shared 2-core machine an example that opens a database or builds a filter can take
# that long, and hypothesis then reports the property as flaky (it passes on replay). So no
# property test has a deadline; each still runs its examples to the end.
settings.register_profile("samenloop", deadline=None)
settings.load_profile("samenloop")

POSTGRES_ADMIN = os.environ.get(
    "SAMENLOOP_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is required and cannot be reached ({POSTGRES_ADMIN}): {error}")


def _fresh_database() -> Iterator[str]:
    name = f"samenloop_t_{secrets.token_hex(6)}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        info = admin.info
        url = f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
    try:
        yield url
    finally:
        with _admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, empty PostgreSQL database for this test module."""
    yield from _fresh_database()


@pytest.fixture
def own_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this one test, for what a module's cannot take
    back (sequences moved, tables added)."""
    yield from _fresh_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The SQLAlchemy URL of a fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test once on SQLite (a fresh file) and once on PostgreSQL (the module's
    database: clean up what the test leaves, or use a fixture that does)."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    return str(request.getfixturevalue(fixture))
