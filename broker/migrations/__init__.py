"""Alembic migrations of the broker's database, applied by ``samenloop broker migrate``.

This package's directory is the Alembic script location:
``samenloop.policies.database.upgrade(engine, "samenloop.broker.migrations")``
finds it by name, so no ``alembic.ini`` is needed at run time. A new revision
goes in ``versions/`` (start from ``script.py.mako``, or from an Alembic
autogenerate draft against a scratch database), spells out its types instead
of importing the models, and is reviewed like code; the store tests check that
head creates exactly the models and that every revision goes down and up again.
"""
