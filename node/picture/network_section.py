"""The picture report's network section: the largest components of the subject network,
each drawn (:mod:`samenloop.node.network.svg`) and followed by a table of its hit groups
and one of its links.

Sans-IO, like the report: components in, HTML out, every text from data escaped. The
components are ranked again here with :func:`~samenloop.node.network.graph.components`
(most groups, then most partners, then most recent, then smallest group id), so the order
on the page does not depend on the order they were given in.

Unlike the rest of the report, this section is not counts under disclosure control: it
names partners and hit groups (never an identifier), for the coordinator who may see them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from babel.dates import format_date
from babel.numbers import format_decimal

from samenloop.node.network import svg
from samenloop.node.network.graph import Component, components

__all__ = ["NETWORK_CSS", "NETWORK_TOP", "network_section"]

#: How many components are drawn; the others are counted below them.
NETWORK_TOP: Final = 5
_LOCALE: Final = "nl_NL"
_DASH: Final = "\u2013"

#: The section's styles, for the report's ``<style>``: the drawing's, its tables', and on
#: paper a section that may run over pages (each component stays on one where it fits).
NETWORK_CSS: Final = (
    "h4{font-size:.95rem;margin:.8rem 0 .2rem}td.d{white-space:nowrap}"
    "td.parties{min-width:12rem}"
    + svg.CSS
    + "@media print{section.network{break-inside:auto;page-break-inside:auto}}"
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _day(when: datetime) -> str:
    return format_date(when.astimezone(UTC).date(), "d MMM y", locale=_LOCALE)


def _boxed(table_html: str, caption: str) -> str:
    """A table in its own box that scrolls sideways on a narrow screen (as the report's)."""
    return (
        f'<div class="scroll" role="region" tabindex="0" aria-label="{_e(caption)}">'
        f"{table_html}</div>"
    )


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _vertex_table(component: Component, caption: str) -> str:
    rows = [
        "<thead><tr><th>samenloop</th><th>soort</th><th>partners</th><th>partijen</th>"
        "<th>eerst gezien</th><th>laatst gezien</th><th>score</th></tr></thead><tbody>"
    ]
    for v in component.vertices:
        score = "" if v.score is None else format_decimal(round(v.score, 1), locale=_LOCALE)
        rows.append(
            f"<tr><td><code>{svg.short_id(v.group_id)}</code></td>"
            f'<td class="d">{_e(svg.type_name(v))}</td>'
            f'<td class="n">{len(v.parties)}</td>'
            f'<td class="parties">{_e(", ".join(sorted(v.parties)))}</td>'
            f'<td class="d">{_e(_day(v.first_seen))}</td><td class="d">{_e(_day(v.last_seen))}'
            f'</td><td class="n">{_e(score)}</td></tr>'
        )
    rows.append("</tbody>")
    return _boxed(f'<table class="network-vertices">{"".join(rows)}</table>', caption)


def _edge_table(component: Component, caption: str) -> str:
    if not component.edges:
        return '<p class="legend">Geen verbindingen: deze samenloop staat alleen.</p>'
    rows = ["<thead><tr><th>tussen</th><th>gemeld door</th><th>signalen</th></tr></thead><tbody>"]
    for e in component.edges:
        rows.append(
            f"<tr><td><code>{svg.short_id(e.a)}</code>\u00a0{_DASH} "
            f"<code>{svg.short_id(e.b)}</code></td>"
            f'<td class="d">{_e(e.reporter)}</td><td class="n">{e.count}</td></tr>'
        )
    rows.append("</tbody>")
    return _boxed(f'<table class="network-edges">{"".join(rows)}</table>', caption)


def _component(rank: int, component: Component) -> str:
    n, partners = len(component.vertices), len(component.partners)
    label = f"Netwerk {rank}"
    heading = (
        f"{label}: {_plural(n, 'samenloop', 'samenlopen')}, "
        f"{_plural(partners, 'partner', 'partners')}"
    )
    meta = (
        f'<p class="meta">Eerst gezien {_e(_day(component.first_seen))} · laatst gezien '
        f"{_e(_day(component.last_seen))} · partners: {_e(', '.join(sorted(component.partners)))}"
        "</p>"
    )
    if n > svg.LABEL_LIMIT:
        meta += (
            f'<p class="legend">Meer dan {svg.LABEL_LIMIT} samenlopen: de tekening zet er geen '
            "namen bij; de tooltip van elke vorm en de tabel noemen ze.</p>"
        )
    return (
        f'<section class="network-component" data-rank="{rank}"><h3>{_e(heading)}</h3>{meta}'
        f'<div class="scroll network-drawing">{svg.render_component(component, label=label)}'
        f"</div>"
        f"<h4>Samenlopen</h4>{_vertex_table(component, f'{label}: samenlopen')}"
        f"<h4>Verbindingen</h4>{_edge_table(component, f'{label}: verbindingen')}</section>"
    )


def _wrap(content: str) -> str:
    return f'<section class="network"><h2>Netwerk</h2>{content}</section>'


def network_section(network: Sequence[Component], *, top: int = NETWORK_TOP) -> str:
    """The section "Netwerk": the ``top`` largest components of ``network``, drawn, each
    with its tables; a sentence when there are none."""
    ranked = components(
        [v for c in network for v in c.vertices], [e for c in network for e in c.edges]
    )
    if not ranked:
        return _wrap(
            '<p class="legend">Er is geen netwerk te tonen: er zijn geen samenlopen die de '
            "coördinator mag zien.</p>"
        )
    shown = ranked[:top]
    linked = sum(1 for c in ranked if c.edges)
    intro = (
        f'<p class="legend">Samenlopen die het signaal van een partner met elkaar verbindt, '
        f"als netwerken: {_plural(len(ranked), 'netwerk', 'netwerken')} "
        f"({linked} met verbindingen). Getekend: "
        + ("alle, " if len(shown) == len(ranked) else f"de {len(shown)} grootste, ")
        + "de meeste samenlopen eerst, dan de meeste partners. Het netwerk noemt partners en "
        "samenlopen, nooit een identificerend gegeven.</p>"
    )
    rest = ranked[len(shown) :]
    tail = ""
    if rest:
        groups = sum(len(c.vertices) for c in rest)
        tail = (
            f'<p class="legend">Niet getekend: nog {_plural(len(rest), "netwerk", "netwerken")} '
            f"met samen {_plural(groups, 'samenloop', 'samenlopen')}.</p>"
        )
    return _wrap(
        intro + svg.legend_html() + "".join(_component(i, c) for i, c in enumerate(shown, 1)) + tail
    )
