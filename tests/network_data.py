"""A synthetic subject network for the drawing and report tests and the screenshots in
``docs/picture.md``: one component of four hit groups (a person, an address and two
companies) tied by the signals of three partners, and smaller ones around it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from samenloop.node.network.graph import Component, Edge, Vertex, components

T0 = datetime(2026, 10, 3, 9, 0, tzinfo=UTC)

GEMEENTE, POLITIE, FISCUS, WONEN = (
    "gemeente-goes",
    "politie-zeeland",
    "belastingdienst",
    "zeeuwland",
)


def gid(n: int, salt: int = 0) -> bytes:
    """A group id that looks like one (16 bytes, varied hex), fixed per ``n``."""
    return bytes((n * 37 + k * 11 + salt * 101) % 256 for k in range(16))


def vertex(
    n: int, kind: str, parties: str, *, days: int = 0, seen: int = 0, score: float | None = None
) -> Vertex:
    first = T0 + timedelta(days=days)
    return Vertex(
        gid(n),
        kind,
        frozenset(parties.split(",")),
        first,
        first + timedelta(days=seen),
        score,
    )


def edge(m: int, n: int, reporter: str, count: int = 1) -> Edge:
    a, b = sorted((gid(m), gid(n)))
    return Edge(a, b, reporter, count)


def synthetic_vertices() -> list[Vertex]:
    return [
        # The case: a straw man, the address where he is registered, two companies.
        vertex(1, "bsn", f"{GEMEENTE},{POLITIE}", days=2, seen=40),
        vertex(2, "address", f"{GEMEENTE},{FISCUS}", seen=55),
        vertex(3, "kvk", f"{FISCUS},{GEMEENTE}", days=10, seen=20),
        vertex(4, "kvk", FISCUS, days=12),
        # A car registered to one, driven by a probable person.
        vertex(5, "kenteken", f"{POLITIE},{GEMEENTE}", days=20, seen=3),
        vertex(6, "person.phonetic_date", f"{POLITIE},{WONEN}", days=21, score=14.2),
        # A bank account, a company, a phone number.
        vertex(7, "iban", f"{FISCUS},{POLITIE}", days=30),
        vertex(8, "rsin", f"{FISCUS},{GEMEENTE}", days=31),
        vertex(9, "phone", f"{POLITIE},{GEMEENTE}", days=33),
        # A hit on its own.
        vertex(10, "bag", f"{GEMEENTE},{WONEN}", days=40),
    ]


def synthetic_edges() -> list[Edge]:
    return [
        edge(1, 2, GEMEENTE, 2),
        edge(1, 2, POLITIE, 1),
        edge(2, 3, FISCUS, 3),
        edge(3, 4, FISCUS, 1),
        edge(1, 3, GEMEENTE, 1),
        edge(5, 6, POLITIE, 2),
        edge(7, 8, FISCUS, 1),
        edge(8, 9, POLITIE, 1),
    ]


def synthetic_network() -> list[Component]:
    """The ranked components: 4 groups from 3 partners first, then 3, 2 and 1."""
    return components(synthetic_vertices(), synthetic_edges())
