"""The subject network's repository: what a reporter sent, what a viewer was told.

As a *reporter*, a node reads the links its own signals make among its open hits
(:meth:`NetworkStore.held_link_rows`), the members its notices name
(:meth:`NetworkStore.known_members`) and what it last told each viewer
(:meth:`NetworkStore.sent_links`); the desk plans the changes and seals them, and
:meth:`NetworkStore.record_sent` stores the new state with the sealed envelopes in one
transaction: a crash before it commits sends nothing, after it each change is in the
outbox exactly once.

As a *viewer*, a node keeps the latest link per (reporter, pair)
(:meth:`NetworkStore.accept_links`, with the mailbox cursor, in one transaction) if it
holds both groups as open hits and its notices show the reporter among their members,
and builds the network from its hits and those links (:meth:`NetworkStore.network`).
Links naming a group that closed are removed (:meth:`NetworkStore.prune`), so links
live as long as the hits they join.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update

from samenloop.node.daemon.database import Database, PendingEnvelope, SealedEnvelope, chunks, utc
from samenloop.node.network import models
from samenloop.node.network.graph import Edge, Vertex
from samenloop.node.network.links import (
    LinkChange,
    ReceivedLink,
    SentLink,
    held_links,
    link_type,
)
from samenloop.node.signals import models as signal_models
from samenloop.node.signals.models import HitState, SignalState
from samenloop.policies.audit import AuditKind
from samenloop.v1 import broker_pb2, common_pb2

__all__ = ["LinkVerdict", "NetworkStore"]


class LinkVerdict(enum.StrEnum):
    """What a viewer did with one received link."""

    ACCEPTED = "accepted"
    #: Its revision is not above the one stored: a replay or a late copy.
    REPEATED = "repeated"
    #: The viewer holds no open hit of one of the groups.
    UNKNOWN_GROUP = "unknown_group"
    #: The viewer's notices of a group show its members, and the reporter is not one.
    NOT_A_MEMBER = "not_a_member"


@dataclass(frozen=True, slots=True)
class _Group:
    labels: frozenset[str]
    state: str


def _member(labels: frozenset[str], reporter: str, reporter_role: str | None) -> bool:
    """Whether a group's member labels (party ids, ``role:<role>``, or empty for hidden)
    are consistent with ``reporter`` being a member. Where they name parties it must be
    among them; where only roles, its role; where nothing (a count-level notice) the
    viewer cannot tell and accepts: the link is labelled with its reporter and joins
    only groups the viewer sees anyway (docs/network.md)."""
    if reporter in labels:
        return True
    parties = {label for label in labels if label and not label.startswith("role:")}
    if parties:
        return False
    roles = {label for label in labels if label.startswith("role:")}
    if roles:
        return reporter_role is not None and f"role:{reporter_role}" in roles
    return True


def notice_labels(signed_notice: bytes) -> frozenset[str]:
    """The other members a stored (verified) signed hit notice shows: the party id where
    visible, else ``role:<role>``, else the empty label (a member shown with neither)."""
    signed = common_pb2.Signed.FromString(signed_notice)
    notice = broker_pb2.HitNotice.FromString(signed.body)
    return frozenset(
        m.party if m.HasField("party") else f"role:{m.role}" if m.HasField("role") else ""
        for m in notice.members
    )


class NetworkStore(Database):
    """Links reported and links received, with the envelope outbox and the audit log."""

    # --- as a reporter ------------------------------------------------------------------

    def held_link_rows(self) -> list[tuple[bytes, int, str]]:
        """(open hit group, own active signal, identifier type) for every own identifier
        the node's open hits name: what :func:`~samenloop.node.network.links.held_links`
        builds the links from."""
        hit, hr = signal_models.Hit, signal_models.HitRef
        si, sg = signal_models.SignalIdentifier, signal_models.Signal
        with self._read() as conn:
            rows = conn.execute(
                select(hr.group_id, si.signal_id, si.type)
                .join(hit, hit.group_id == hr.group_id)
                .join(si, si.id == hr.identifier_id)
                .join(sg, sg.id == si.signal_id)
                .where(hit.state == HitState.OPEN.value, sg.state == SignalState.ACTIVE.value)
            ).all()
        return [(bytes(r.group_id), int(r.signal_id), str(r.type)) for r in rows]

    def ended_signals(self) -> int:
        """How many of this node's signals were withdrawn or expired: it only grows, so a
        change says a link may have ended before any hit notice says so."""
        sg = signal_models.Signal
        ended = (SignalState.WITHDRAWN.value, SignalState.EXPIRED.value)
        with self._read() as conn:
            return int(conn.execute(select(func.count()).where(sg.state.in_(ended))).scalar_one())

    def known_members(self, group_ids: Iterable[bytes]) -> dict[bytes, frozenset[str]]:
        """Per group, the other members its latest notice names by party id."""
        hp = signal_models.HitParty
        found: dict[bytes, set[str]] = {}
        with self._read() as conn:
            for chunk in chunks(sorted(set(group_ids))):
                for group_id, party in conn.execute(
                    select(hp.group_id, hp.party).where(self._among(hp.group_id, chunk))
                ):
                    if party and not party.startswith("role:"):
                        found.setdefault(bytes(group_id), set()).add(party)
        return {g: frozenset(p) for g, p in found.items()}

    def sent_links(self) -> list[SentLink]:
        """What this node last told each viewer of each pair (ended ones included)."""
        s = models.NetworkLinkSent
        with self._read() as conn:
            rows = conn.execute(
                select(s.recipient, s.group_a, s.group_b, s.count.label("n"), s.revision)
            ).all()
        return [
            SentLink(r.recipient, bytes(r.group_a), bytes(r.group_b), r.n, r.revision) for r in rows
        ]

    def record_sent(
        self,
        changes: Sequence[LinkChange],
        envelopes: Sequence[SealedEnvelope],
        *,
        now: datetime,
    ) -> None:
        """Store the new state of each changed (viewer, pair) and queue the envelopes
        that tell it, in one transaction. A change whose revision is not above the stored
        one (another run got there first) aborts it all: nothing is sent twice."""
        if not changes:
            return
        now = utc(now)
        s = models.NetworkLinkSent
        with self._write(outbox=True) as conn:
            for change in changes:
                key = (change.recipient, change.a.group_id, change.b.group_id)
                values = {"count": change.count, "revision": change.revision, "updated_at": now}
                where = (s.recipient == key[0], s.group_a == key[1], s.group_b == key[2])
                before = conn.execute(select(s.revision).where(*where)).scalar_one_or_none()
                if before is None:
                    conn.execute(
                        self._insert(s).values(
                            recipient=key[0], group_a=key[1], group_b=key[2], **values
                        )
                    )
                elif before < change.revision:
                    conn.execute(update(s).where(*where, s.revision == before).values(**values))
                else:
                    raise RuntimeError("the links sent changed meanwhile")
            for envelope in envelopes:
                self._queue_envelope(conn, envelope, now)
            self.append_audit(
                conn,
                kind=AuditKind.NETWORK_EVENT,
                details={
                    "event": "links_reported",
                    "links": len(changes),
                    "ended": sum(1 for c in changes if c.count == 0),
                    "recipients": len({c.recipient for c in changes}),
                },
                now=now,
            )

    def pending(self) -> list[PendingEnvelope]:
        """Envelopes waiting in the outbox (for tests and the status)."""
        return self.envelope_outbox()

    # --- as a viewer --------------------------------------------------------------------

    def _groups(self, conn: Connection, group_ids: Iterable[bytes]) -> dict[bytes, _Group]:
        hit = signal_models.Hit
        found: dict[bytes, _Group] = {}
        for chunk in chunks(sorted(set(group_ids))):
            for group_id, state, notice in conn.execute(
                select(hit.group_id, hit.state, hit.notice).where(self._among(hit.group_id, chunk))
            ):
                found[bytes(group_id)] = _Group(notice_labels(bytes(notice)), state)
        return found

    def accept_links(
        self,
        cursor: int,
        reporter: str,
        links: Sequence[ReceivedLink],
        *,
        reporter_role: str | None,
        now: datetime,
    ) -> dict[LinkVerdict, int]:
        """Keep each link whose groups this node holds open, whose reporter its notices
        show as a member of both (see :func:`_member`) and whose revision is above the
        stored one (an end, count 0, needs only the last); advance the mailbox cursor and
        audit the counts, in one transaction. Returns how many links got each verdict."""
        now = utc(now)
        verdicts = dict.fromkeys(LinkVerdict, 0)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            groups = self._groups(
                conn, [g for link in links for g in (link.a.group_id, link.b.group_id)]
            )
            for link in links:
                verdict = self._accept_one(conn, reporter, reporter_role, link, groups, now)
                verdicts[verdict] += 1
            self.append_audit(
                conn,
                kind=AuditKind.NETWORK_EVENT,
                actor=reporter,
                details={"event": "links_received", "cursor": cursor}
                | {v.value: c for v, c in verdicts.items() if c},
                now=now,
            )
        return verdicts

    def _accept_one(
        self,
        conn: Connection,
        reporter: str,
        reporter_role: str | None,
        link: ReceivedLink,
        groups: Mapping[bytes, _Group],
        now: datetime,
    ) -> LinkVerdict:
        n = models.NetworkLink
        key = (n.reporter == reporter, n.group_a == link.a.group_id, n.group_b == link.b.group_id)
        stored = conn.execute(select(n.revision, n.type_a, n.type_b).where(*key)).first()
        if stored is not None and stored.revision >= link.revision:
            return LinkVerdict.REPEATED
        if link.count == 0:
            # An end only takes back what this reporter said, and its reporter may have
            # left the groups by now (that is often why it ended): no membership check.
            if stored is None:
                return LinkVerdict.REPEATED  # nothing of it held (never taken, or pruned)
            conn.execute(
                update(n).where(*key).values(count=0, revision=link.revision, last_reported=now)
            )
            return LinkVerdict.ACCEPTED
        ends = [groups.get(link.a.group_id), groups.get(link.b.group_id)]
        if any(g is None or g.state != HitState.OPEN.value for g in ends):
            return LinkVerdict.UNKNOWN_GROUP
        if not all(g is not None and _member(g.labels, reporter, reporter_role) for g in ends):
            return LinkVerdict.NOT_A_MEMBER
        values: dict[str, Any] = {
            "count": link.count,
            "revision": link.revision,
            "last_reported": now,
            # An ended link's message may not name the types: keep the ones known.
            "type_a": link.a.identifier_type or (stored.type_a if stored else ""),
            "type_b": link.b.identifier_type or (stored.type_b if stored else ""),
            "score_a": link.a.person_score,
            "score_b": link.b.person_score,
        }
        if stored is None:
            conn.execute(
                self._insert(n).values(
                    reporter=reporter,
                    group_a=link.a.group_id,
                    group_b=link.b.group_id,
                    first_reported=now,
                    **values,
                )
            )
        else:
            conn.execute(update(n).where(*key).values(**values))
        return LinkVerdict.ACCEPTED

    def prune(self, *, now: datetime, reporters: Collection[str] | None = None) -> int:
        """Remove the links naming a group this node no longer holds open: links go with
        the hits they join. With ``reporters`` (the parties this node may take links from
        under the covenant it holds), also every link of another reporter: one the covenant
        removed (the broker cuts it off, so it can end none of them) or whose role this
        node's rule now hides (its ends would be refused). Returns how many were removed."""
        now = utc(now)
        n, hit = models.NetworkLink, signal_models.Hit
        open_groups = select(hit.group_id).where(hit.state == HitState.OPEN.value)
        gone = [n.group_a.not_in(open_groups), n.group_b.not_in(open_groups)]
        if reporters is not None:
            gone.append(n.reporter.not_in(sorted(reporters)))
        with self._write() as conn:
            result = conn.execute(delete(n).where(or_(*gone)))
            removed = int(result.rowcount or 0)
            if removed:
                self.append_audit(
                    conn,
                    kind=AuditKind.NETWORK_EVENT,
                    details={"event": "links_removed", "links": removed},
                    now=now,
                )
        return removed

    def network(self) -> tuple[list[Vertex], list[Edge]]:
        """This node's open hits as vertices and the live links (count above 0) between
        them as edges, its own links (those its signals make) included. A vertex's type
        is this node's own identifier type in the group, else the one most reporters
        gave; its score the best a reporter gave."""
        hit, hr = signal_models.Hit, signal_models.HitRef
        si, n = signal_models.SignalIdentifier, models.NetworkLink
        with self._read() as conn:
            hits = conn.execute(
                select(hit.group_id, hit.first_seen, hit.last_seen, hit.notice).where(
                    hit.state == HitState.OPEN.value
                )
            ).all()
            open_ids = {bytes(h.group_id) for h in hits}
            parties = {
                bytes(h.group_id): {p for p in notice_labels(bytes(h.notice)) if p} for h in hits
            }
            own_types: dict[bytes, set[str]] = {}
            for group_id, type_name in conn.execute(
                select(hr.group_id, si.type)
                .join(si, si.id == hr.identifier_id)
                .join(hit, hit.group_id == hr.group_id)
                .where(hit.state == HitState.OPEN.value)
            ):
                own_types.setdefault(bytes(group_id), set()).add(link_type(type_name))
            link_rows = conn.execute(
                select(
                    n.reporter,
                    n.group_a,
                    n.group_b,
                    n.count.label("n"),
                    n.type_a,
                    n.type_b,
                    n.score_a,
                    n.score_b,
                    n.first_reported,
                    n.last_reported,
                ).where(n.count > 0)
            ).all()
        reported: dict[bytes, dict[str, int]] = {}
        scores: dict[bytes, float] = {}
        edges: list[Edge] = []
        for row in link_rows:
            a, b = bytes(row.group_a), bytes(row.group_b)
            if a not in open_ids or b not in open_ids:
                continue
            ends = ((a, row.type_a, row.score_a), (b, row.type_b, row.score_b))
            for group_id, kind, score in ends:
                if kind:
                    votes = reported.setdefault(group_id, {})
                    votes[kind] = votes.get(kind, 0) + 1
                if score is not None:
                    scores[group_id] = max(score, scores.get(group_id, score))
            edges.append(Edge(a, b, row.reporter, row.n, row.first_reported, row.last_reported))
        me = self._owner
        # A viewer that holds signals itself draws its own links too (it tells nobody).
        own = held_links(self.held_link_rows())
        edges += [Edge(a, b, me, link.count) for (a, b), link in own.items()]
        vertices: list[Vertex] = []
        for h in hits:
            group_id = bytes(h.group_id)
            if group_id in own_types:
                kind = min(own_types[group_id])
            elif group_id in reported:
                votes = reported[group_id]
                kind = min(votes, key=lambda k: (-votes[k], k))
            else:
                kind = ""
            members = set(parties.get(group_id, ()))
            if group_id in own_types:
                members.add(me)
            vertices.append(
                Vertex(
                    group_id,
                    kind,
                    frozenset(members),
                    h.first_seen,
                    h.last_seen,
                    scores.get(group_id),
                )
            )
        return vertices, edges
