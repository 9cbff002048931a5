"""The subject network drawn (node/network/svg.py) and in the picture report's network
section (node/picture/network_section.py), driven directly: the SVG parsed as XML with
the standard library, the page with the report tests' parser."""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_picture_report import Page, _report

from samenloop.node.network import svg
from samenloop.node.network.graph import Component, Edge, Vertex, components
from samenloop.node.picture import network_section
from samenloop.node.picture import report as picture_report

from network_data import (
    FISCUS,
    GEMEENTE,
    POLITIE,
    edge,
    gid,
    synthetic_edges,
    synthetic_network,
    synthetic_vertices,
    vertex,
)

NS = ""  # inline SVG in HTML: no namespace declared
T0 = datetime(2026, 11, 2, tzinfo=UTC)


def _tree(component: Component) -> ET.Element:
    return ET.fromstring(svg.render_component(component))


def _vertices(root: ET.Element) -> dict[str, ET.Element]:
    return {
        g.attrib["data-group"]: g for g in root.iter(f"{NS}g") if g.attrib.get("class") == "vertex"
    }


def _view(root: ET.Element) -> tuple[float, float]:
    x0, y0, w, h = (float(n) for n in root.attrib["viewBox"].split())
    assert (x0, y0) == (0, 0)
    return w, h


def _outline(shape: ET.Element) -> list[tuple[float, float]]:
    """The extreme points of a drawn shape."""
    tag = shape.tag.removeprefix(NS)
    if tag == "circle":
        cx, cy, r = (float(shape.attrib[k]) for k in ("cx", "cy", "r"))
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if tag == "rect":
        x, y = float(shape.attrib["x"]), float(shape.attrib["y"])
        w, h = float(shape.attrib["width"]), float(shape.attrib["height"])
        return [(x, y), (x + w, y + h)]
    assert tag == "polygon", tag
    return [(float(x), float(y)) for x, y in (p.split(",") for p in shape.attrib["points"].split())]


def _shape_element(g: ET.Element) -> ET.Element:
    (shape,) = [c for c in g if c.tag.removeprefix(NS) in ("circle", "rect", "polygon")]
    return shape


# --- the drawing -----------------------------------------------------------------------------


def test_the_same_component_is_drawn_to_the_same_bytes_whatever_the_input_order() -> None:
    first = svg.render_component(synthetic_network()[0])
    assert svg.render_component(synthetic_network()[0]) == first
    vertices, edges = synthetic_vertices(), synthetic_edges()
    shuffler = random.Random(3)
    for _ in range(3):
        shuffler.shuffle(vertices)
        shuffler.shuffle(edges)
        assert svg.render_component(components(vertices, edges)[0]) == first
    # The seed is what fixes it: another seed gives another drawing.
    assert svg.render_component(synthetic_network()[0], seed=18) != first


def test_the_layout_is_force_directed_and_uses_the_width() -> None:
    """A chain of three lies along the width (the long axis is turned to x), with the
    middle group between the other two; linked groups are nearer than unlinked ones."""
    chain = synthetic_network()[1]  # iban - rsin - phone
    at = svg.layout(chain)
    by_type = {v.identifier_type: at[v.group_id] for v in chain.vertices}
    xs = sorted(p[0] for p in at.values())
    ys = [p[1] for p in at.values()]
    assert xs[-1] - xs[0] > 300
    assert max(ys) - min(ys) < 40
    assert xs[1] == by_type["rsin"][0]
    case = synthetic_network()[0]
    pos = svg.layout(case)
    far = math.dist(pos[gid(1)], pos[gid(4)])  # BSN and the company it has no link to
    assert all(math.dist(pos[e.a], pos[e.b]) < far for e in case.edges)


def test_shapes_by_identifier_type() -> None:
    vs = [
        vertex(1, "bsn", "a"),
        vertex(2, "kvk", "a"),
        vertex(3, "address", "a"),
        vertex(4, "kenteken", "a"),
        vertex(5, "iban", "a"),
        vertex(6, "person.phonetic_date", "a", score=12.5),
        vertex(7, "email", "a"),
        vertex(8, "something-new", "a"),
        vertex(9, "person", "a"),
    ]
    es = [edge(1, n, "a") for n in range(2, 10)]
    root = _tree(components(vs, es)[0])
    drawn = _vertices(root)
    expected = {
        1: ("circle", "circle", None),
        2: ("square", "rect", None),
        3: ("diamond", "polygon", 4),
        4: ("triangle", "polygon", 3),
        5: ("hexagon", "polygon", 6),
        6: ("dashed-circle", "circle", None),
        7: ("pentagon", "polygon", 5),
        8: ("octagon", "polygon", 8),
        9: ("circle", "circle", None),
    }
    for n, (name, tag, corners) in expected.items():
        g = drawn[gid(n).hex()[:8]]
        assert g.attrib["data-shape"] == name
        shape = _shape_element(g)
        assert shape.tag == f"{NS}{tag}"
        if corners:
            assert len(shape.attrib["points"].split()) == corners
        assert ("stroke-dasharray" in shape.attrib) is (name == "dashed-circle")
    # A scored vertex is a probable person hit whatever its type says.
    scored = replace(vertex(1, "bsn", "a"), score=9.0)
    assert svg.shape_of(scored) == "dashed-circle"
    assert svg.type_name(scored) == "waarsch. persoon"


def test_colour_by_number_of_partners_on_one_sequential_scale() -> None:
    many = ",".join(f"p{i}" for i in range(7))
    vs = [vertex(n, "kvk", ",".join(f"p{i}" for i in range(n))) for n in range(1, 6)]
    vs.append(vertex(6, "kvk", many))
    es = [edge(1, n, "p0") for n in range(2, 7)]
    drawn = _vertices(_tree(components(vs, es)[0]))
    fills = {}
    for n in range(1, 7):
        g = drawn[gid(n).hex()[:8]]
        fills[n] = _shape_element(g).attrib["fill"]
        assert g.attrib["data-partners"] == str(min(n, 5) if n < 6 else 7)
    assert [fills[n] for n in range(1, 6)] == list(svg.PARTNER_COLOURS)
    assert fills[6] == svg.PARTNER_COLOURS[-1]  # 7 partners: "5 or more"
    # Light to dark: each class darker than the one before.
    lightness = [sum(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in svg.PARTNER_COLOURS]
    assert lightness == sorted(lightness, reverse=True)
    # The number in the shape says it too, readable on the dark classes.
    six = drawn[gid(6).hex()[:8]]
    (count,) = [t for t in six.iter(f"{NS}text") if t.attrib["class"] == "partners"]
    assert (count.text, count.attrib["fill"]) == ("7", "#fff")


def test_the_svg_is_accessible_and_every_vertex_and_edge_has_a_title() -> None:
    case = synthetic_network()[0]
    root = _tree(case)
    assert root.attrib["role"] == "img"
    assert root.attrib["aria-label"] == "netwerk: 4 samenlopen, 5 verbindingen, 3 partners"
    assert root.attrib["width"] == "100%"
    assert _view(root)[0] == svg.VIEW_WIDTH == svg.view_width(4)
    for g in _vertices(root).values():
        title = g.find(f"{NS}title")
        assert title is not None
        assert title.text is not None
        assert title.text.startswith(f"samenloop {g.attrib['data-group']}")
    lines = [
        e
        for e in root.iter()
        if e.attrib.get("class") == "edge" and e.tag in (f"{NS}line", f"{NS}path")
    ]
    assert len(lines) == len(case.edges)
    titles = sorted(t.text or "" for e in lines for t in e.findall(f"{NS}title"))
    assert titles == sorted(
        f"{e.reporter}: {e.count} "
        f"{'signaal verbindt' if e.count == 1 else 'signalen verbinden'} samenloop "
        f"{e.a.hex()[:8]} en {e.b.hex()[:8]}"
        for e in case.edges
    )
    counts = sorted(t.text or "" for t in root.iter(f"{NS}text") if t.attrib["class"] == "count")
    assert counts == sorted(str(e.count) for e in case.edges)


def test_two_partners_on_one_pair_are_two_curves_side_by_side() -> None:
    root = _tree(synthetic_network()[0])
    pair = f"samenloop {gid(1).hex()[:8]} en {gid(2).hex()[:8]}"
    curves = [p for p in root.iter(f"{NS}path") if pair in (p.findtext(f"{NS}title") or "")]
    assert len(curves) == 2
    controls = [re.findall(r"Q([\d.]+),([\d.]+)", c.attrib["d"])[0] for c in curves]
    assert controls[0] != controls[1]


def test_labels_are_the_short_group_id_and_type_and_nothing_else() -> None:
    case = synthetic_network()[0]
    root = _tree(case)
    texts = [(t.attrib["class"], t.text) for t in root.iter(f"{NS}text")]
    allowed = {("id", v.group_id.hex()[:8]) for v in case.vertices}
    allowed |= {("type", svg.type_name(v)) for v in case.vertices}
    allowed |= {("partners", str(len(v.parties))) for v in case.vertices}
    allowed |= {("count", str(e.count)) for e in case.edges}
    assert set(texts) <= allowed
    assert {("id", gid(n).hex()[:8]) for n in (1, 2, 3, 4)} <= set(texts)
    assert ("type", "KvK-nummer") in texts
    # The full group id is nowhere: only its first 8 hex digits.
    assert gid(1).hex() not in svg.render_component(case)


def test_party_names_are_escaped_in_the_drawing() -> None:
    hostile = 'gemeente "<script>alert(1)</script>" & co'
    vs = [vertex(1, "bsn", hostile), vertex(2, "address", GEMEENTE)]
    text = svg.render_component(components(vs, [edge(1, 2, hostile, 2)])[0])
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    root = ET.fromstring(text)  # still well-formed
    titles = [t.text or "" for t in root.iter(f"{NS}title")]
    assert any(hostile in t for t in titles)


def test_a_component_of_one_vertex_sits_in_the_middle() -> None:
    (lone,) = components([vertex(1, "bag", f"{GEMEENTE},{POLITIE}")], [])
    root = _tree(lone)
    w, h = _view(root)
    (g,) = _vertices(root).values()
    shape = _shape_element(g)
    assert g.attrib["data-shape"] == "diamond"
    xs = [x for x, _ in _outline(shape)]
    assert (min(xs) + max(xs)) / 2 == pytest.approx(w / 2, abs=0.2)
    assert all(0 <= x <= w and 0 <= y <= h for x, y in _outline(shape))
    assert not [e for e in root.iter() if e.attrib.get("class") == "edge"]
    assert root.attrib["aria-label"] == "netwerk: 1 samenloop, 0 verbindingen, 2 partners"
    assert svg.layout(Component(())) == {}


def _random_component(draw: st.DrawFn) -> Component:
    n = draw(st.integers(min_value=1, max_value=14))
    kinds = [*sorted(svg.SHAPES), "person.names_year", "other"]
    vs = [
        Vertex(
            bytes([k + 1]) * 16,
            draw(st.sampled_from(kinds)),
            frozenset(draw(st.sets(st.sampled_from("abcdef"), min_size=1))),
            T0,
            T0,
        )
        for k in range(n)
    ]
    es = []
    for k in range(1, n):  # a random tree, plus some extra links
        parent = draw(st.integers(min_value=0, max_value=k - 1))
        es.append(Edge(vs[parent].group_id, vs[k].group_id, "a", draw(st.integers(1, 9))))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=6))
    for i, j in extra:
        if i != j:
            a, b = sorted((vs[i].group_id, vs[j].group_id))
            es.append(Edge(a, b, "b"))
    (component,) = components(vs, es)
    return component


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.composite(_random_component)())
def test_no_vertex_or_label_leaves_the_view_box(component: Component) -> None:
    root = _tree(component)
    w, h = _view(root)
    n = len(component.vertices)
    assert w == svg.view_width(n) == (480 if n <= 8 else min(720, 480 + 30 * (n - 8)))
    assert 0 < h <= (420 if n <= 8 else 720)
    for g in _vertices(root).values():
        for x, y in _outline(_shape_element(g)):
            assert 0 <= x <= w
            assert 0 <= y <= h
        for t in g.iter(f"{NS}text"):
            x, y = float(t.attrib["x"]), float(t.attrib["y"])
            # A label is centred on its vertex: half of the widest type name (16
            # characters at about 0.55 em of 14 px) must fit on either side.
            assert 62 <= x <= w - 62
            assert 0 < y <= h - 2
    # Every edge is drawn between two drawn vertices.
    assert len([e for e in root.iter() if e.attrib.get("class") == "edge"]) == len(component.edges)


# --- the report's section --------------------------------------------------------------------


def _page(network: list[Component] | None) -> tuple[str, Page]:
    text = picture_report.render(_report(), network=network)
    return text, Page(text)


def test_the_section_draws_the_largest_components_in_rank_order() -> None:
    ranked = synthetic_network()
    given_order = list(reversed(ranked))  # the section ranks them again
    text, page = _page(given_order)
    assert "Netwerk" in page.headings()
    sections = page.find("section", class_="network-component")
    assert [s["data-rank"] for s in sections] == ["1", "2", "3", "4"]
    headings = [h for h in page.headings() if h.startswith("Netwerk ")]
    assert headings == [
        "Netwerk 1: 4 samenlopen, 3 partners",
        "Netwerk 2: 3 samenlopen, 3 partners",
        "Netwerk 3: 2 samenlopen, 3 partners",
        "Netwerk 4: 1 samenloop, 2 partners",
    ]
    # Each drawing is inline, in its own box, in the order of the headings.
    drawings = page.find("svg", class_="network")
    assert [d["aria-label"] for d in drawings] == [
        "Netwerk 1: 4 samenlopen, 5 verbindingen, 3 partners",
        "Netwerk 2: 3 samenlopen, 2 verbindingen, 3 partners",
        "Netwerk 3: 2 samenlopen, 1 verbinding, 3 partners",
        "Netwerk 4: 1 samenloop, 0 verbindingen, 2 partners",
    ]
    assert text.index("Netwerk 1:") < text.index("Netwerk 2:") < text.index("Netwerk 4:")
    assert "Geen verbindingen: deze samenloop staat alleen." in text


def test_the_tables_list_every_group_and_link_of_a_component() -> None:
    text = network_section.network_section(synthetic_network()[:1])
    page = Page(f"<div>{text}</div>")
    cells = [t for t, tags, _ in page.texts if "td" in tags]
    for n in (1, 2, 3, 4):
        assert gid(n).hex()[:8] in cells
    assert "adres" in cells
    assert f"{FISCUS}, {GEMEENTE}" in cells  # a group's parties, sorted
    assert "3 okt 2026" in cells
    edge_rows = re.findall(r'<table class="network-edges">(.*?)</table>', text)[0]
    assert edge_rows.count("<tr>") == 1 + 5  # the heading and the five links
    assert f'<td class="d">{POLITIE}</td><td class="n">1</td>' in edge_rows
    assert f'<td class="d">{FISCUS}</td><td class="n">3</td>' in edge_rows
    # Both tables sit in boxes that scroll sideways on a narrow screen.
    assert len(page.find("div", class_="scroll", role="region")) == 2


def test_the_score_of_a_probable_person_hit_is_shown_in_dutch() -> None:
    text = network_section.network_section(synthetic_network())
    assert '<td class="n">14,2</td>' in text
    assert "waarsch. persoon" in text


def test_only_the_top_components_are_drawn_and_the_rest_counted() -> None:
    vs = [vertex(n, "kvk", GEMEENTE, days=n) for n in range(1, 9)]
    text = network_section.network_section(components(vs, []), top=5)
    assert text.count('class="network-component"') == 5
    assert "Niet getekend: nog 3 netwerken met samen 3 samenlopen." in text
    assert "Getekend: de 5 grootste" in text


def test_no_components_is_said_in_a_sentence_and_no_network_is_no_section() -> None:
    _, page = _page([])
    assert "Netwerk" in page.headings()
    assert any("Er is geen netwerk te tonen" in t for t, _, _ in page.texts)
    assert not page.find("svg", class_="network")
    _, without = _page(None)
    assert "Netwerk" not in without.headings()
    assert picture_report.render(_report()) == picture_report.render(_report(), None)


def test_party_names_are_escaped_in_the_report() -> None:
    hostile = '<img src=x onerror="alert(1)">&'
    vs = [vertex(1, "bsn", hostile), vertex(2, "kvk", GEMEENTE)]
    text, page = _page(components(vs, [edge(1, 2, hostile)]))
    assert "<img" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in text
    assert not page.find("img")


def test_the_report_with_a_network_is_the_same_twice_and_names_no_url() -> None:
    network = synthetic_network()
    text = picture_report.render(_report(), network)
    assert picture_report.render(_report(), network) == text
    assert "http://" not in text
    assert "https://" not in text
    assert "<script" not in text


def test_the_styles_set_larger_type_on_a_phone_and_let_the_section_span_pages() -> None:
    _, page = _page(synthetic_network())
    assert "svg.network .id{" in page.style
    assert "@media (max-width:600px){svg.network .id{font-size:15px}" in page.style
    # On paper the section may run over pages; a component stays on one where it fits.
    assert "@media print{section.network{break-inside:auto" in page.style
    assert page.find("section", class_="network")
    # The legend gives every shape and every colour class.
    legend = [t for t, _, a in page.texts if a.get("class") != "meta"]
    for words in ("persoon (BSN)", "adres (ook BAG)", "bankrekening (IBAN)", "5 of meer"):
        assert words in legend


def test_a_large_component_is_drawn_without_labels_and_the_section_says_so() -> None:
    n = svg.LABEL_LIMIT + 10
    vs = [vertex(k, "kvk" if k % 3 else "address", f"{GEMEENTE},{FISCUS}") for k in range(n)]
    es = [edge(k, (k - 1) // 2, FISCUS) for k in range(1, n)]  # a binary tree
    (big,) = components(vs, es)
    root = _tree(big)
    w, h = _view(root)
    assert w == 720
    assert h <= 720
    drawn = _vertices(root)
    assert len(drawn) == n
    assert not [t for t in root.iter(f"{NS}text") if t.attrib["class"] in ("id", "type")]
    for g in drawn.values():
        assert g.find(f"{NS}title") is not None
        assert all(0 <= x <= w and 0 <= y <= h for x, y in _outline(_shape_element(g)))
    text = network_section.network_section([big])
    assert f"Meer dan {svg.LABEL_LIMIT} samenlopen: de tekening zet er geen namen bij" in text
    assert "de tekening zet er geen namen bij" not in network_section.network_section(
        synthetic_network()
    )
