"""A component of the subject network drawn as inline SVG, for the HTML picture report.

The layout is force-directed (networkx's Fruchterman-Reingold ``spring_layout``) with a
fixed seed, over the vertices and edges in group-id order, and rounded to a tenth of a
unit: the same component gives the same bytes every time. No script, no font, nothing
from elsewhere; every text from data is escaped.

What a reader sees:

* a vertex per hit group, its **shape** by identifier type (a person a circle, a
  probable person hit a dashed circle, a company a square, an address a diamond, a
  vehicle a triangle, a bank account a hexagon, a phone number or e-mail address a
  pentagon, anything else an octagon) and its **colour** by the number of partners in the
  group, on ColorBrewer's sequential, colour-blind-safe ``YlGnBu`` scale;
* under it the group's short id (the first 8 hex digits) and its type, never an
  identifier (the network holds none);
* a line per edge (one per reporting partner; several partners on one pair are drawn as
  curves side by side) with its count of signals in the middle;
* a ``<title>`` per vertex and per edge (the tooltip), and ``role="img"`` with an
  ``aria-label`` that says what the drawing holds.

The drawing is 480 units wide, ``width="100%"`` up to 40rem, so that on a 400 px phone
the text is still about 10 px high and on a wide screen it does not grow past the tables.
The words are Dutch, like the report's.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from babel.dates import format_date

from samenloop.node.network.graph import Component, Edge, Vertex

__all__ = [
    "CSS",
    "LABEL_LIMIT",
    "PARTNER_COLOURS",
    "SHAPES",
    "TYPE_NAMES",
    "VIEW_WIDTH",
    "drawing_height",
    "layout",
    "legend_html",
    "partner_colour",
    "render_component",
    "shape_of",
    "short_id",
    "type_name",
    "view_width",
]

#: The drawing's width in SVG units for up to 8 vertices (wider for more, up to 720);
#: its height follows the layout.
VIEW_WIDTH: Final = 480
_WIDEST: Final = 720
#: The layout's seed: fixed, so that a component is drawn the same way every time.
SEED: Final = 17
_RADIUS: Final = 13.0
#: Room around the vertices: sideways for a label as wide as "vestigingsnummer", above for
#: the top vertex's outline, below for the lowest vertex's two label lines.
_PAD_X: Final = 68.0
_PAD_TOP: Final = 22.0
_PAD_BOTTOM: Final = 46.0
#: Largest height of the drawing of up to 8 vertices, of any, and the smallest.
_MAX_HEIGHT: Final = 420.0
_TALLEST: Final = 720.0
_MIN_HEIGHT: Final = 96.0
#: The box a vertex and its labels need, kept clear of every other vertex's.
_BOX_W: Final = 84.0
_BOX_H: Final = 58.0
#: Vertices beyond this many get no label under them (their tooltip and the table say it).
LABEL_LIMIT: Final = 30

#: Shape per identifier type; a type not listed is an octagon, a person key (``person.*``)
#: or any vertex with a score a dashed circle.
SHAPES: Final[Mapping[str, str]] = {
    "bsn": "circle",
    "person": "circle",
    "kvk": "square",
    "rsin": "square",
    "vestiging": "square",
    "address": "diamond",
    "bag": "diamond",
    "kenteken": "triangle",
    "iban": "hexagon",
    "phone": "pentagon",
    "email": "pentagon",
}

#: The identifier types in the report's words.
TYPE_NAMES: Final[Mapping[str, str]] = {
    "bsn": "BSN",
    "person": "persoon",
    "kvk": "KvK-nummer",
    "rsin": "RSIN",
    "vestiging": "vestigingsnummer",
    "address": "adres",
    "bag": "BAG-id",
    "kenteken": "kenteken",
    "iban": "IBAN",
    "phone": "telefoonnummer",
    "email": "e-mailadres",
}
_PROBABLE_NAME: Final = "waarsch. persoon"

#: The drawing's styles, for the page that inlines it (the report adds them to its own).
CSS: Final = (
    "svg.network text{font-family:system-ui,sans-serif}"
    "svg.network .id{font:12px ui-monospace,Menlo,Consolas,monospace;fill:#1b1b1b}"
    "svg.network .type{font-size:11px;fill:#444}"
    "svg.network .id,svg.network .type,svg.network .count{paint-order:stroke;stroke:#fff;"
    "stroke-width:4px;stroke-linejoin:round}"
    "svg.network .count{font-size:12px;font-weight:bold;fill:#1b1b1b}"
    "svg.network .partners{font-size:11px;font-weight:bold}"
    ".network-legend svg{flex:none}"
    # On a phone the drawing shrinks to about 0.75 of its size: larger type keeps the
    # labels near 10 px.
    "@media (max-width:600px){svg.network .id{font-size:15px}svg.network .type{font-size:14px}"
    "svg.network .count{font-size:16px}svg.network .partners{font-size:13px}}"
)

#: ColorBrewer ``YlGnBu``, five classes (light to dark): 1, 2, 3, 4, 5 or more partners.
PARTNER_COLOURS: Final = ("#ffffcc", "#a1dab4", "#41b6c4", "#2c7fb8", "#253494")
_LOCALE: Final = "nl_NL"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def short_id(group_id: bytes) -> str:
    """The group's id as a reader sees it: its first 8 hex digits."""
    return group_id.hex()[:8]


def _probable(vertex: Vertex) -> bool:
    return vertex.identifier_type.startswith("person.") or vertex.score is not None


def shape_of(vertex: Vertex) -> str:
    """The vertex's shape: ``circle``, ``dashed-circle``, ``square``, ``diamond``,
    ``triangle``, ``hexagon``, ``pentagon`` or ``octagon``."""
    if _probable(vertex):
        return "dashed-circle"
    return SHAPES.get(vertex.identifier_type, "octagon")


def type_name(vertex: Vertex) -> str:
    """The vertex's identifier type in the report's words."""
    if _probable(vertex):
        return _PROBABLE_NAME
    return TYPE_NAMES.get(vertex.identifier_type, vertex.identifier_type)


def partner_colour(partners: int) -> str:
    """The fill for a group with ``partners`` partners (1 to 5 or more)."""
    return PARTNER_COLOURS[max(1, min(partners, len(PARTNER_COLOURS))) - 1]


def _partner_ink(partners: int) -> str:
    """A readable colour on :func:`partner_colour` (white on the two darkest)."""
    return "#fff" if partners >= 4 else "#1b1b1b"


def _day(when: datetime) -> str:
    return format_date(when.astimezone(UTC).date(), "d MMM y", locale=_LOCALE)


# --- layout ----------------------------------------------------------------------------------


def layout(component: Component, *, seed: int = SEED) -> dict[bytes, tuple[float, float]]:
    """Each vertex's position in the drawing's units (x right, y down), inside the margins
    of a drawing :func:`view_width` wide; see :func:`drawing_height` for its height.

    Force-directed and deterministic: the vertices and edges go into networkx in group-id
    order, the seed is fixed and positions are rounded to 0.1.
    """
    ids = [v.group_id for v in component.vertices]
    if not ids:
        return {}
    if len(ids) == 1:
        raw = {ids[0]: (0.0, 0.0)}
    else:
        import networkx as nx  # only when drawing: the CLI's start stays light

        graph: nx.Graph[int] = nx.Graph()
        index = {g: i for i, g in enumerate(ids)}
        graph.add_nodes_from(range(len(ids)))
        pairs = sorted({(index[e.a], index[e.b]) for e in component.edges})
        graph.add_edges_from(pairs)
        placed = nx.spring_layout(graph, seed=seed, iterations=200)
        raw = _level({g: (float(placed[index[g]][0]), float(placed[index[g]][1])) for g in ids})
    return _fit(raw)


def _level(raw: Mapping[bytes, tuple[float, float]]) -> dict[bytes, tuple[float, float]]:
    """``raw`` turned about its centre so that its long axis lies along x (the drawing is
    wider than high): the angle of the principal axis of the points, in closed form."""
    n = len(raw)
    mx = sum(x for x, _ in raw.values()) / n
    my = sum(y for _, y in raw.values()) / n
    sxx = sum((x - mx) ** 2 for x, _ in raw.values())
    syy = sum((y - my) ** 2 for _, y in raw.values())
    sxy = sum((x - mx) * (y - my) for x, y in raw.values())
    angle = 0.5 * math.atan2(2 * sxy, sxx - syy)
    c, s = math.cos(-angle), math.sin(-angle)
    return {
        g: ((x - mx) * c - (y - my) * s, (x - mx) * s + (y - my) * c) for g, (x, y) in raw.items()
    }


def view_width(n: int) -> int:
    """The drawing's width for ``n`` vertices."""
    return VIEW_WIDTH if n <= 8 else min(_WIDEST, VIEW_WIDTH + 30 * (n - 8))


def _inner_height(n: int) -> float:
    """The most height the vertices may spread over: more for a larger component."""
    most = _MAX_HEIGHT if n <= 8 else min(_TALLEST, _MAX_HEIGHT + 28.0 * (n - 8))
    return most - _PAD_TOP - _PAD_BOTTOM


def _fit(raw: Mapping[bytes, tuple[float, float]]) -> dict[bytes, tuple[float, float]]:
    """Scale ``raw`` (any units) uniformly into the drawing's inner box, move vertices
    apart whose labels would overlap, and centre the result; rounded to 0.1."""
    xs = [p[0] for p in raw.values()]
    ys = [p[1] for p in raw.values()]
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    width = view_width(len(raw))
    inner_w, inner_h = width - 2 * _PAD_X, _inner_height(len(raw))
    scale = min(inner_w / span_x if span_x else math.inf, inner_h / span_y if span_y else math.inf)
    if math.isinf(scale):  # one vertex, or all on one spot
        scale = 0.0
    mid_x, mid_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    placed = {
        g: [width / 2 + (x - mid_x) * scale, inner_h / 2 + (y - mid_y) * scale]
        for g, (x, y) in raw.items()
    }
    _spread(placed, inner_h)
    top = min(p[1] for p in placed.values())
    span = max(p[1] for p in placed.values()) - top
    shift = _PAD_TOP + (drawing_height(span) - _PAD_TOP - _PAD_BOTTOM - span) / 2 - top
    return {g: (round(x, 1), round(y + shift, 1)) for g, (x, y) in placed.items()}


def _spread(placed: dict[bytes, list[float]], inner_h: float) -> None:
    """Push apart, in place, vertices whose boxes (the shape and its labels) overlap,
    along the axis where they overlap least, keeping them in the inner box (y from 0 to
    ``inner_h``). Deterministic: pairs in group-id order, a fixed number of rounds."""
    ids = sorted(placed)
    low_x, high_x = _PAD_X, view_width(len(placed)) - _PAD_X
    for _ in range(60):
        moved = False
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                pa, pb = placed[a], placed[b]
                dx, dy = pb[0] - pa[0], pb[1] - pa[1]
                over_x, over_y = _BOX_W - abs(dx), _BOX_H - abs(dy)
                if over_x <= 0 or over_y <= 0:
                    continue
                moved = True
                axis, over, d = (
                    (0, over_x, dx) if over_x / _BOX_W < over_y / _BOX_H else (1, over_y, dy)
                )
                step = over / 2 * (1.0 if d >= 0 else -1.0)
                pa[axis] -= step
                pb[axis] += step
        for p in placed.values():
            p[0] = min(max(p[0], low_x), high_x)
            p[1] = min(max(p[1], 0.0), inner_h)
        if not moved:
            return


def drawing_height(span: float) -> float:
    """The drawing's height for vertices spread ``span`` units from top to bottom."""
    return round(max(_MIN_HEIGHT, span + _PAD_TOP + _PAD_BOTTOM), 1)


# --- shapes ----------------------------------------------------------------------------------


def _points(cx: float, cy: float, radius: float, corners: int, turn: float) -> str:
    return " ".join(
        f"{cx + radius * math.cos(turn + 2 * math.pi * k / corners):.1f},"
        f"{cy + radius * math.sin(turn + 2 * math.pi * k / corners):.1f}"
        for k in range(corners)
    )


def _shape(shape: str, cx: float, cy: float, r: float, paint: str) -> str:
    """One shape centred on (cx, cy), inside a circle of about radius ``r * 1.2``."""
    if shape in ("circle", "dashed-circle"):
        dash = ' stroke-dasharray="4 3"' if shape == "dashed-circle" else ""
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}"{dash} {paint}/>'
    if shape == "square":
        s = r * 0.9
        return (
            f'<rect x="{cx - s:.1f}" y="{cy - s:.1f}" width="{2 * s:.1f}" '
            f'height="{2 * s:.1f}" {paint}/>'
        )
    corners, turn, scale = {
        "diamond": (4, -math.pi / 2, 1.2),
        "triangle": (3, -math.pi / 2, 1.25),
        "hexagon": (6, 0.0, 1.1),
        "pentagon": (5, -math.pi / 2, 1.15),
    }.get(shape, (8, math.pi / 8, 1.08))
    # A triangle's centre of mass sits low in its box: lift it so it looks centred.
    lift = r * 0.2 if shape == "triangle" else 0.0
    return f'<polygon points="{_points(cx, cy + lift, r * scale, corners, turn)}" {paint}/>'


def _icon(shape: str, fill: str) -> str:
    """A legend swatch: the shape, 18 px."""
    paint = f'fill="{fill}" stroke="#1b1b1b" stroke-width="1.5"'
    return (
        f'<svg width="20" height="20" viewBox="0 0 20 20" aria-hidden="true">'
        f"{_shape(shape, 10, 10, 7, paint)}</svg>"
    )


# --- the drawing -----------------------------------------------------------------------------


def _vertex_title(v: Vertex) -> str:
    parties = ", ".join(sorted(v.parties))
    n = len(v.parties)
    text = (
        f"samenloop {short_id(v.group_id)} · {type_name(v)} · {n} "
        f"{'partner' if n == 1 else 'partners'}: {parties} · eerst gezien {_day(v.first_seen)}"
        f" · laatst gezien {_day(v.last_seen)}"
    )
    if v.score is not None:
        text += f" · score {v.score:.1f}"
    return text


def _edge_title(e: Edge) -> str:
    signals = "signaal verbindt" if e.count == 1 else "signalen verbinden"
    return f"{e.reporter}: {e.count} {signals} samenloop {short_id(e.a)} en {short_id(e.b)}"


def _count_spot(
    start: tuple[float, float],
    control: tuple[float, float],
    end: tuple[float, float],
    vertices: Iterable[tuple[float, float]],
) -> tuple[float, float]:
    """Where an edge's count goes: the middle of its curve, unless a vertex or its labels
    are there; then the first point further along either way that is clear (else the
    middle)."""
    boxes = list(vertices)

    def clear(x: float, y: float) -> bool:
        return all(
            not (abs(x - vx) < 40 and vy - _RADIUS - 8 < y < vy + _RADIUS + 36) for vx, vy in boxes
        )

    for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.25, 0.75):
        x = (1 - t) ** 2 * start[0] + 2 * (1 - t) * t * control[0] + t**2 * end[0]
        y = (1 - t) ** 2 * start[1] + 2 * (1 - t) * t * control[1] + t**2 * end[1]
        if clear(x, y):
            return x, y
    return (
        0.25 * start[0] + 0.5 * control[0] + 0.25 * end[0],
        0.25 * start[1] + 0.5 * control[1] + 0.25 * end[1],
    )


def _edges(
    component: Component, at: Mapping[bytes, tuple[float, float]]
) -> tuple[list[str], list[str]]:
    """A line per edge, or a curve per reporter where several report one pair; its count
    in the middle (or where no vertex is), on a white halo: the lines and the counts (drawn
    last, over the vertices' labels where they cannot avoid them)."""
    by_pair: dict[tuple[bytes, bytes], list[Edge]] = {}
    for e in component.edges:
        by_pair.setdefault((e.a, e.b), []).append(e)
    lines: list[str] = []
    counts: list[str] = []
    for (a, b), edges in sorted(by_pair.items()):
        (x1, y1), (x2, y2) = at[a], at[b]
        length = math.hypot(x2 - x1, y2 - y1) or 1.0
        nx_, ny_ = -(y2 - y1) / length, (x2 - x1) / length  # unit normal
        for i, e in enumerate(sorted(edges, key=lambda e: e.reporter)):
            bend = (i - (len(edges) - 1) / 2) * 30.0
            cx, cy = (x1 + x2) / 2 + nx_ * bend, (y1 + y2) / 2 + ny_ * bend
            width = 1.5 + min(e.count - 1, 4) * 0.75
            title = f"<title>{_e(_edge_title(e))}</title>"
            if bend:
                path = f"M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}"
                lines.append(
                    f'<path class="edge" d="{path}" fill="none" stroke="#6b6b6b" '
                    f'stroke-width="{width:.2f}">{title}</path>'
                )
            else:
                lines.append(
                    f'<line class="edge" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" '
                    f'y2="{y2:.1f}" stroke="#6b6b6b" stroke-width="{width:.2f}">{title}</line>'
                )
            mx, my = _count_spot((x1, y1), (cx, cy), (x2, y2), at.values())
            counts.append(
                f'<text class="count" x="{mx:.1f}" y="{my + 4:.1f}" text-anchor="middle">'
                f"{e.count}{title}</text>"
            )
    return lines, counts


def render_component(component: Component, *, seed: int = SEED, label: str = "netwerk") -> str:
    """``component`` as one ``<svg>`` element (a ``str``), ready to inline in HTML.

    ``label`` starts the drawing's ``aria-label``, for instance ``netwerk 1``.
    """
    at = layout(component, seed=seed)
    lines, counts = _edges(component, at)
    width = view_width(len(component.vertices))
    height = drawing_height(
        (max(y for _, y in at.values()) - min(y for _, y in at.values())) if at else 0.0
    )
    n, partners = len(component.vertices), len(component.partners)
    aria = (
        f"{label}: {n} {'samenloop' if n == 1 else 'samenlopen'}, "
        f"{len(component.edges)} {'verbinding' if len(component.edges) == 1 else 'verbindingen'}"
        f", {partners} {'partner' if partners == 1 else 'partners'}"
    )
    parts = [
        f'<svg class="network" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width / 12:.0f}rem" role="img" aria-label="{_e(aria)}">',
        '<g class="edges">',
        *lines,
        "</g>",
        '<g class="vertices">',
    ]
    labelled = n <= LABEL_LIMIT
    for v in component.vertices:
        cx, cy = at[v.group_id]
        count = len(v.parties)
        paint = f'fill="{partner_colour(count)}" stroke="#1b1b1b" stroke-width="1.5"'
        shape = shape_of(v)
        parts.append(
            f'<g class="vertex" data-group="{short_id(v.group_id)}" data-shape="{shape}" '
            f'data-partners="{count}"><title>{_e(_vertex_title(v))}</title>'
            f"{_shape(shape, cx, cy, _RADIUS, paint)}"
            f'<text class="partners" x="{cx:.1f}" y="{cy + 4.5:.1f}" text-anchor="middle" '
            f'fill="{_partner_ink(count)}">{count}</text>'
        )
        if labelled:
            parts.append(
                f'<text class="id" x="{cx:.1f}" y="{cy + _RADIUS + 14:.1f}" '
                f'text-anchor="middle">{short_id(v.group_id)}</text>'
                f'<text class="type" x="{cx:.1f}" y="{cy + _RADIUS + 29:.1f}" '
                f'text-anchor="middle">{_e(type_name(v))}</text>'
            )
        parts.append("</g>")
    parts.append(f'</g><g class="counts">{"".join(counts)}</g></svg>')
    return "".join(parts)


#: The legend's shapes, in the order a reader meets them.
_LEGEND_SHAPES: Final[Sequence[tuple[str, str]]] = (
    ("circle", "persoon (BSN)"),
    ("dashed-circle", "waarschijnlijke persoon (naam en geboortedatum)"),
    ("square", "bedrijf (KvK, RSIN, vestiging)"),
    ("diamond", "adres (ook BAG)"),
    ("triangle", "voertuig (kenteken)"),
    ("hexagon", "bankrekening (IBAN)"),
    ("pentagon", "telefoon of e-mail"),
)


def legend_html() -> str:
    """The key to every drawing: the shapes, the partner colours and what a line and its
    number mean, as a list that wraps on a narrow screen."""
    items = [f"<li>{_icon(shape, '#fff')}{_e(text)}</li>" for shape, text in _LEGEND_SHAPES]
    colours = [
        f'<li><span class="swatch" style="background:{c}"></span>'
        f"{i + 1 if i + 1 < len(PARTNER_COLOURS) else f'{i + 1} of meer'}</li>"
        for i, c in enumerate(PARTNER_COLOURS)
    ]
    return (
        f'<ul class="map-legend network-legend" aria-label="vormen">{"".join(items)}</ul>'
        '<ul class="map-legend network-legend" aria-label="kleuren">'
        "<li>Kleur (en getal in de vorm): aantal partners in de samenloop</li>"
        f"{''.join(colours)}</ul>"
        '<p class="legend">Een lijn: het signaal van één partner verbindt twee samenlopen; '
        "het getal op de lijn is het aantal van zulke signalen (nooit welke). Melden "
        "meer partners dezelfde verbinding, dan staan hun lijnen als bogen naast elkaar.</p>"
    )
