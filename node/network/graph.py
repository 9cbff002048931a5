"""The subject network as plain data: hit groups as vertices, reported links as edges.

A *vertex* is a hit group the coordinator can see (its identifier type, the parties in
it, when it was first and last seen, and the score of a probable person hit). An *edge*
says that one partner's signal ties two groups: the reporting party and how many of its
signals do, never which signals. :func:`components` splits a network into connected
components and ranks them: the most vertices first, then the most partners, then the
most recently seen, then the smallest group id (so the order is total and stable).

Pure data and functions, no I/O: the store builds these from its rows, the CLI and the
HTML report read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Component", "Edge", "Vertex", "components", "timeline"]


@dataclass(frozen=True, slots=True)
class Vertex:
    """A hit group as the coordinator sees it."""

    group_id: bytes
    identifier_type: str
    parties: frozenset[str]
    first_seen: datetime
    last_seen: datetime
    #: The best score of a probable person hit on the group, else ``None``.
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    """One partner's signals tie groups ``a`` and ``b`` (``a < b``), ``count`` of them."""

    a: bytes
    b: bytes
    reporter: str
    count: int = 1
    first_reported: datetime | None = None
    last_reported: datetime | None = None

    def __post_init__(self) -> None:
        if not self.a < self.b:
            raise ValueError("an edge's group ids must be distinct and ordered (a < b)")
        if self.count < 1:
            raise ValueError("an edge's count must be at least 1")


@dataclass(frozen=True, slots=True)
class Component:
    """A connected part of the network: its vertices by group id and its edges."""

    vertices: tuple[Vertex, ...]
    edges: tuple[Edge, ...] = field(default=())

    @property
    def group_ids(self) -> frozenset[bytes]:
        return frozenset(v.group_id for v in self.vertices)

    @property
    def partners(self) -> frozenset[str]:
        """Every party in one of its groups or reporting one of its links."""
        parties = {p for v in self.vertices for p in v.parties}
        return frozenset(parties | {e.reporter for e in self.edges})

    @property
    def first_seen(self) -> datetime:
        return min(v.first_seen for v in self.vertices)

    @property
    def last_seen(self) -> datetime:
        return max(v.last_seen for v in self.vertices)


def components(vertices: Iterable[Vertex], edges: Iterable[Edge]) -> list[Component]:
    """The connected components, ranked (see the module docstring).

    An edge naming a group that is not among ``vertices`` is left out: the coordinator
    draws only groups it may see. Edges of one pair by several reporters stay separate.
    """
    by_id: Mapping[bytes, Vertex] = {v.group_id: v for v in vertices}
    parent = {g: g for g in by_id}

    def root(g: bytes) -> bytes:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    kept = [e for e in edges if e.a in by_id and e.b in by_id]
    for e in kept:
        ra, rb = root(e.a), root(e.b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[bytes, list[Vertex]] = {}
    for g, v in by_id.items():
        members.setdefault(root(g), []).append(v)
    links: dict[bytes, list[Edge]] = {}
    for e in kept:
        links.setdefault(root(e.a), []).append(e)
    found = [
        Component(
            tuple(sorted(vs, key=lambda v: v.group_id)),
            tuple(sorted(links.get(r, ()), key=lambda e: (e.a, e.b, e.reporter))),
        )
        for r, vs in members.items()
    ]
    found.sort(
        key=lambda c: (
            -len(c.vertices),
            -len(c.partners),
            -c.last_seen.timestamp(),
            min(c.group_ids),
        )
    )
    return found


def timeline(component: Component) -> list[tuple[datetime, str, bytes]]:
    """The component's events in time order: ``(when, "first_seen"|"last_seen", group)``
    per vertex (a group seen once has no ``last_seen`` event) and ``(when, "linked",
    group a)`` per edge whose first report time is known."""
    events: list[tuple[datetime, str, bytes]] = []
    for v in component.vertices:
        events.append((v.first_seen, "first_seen", v.group_id))
        if v.last_seen != v.first_seen:
            events.append((v.last_seen, "last_seen", v.group_id))
    for e in component.edges:
        if e.first_reported is not None:
            events.append((e.first_reported, "linked", e.a))
    events.sort(key=lambda t: (t[0], t[1], t[2]))
    return events
