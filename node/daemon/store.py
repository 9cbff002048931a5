"""The node's store: every capability's repository over one database.

Each capability keeps its own repository beside its desk, owning its queries:
:class:`~samenloop.node.signals.store.SignalStore` (signals, the token outbox, the hit
inbox and feed), :class:`~samenloop.node.tokens.store.TokenStore` (key-holder counters
and replay cache), :class:`~samenloop.node.disclosure.store.DisclosureStore`,
:class:`~samenloop.node.picture.store.PictureStore`,
:class:`~samenloop.node.cases.store.CaseStore` and
:class:`~samenloop.node.daemon.covenants.CovenantStore`. All of them extend
:class:`~samenloop.node.daemon.database.Database`: the one engine, the one transaction
helper, the mailbox cursor, the envelope outbox and the audit log, so that a change
spanning two capabilities (a hit notice and the mailbox cursor, a disclosure and its
envelope) is still one transaction.

:class:`NodeStore` is all of them in one object, by inheritance rather than by
attributes (``store.signals.add_signals``): the daemon opens one and hands each desk
the same object typed as the repository it needs, and the many callers that use the
whole store (the uplink, the local API, the tests) keep calling ``store.add_signals``.
"""

from __future__ import annotations

from samenloop.node.cases.store import CaseStore
from samenloop.node.daemon.covenants import CovenantStore
from samenloop.node.daemon.database import MIGRATIONS
from samenloop.node.disclosure.store import DisclosureStore
from samenloop.node.picture.store import PictureStore
from samenloop.node.signals.store import SignalStore
from samenloop.node.tokens.store import TokenStore

__all__ = ["MIGRATIONS", "NodeStore"]


class NodeStore(SignalStore, TokenStore, DisclosureStore, PictureStore, CaseStore, CovenantStore):
    """Every repository of the node over one engine: what the daemon opens."""
