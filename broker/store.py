"""The broker's durable store: one repository per capability over one database.

:class:`BrokerStore` only composes them; each is an attribute, and holds the same
:class:`~samenloop.broker.database.BrokerDatabase` (engine, transaction helper, party
cache, audit log), so that an operation spanning two capabilities is one transaction:

* ``tokens`` (:class:`~samenloop.broker.token_store.TokenStore`, over
  :class:`~samenloop.broker.token_index.TokenIndex`): submissions, withdrawals, the
  expiry sweep, a party's removal, the token index and its prefix filter, the figures;
* ``retention`` (:class:`~samenloop.broker.group_retention.GroupRetention`): forgetting
  hit groups closed longer than any backup needs, with the notices kept of them;
* ``rotation`` (:class:`~samenloop.broker.token_rotation.KeyRotation`): rotating the
  OPRF key, readiness per party and the switch of key epoch;
* ``mailboxes`` (:class:`~samenloop.broker.mailbox_store.MailboxStore`): each party's
  mailbox, its envelope quota counts, the relayed envelopes, items set aside;
* ``covenants`` (:class:`~samenloop.broker.covenant_store.CovenantStore`): the covenant
  versions accepted and the covenant timestamps verified;
* ``audit``: the audit log (:class:`~samenloop.policies.audit_store.AuditLog`), which
  every write appends to in its own transaction.

Every public method of a repository is one database transaction, and returns only after
it committed: what the broker acknowledges is durable.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Engine

from samenloop.broker.covenant_store import CovenantStore
from samenloop.broker.database import BrokerDatabase
from samenloop.broker.group_retention import GroupRetention
from samenloop.broker.mailbox_store import MailboxStore
from samenloop.broker.token_rotation import KeyRotation
from samenloop.broker.token_store import TokenStore
from samenloop.policies.audit_store import AuditLog


class BrokerStore:
    """The broker's repositories, composed over one :class:`BrokerDatabase`."""

    def __init__(self, engine: Engine, *, owner: str = "broker") -> None:
        """``owner`` is the broker's id: the actor of the audit entries of its own doing."""
        self.database: Final = BrokerDatabase(engine, owner=owner)
        self.mailboxes: Final = MailboxStore(self.database)
        self.tokens: Final = TokenStore(self.database, self.mailboxes)
        self.retention: Final = GroupRetention(self.database, self.mailboxes)
        self.rotation: Final = KeyRotation(self.database, self.tokens)
        self.covenants: Final = CovenantStore(self.database, self.mailboxes, self.tokens)
        self.audit: Final[AuditLog] = self.database

    @property
    def engine(self) -> Engine:
        return self.database.engine
