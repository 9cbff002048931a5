"""Alembic migrations of the broker's database; applied by ``samenloop broker migrate``.

This directory is the Alembic script location (``policies.database.upgrade``
finds it by package name). Write a new revision with
``alembic -c /dev/null -x ... revision`` or by hand from ``script.py.mako``,
review it like code, and extend ``tests/test_broker_store.py`` when it moves data.
"""
