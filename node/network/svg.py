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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from babel.dates import format_date

from samenloop.node.network.graph import Component, Edge, Vertex

__all__ = [
    "CSS",
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
]

#: The drawing's width in SVG units; its height follows the layout.
VIEW_WIDTH: Final = 480
#: The layout's seed: fixed, so that a component is drawn the same way every time.
SEED: Final = 17
_RADIUS: Final = 13.0
#: Room around the vertices: sideways for a label as wide as "vestigingsnummer", above for
#: the top vertex's outline, below for the lowest vertex's two label lines.
_PAD_X: Final = 68.0
_PAD_TOP: Final = 22.0
_PAD_BOTTOM: Final = 46.0
#: Largest and smallest height of the drawing.
_MAX_HEIGHT: Final = 420.0
_MIN_HEIGHT: Final = 96.0
#: Vertices beyond this many get no label under them (their tooltip and the table say it).
_LABEL_LIMIT: Final = 30

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
    of a drawing :data:`VIEW_WIDTH` wide; see :func:`drawing_height` for its height.

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


def _fit(raw: Mapping[bytes, tuple[float, float]]) -> dict[bytes, tuple[float, float]]:
    """Scale ``raw`` (any units) uniformly into the drawing's inner box, centred."""
    xs = [p[0] for p in raw.values()]
    ys = [p[1] for p in raw.values()]
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    inner_w = VIEW_WIDTH - 2 * _PAD_X
    inner_h = _MAX_HEIGHT - _PAD_TOP - _PAD_BOTTOM
    scale = min(inner_w / span_x if span_x else math.inf, inner_h / span_y if span_y else math.inf)
    if math.isinf(scale):  # one vertex, or all on one spot
        scale = 0.0
    mid_x, mid_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    height = drawing_height(span_y * scale)
    centre_y = _PAD_TOP + (height - _PAD_TOP - _PAD_BOTTOM) / 2
    return {
        g: (
            round(VIEW_WIDTH / 2 + (x - mid_x) * scale, 1),
            round(centre_y + (y - mid_y) * scale, 1),
        )
        for g, (x, y) in raw.items()
    }


def drawing_height(span: float) -> float:
    """The drawing's height for vertices spread ``span`` units from top to bottom."""
    return round(max(_MIN_HEIGHT, min(_MAX_HEIGHT, span + _PAD_TOP + _PAD_BOTTOM)), 1)


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


def _edges(component: Component, at: Mapping[bytes, tuple[float, float]]) -> list[str]:
    """A line per edge, or a curve per reporter where several report one pair; its count
    in the middle, on a white halo."""
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
            # The middle of the curve is halfway between the chord and the control point.
            mx, my = (x1 + x2) / 2 + nx_ * bend / 2, (y1 + y2) / 2 + ny_ * bend / 2
            counts.append(
                f'<text class="count" x="{mx:.1f}" y="{my + 4:.1f}" text-anchor="middle">'
                f"{e.count}{title}</text>"
            )
    return lines + counts


def render_component(component: Component, *, seed: int = SEED, label: str = "netwerk") -> str:
    """``component`` as one ``<svg>`` element (a ``str``), ready to inline in HTML.

    ``label`` starts the drawing's ``aria-label``, for instance ``netwerk 1``.
    """
    at = layout(component, seed=seed)
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
        f'<svg class="network" viewBox="0 0 {VIEW_WIDTH} {height}" width="100%" '
        f'style="max-width:40rem" role="img" aria-label="{_e(aria)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        '<g class="edges">',
        *_edges(component, at),
        "</g>",
        '<g class="vertices">',
    ]
    labelled = n <= _LABEL_LIMIT
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
    parts.append("</g></svg>")
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
