"""The network's components and their ranking, driven directly (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from samenloop.node.network.graph import Edge, Vertex, components, timeline

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def vertex(n: int, parties: str, *, days: int = 0, kind: str = "bsn") -> Vertex:
    return Vertex(
        bytes([n]) * 16, kind, frozenset(parties.split(",")), T0, T0 + timedelta(days=days)
    )


def gid(n: int) -> bytes:
    return bytes([n]) * 16


def test_components_are_connected_parts_ranked_by_size_then_partners() -> None:
    vs = [vertex(1, "a,b"), vertex(2, "b,c"), vertex(3, "a,c"), vertex(4, "d,e"), vertex(5, "f,g")]
    vs += [vertex(6, "f,h,i")]
    es = [Edge(gid(1), gid(2), "b"), Edge(gid(2), gid(3), "c"), Edge(gid(5), gid(6), "f")]
    found = components(vs, es)
    assert [sorted(c.group_ids) for c in found] == [
        [gid(1), gid(2), gid(3)],
        [gid(5), gid(6)],
        [gid(4)],
    ]
    assert found[0].partners == {"a", "b", "c"}
    assert [(e.a, e.b) for e in found[0].edges] == [(gid(1), gid(2)), (gid(2), gid(3))]
    assert found[2].edges == ()


def test_equal_sizes_rank_by_partners_then_recency() -> None:
    vs = [vertex(1, "a"), vertex(2, "a"), vertex(3, "a,b", days=1), vertex(4, "c", days=5)]
    vs += [vertex(5, "a"), vertex(6, "a", days=9)]
    es = [Edge(gid(1), gid(2), "a"), Edge(gid(3), gid(4), "c"), Edge(gid(5), gid(6), "a")]
    found = components(vs, es)
    assert [min(c.group_ids) for c in found] == [gid(3), gid(5), gid(1)]


def test_an_edge_to_a_group_not_seen_is_left_out() -> None:
    found = components([vertex(1, "a"), vertex(2, "b")], [Edge(gid(1), gid(9), "a")])
    assert len(found) == 2
    assert all(c.edges == () for c in found)


def test_edges_must_be_ordered_and_counted() -> None:
    with pytest.raises(ValueError, match="ordered"):
        Edge(gid(2), gid(1), "a")
    with pytest.raises(ValueError, match="ordered"):
        Edge(gid(1), gid(1), "a")
    with pytest.raises(ValueError, match="count"):
        Edge(gid(1), gid(2), "a", count=0)


def test_the_timeline_orders_sightings_and_links() -> None:
    vs = [vertex(1, "a", days=2), vertex(2, "b")]
    es = [Edge(gid(1), gid(2), "a", first_reported=T0 + timedelta(days=1))]
    (component,) = components(vs, es)
    assert timeline(component) == [
        (T0, "first_seen", gid(1)),
        (T0, "first_seen", gid(2)),
        (T0 + timedelta(days=1), "linked", gid(1)),
        (T0 + timedelta(days=2), "last_seen", gid(1)),
    ]
