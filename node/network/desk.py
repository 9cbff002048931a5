"""Where a node's part of the subject network happens: links reported, links received.

A thin adapter between :mod:`samenloop.node.network.links` (sans-IO), the node's store
and its keys. The uplink's work loop calls :meth:`NetworkDesk.tick` after the hit feed
moved (a hit appeared, changed or closed; a signal withdrawn or expired shows as its
group shrinking or closing): the desk works out which links this node's signals make
among its open hits, which viewers may be told of each, what changed since it last
told them, and stores the new state with the sealed envelopes in one transaction. As a
viewer it removes links whose groups closed. The uplink hands it every relayed
envelope whose signed context is ``network-link`` (:meth:`NetworkDesk.receive`).

Log lines carry counts and verdicts, never a group id.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from samenloop.node.daemon.database import ID_BYTES, SealedEnvelope
from samenloop.node.daemon.envelopes import seal
from samenloop.node.identifiers import person_hits
from samenloop.node.network import links
from samenloop.node.network.graph import Component, Edge, Vertex, components
from samenloop.node.network.store import NetworkStore
from samenloop.node.signals.store import HitRecord
from samenloop.policies import rules
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import InvalidInput, NotAllowed
from samenloop.policies.rules import MemberFacts

__all__ = ["NetworkDesk"]

log = structlog.get_logger(__name__)


class NetworkDesk:
    """This node's side of the subject network: as a reporter and as a viewer."""

    def __init__(
        self,
        *,
        keys: PartyKeys,
        covenant: Callable[[], Covenant],
        store: NetworkStore,
        feed_seq: Callable[[], int],
        hit: Callable[[bytes], HitRecord | None] = lambda group_id: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        wake: Callable[[], None] = lambda: None,
        stale: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``feed_seq`` gives the hit feed's last sequence: the desk reports again only
        when it (or the covenant version) moved. ``hit`` reads one of the node's hits,
        for the score of its probable person hits on a group. ``stale``: while the node is stale it
        seals nothing (a viewer may have been removed by a version it has not seen)."""
        self._keys = keys
        self._me = keys.party
        self._covenant = covenant
        self._store = store
        self._feed_seq = feed_seq
        self._hit = hit
        self._clock = clock
        self._random = random_bytes
        self.wake = wake
        self._stale = stale
        self._lock = threading.Lock()
        self._done: tuple[int, int, int] | None = None

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # --- as a reporter ------------------------------------------------------------------

    def tick(self) -> bool:
        """Report what changed and prune ended links, if the feed, the covenant or the
        number of ended signals moved since the last tick (a withdrawn signal ends its links
        at once, before its groups' notices say so). Returns True if it queued envelopes."""
        with self._lock:
            covenant = self._covenant()
            mark = (self._feed_seq(), covenant.version, self._store.ended_signals())
            if mark == self._done or self._stale() is not None:
                return False
            queued = self._report(covenant)
            self._store.prune(now=self._now(), reporters=self._reporters(covenant))
            self._done = mark
        if queued:
            self.wake()
        return queued > 0

    def _reporters(self, covenant: Covenant) -> frozenset[str]:
        """The parties whose links this node may keep under ``covenant``: none unless it
        is a network viewer; else every other party its rule does not hide."""
        if not rules.may_see_network(covenant, self._me):
            return frozenset()
        return frozenset(
            p.id
            for p in covenant.parties
            if p.id != self._me and not rules.hides(covenant, self._me, p.id)
        )

    def _scores(self, covenant: Covenant, rows: list[tuple[bytes, int, str]]) -> dict[bytes, float]:
        """The best score of this node's shown probable person hits, per group on a person
        key kind: what a viewer, who sees no person keys, may draw the group with."""
        scores: dict[bytes, float] = {}
        for group_id in sorted({g for g, _, kind in rows if kind.startswith("person.")}):
            record = self._hit(group_id)
            if record is None or not record.person_agreements:
                continue
            found = person_hits.combine_under(
                record.person_agreements, record.person_own_kinds, covenant.policy.person_matching
            )
            shown = [p.score for p in found.values() if p.shown]
            if shown:
                scores[group_id] = max(shown)
        return scores

    def _report(self, covenant: Covenant) -> int:
        rows = self._store.held_link_rows()
        held = links.held_links(rows, self._scores(covenant, rows))
        groups = {g for pair in held for g in pair}
        known = self._store.known_members(groups)
        me = MemberFacts(self._me, (), ())

        def members(group_id: bytes) -> list[MemberFacts]:
            return [me] + [MemberFacts(p, (), ()) for p in sorted(known.get(group_id, ()))]

        viewers = {
            pair: rules.link_viewers(covenant, self._me, [members(pair[0]), members(pair[1])])
            for pair in held
        }
        now = self._now()
        changes = links.plan(held, viewers, self._store.sent_links(), now=now)
        if not changes:
            return 0
        envelopes: list[SealedEnvelope] = []
        by_recipient: dict[str, list[links.LinkChange]] = {}
        for change in changes:
            by_recipient.setdefault(change.recipient, []).append(change)
        for recipient, theirs in sorted(by_recipient.items()):
            if not covenant.is_party(recipient):
                continue  # a viewer the covenant dropped: the state is kept, nothing is sent
            for start in range(0, len(theirs), links.MAX_LINKS_PER_MESSAGE):
                body = links.to_message(
                    self._me, theirs[start : start + links.MAX_LINKS_PER_MESSAGE], now=now
                )
                envelope = seal(
                    self._keys,
                    covenant,
                    recipient,
                    SignatureContext.NETWORK_LINK,
                    body,
                    self._random(ID_BYTES),
                )
                envelopes.append(SealedEnvelope.of(envelope))
        self._store.record_sent(changes, envelopes, now=now)
        log.info(
            "network links reported",
            links=len(changes),
            ended=sum(1 for c in changes if c.count == 0),
            envelopes=len(envelopes),
        )
        return len(envelopes)

    # --- as a viewer --------------------------------------------------------------------

    def receive(self, cursor: int, sender: str, body: bytes, covenant: Covenant) -> None:
        """Keep the links of a verified ``NetworkLinks`` from ``sender`` (see
        :meth:`NetworkStore.accept_links`) with the mailbox cursor. A malformed message,
        or one this node may not get, raises naming the field: the caller records it as
        skipped, stores nothing of it, and goes on."""
        received = links.parse(body, sender=sender)
        if not rules.may_see_network(covenant, self._me):
            raise NotAllowed("this node is not a network viewer", field="network.viewers")
        if rules.hides(covenant, self._me, sender):
            raise NotAllowed("this node's visibility rule hides the reporter", field="reporter")
        if not covenant.is_party(sender):
            raise InvalidInput("the reporter is not a party", field="reporter")
        verdicts = self._store.accept_links(
            cursor,
            sender,
            received.links,
            reporter_role=covenant.role_of(sender).value,
            now=self._now(),
        )
        log.info("network links received", **{v.value: c for v, c in verdicts.items()})

    def network(self) -> tuple[list[Vertex], list[Edge]]:
        """The network this node holds: its open hits and the live links among them."""
        return self._store.network()

    def components(self) -> list[Component]:
        """The network's connected components, largest first."""
        vertices, edges = self._store.network()
        return components(vertices, edges)
