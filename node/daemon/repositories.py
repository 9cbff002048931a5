"""The node's repositories: one per capability, all over one engine.

Each capability keeps its own repository beside its desk, owning its tables and queries:
:class:`~samenloop.node.signals.store.SignalStore` (signals, the token outbox, the hit
inbox and feed), :class:`~samenloop.node.tokens.store.TokenStore` (key-holder counters
and replay cache), :class:`~samenloop.node.disclosure.store.DisclosureStore`,
:class:`~samenloop.node.picture.store.PictureStore`,
:class:`~samenloop.node.cases.store.CaseStore`,
:class:`~samenloop.node.network.store.NetworkStore` and
:class:`~samenloop.node.daemon.covenants.CovenantStore`. Each extends
:class:`~samenloop.node.daemon.database.Database`, which holds what they share inside
their own transactions (the transaction helper, the mailbox cursor, the envelope outbox,
the audit log), so that a change spanning two capabilities (a hit notice and the mailbox
cursor, a disclosure and its envelope) is still one transaction.

A repository keeps no state of its own beyond the engine, the node's party id and the
source of randomness, so several of them over one engine are as one: the daemon opens
:class:`Repositories` and hands each desk, the uplink and the local API the ones they use.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from samenloop.node.cases.store import CaseStore
from samenloop.node.daemon.covenants import CovenantStore
from samenloop.node.daemon.database import MIGRATIONS, Database
from samenloop.node.disclosure.store import DisclosureStore
from samenloop.node.network.store import NetworkStore
from samenloop.node.picture.store import PictureStore
from samenloop.node.signals.store import SignalStore
from samenloop.node.tokens.store import TokenStore

__all__ = ["MIGRATIONS", "Repositories"]


@dataclass(frozen=True, slots=True)
class Repositories:
    """Every repository of the node over one engine: what the daemon opens."""

    #: The mailbox cursor, the envelope outbox and the audit log, which every
    #: capability writes inside its own transactions.
    shared: Database
    signals: SignalStore
    tokens: TokenStore
    disclosures: DisclosureStore
    picture: PictureStore
    cases: CaseStore
    covenants: CovenantStore
    network: NetworkStore

    @classmethod
    def open(
        cls,
        engine: Engine,
        *,
        owner: str = "node",
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> Repositories:
        """One repository per capability over ``engine``; ``owner`` is the node's party
        id, the actor of the audit entries the repositories record on their own."""
        return cls(
            shared=Database(engine, owner=owner, random_bytes=random_bytes),
            signals=SignalStore(engine, owner=owner, random_bytes=random_bytes),
            tokens=TokenStore(engine, owner=owner, random_bytes=random_bytes),
            disclosures=DisclosureStore(engine, owner=owner, random_bytes=random_bytes),
            picture=PictureStore(engine, owner=owner, random_bytes=random_bytes),
            cases=CaseStore(engine, owner=owner, random_bytes=random_bytes),
            covenants=CovenantStore(engine, owner=owner, random_bytes=random_bytes),
            network=NetworkStore(engine, owner=owner, random_bytes=random_bytes),
        )

    @property
    def engine(self) -> Engine:
        """The one engine every repository writes through."""
        return self.shared.engine
