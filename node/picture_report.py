"""The regional picture as one self-contained HTML file, for an offline government laptop.

No external URL of any kind: inline CSS, inline SVG, no scripts, no fonts, no
images from elsewhere. Every text that comes from data is escaped. Sans-IO:
``render`` takes released tables and metadata and returns the HTML text; the
caller writes it where it likes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from samenloop.node.picture import (
    TOTAL,
    CellQuality,
    Dimension,
    Measure,
    Period,
    ReleasedCell,
    ReleasedTable,
)

__all__ = ["SUPPRESSED_MARK", "PictureReport", "render"]

#: How a suppressed cell shows; the legend explains it.
SUPPRESSED_MARK = "•"
#: Prefix of a noisy figure; its tooltip gives the noise scale.
NOISY_MARK = "≈"

_LABELS = {
    Measure.ACTIVE_SIGNALS: "active signals",
    Measure.HIT_GROUPS: "samenloop (hit groups)",
    Measure.CASES_OPENED: "cases opened",
    Measure.CASES_CLOSED: "cases closed",
    Measure.INTERVENTIONS: "interventions",
}
_DIMENSION_LABELS = {
    Dimension.AREA: "area",
    Dimension.BRANCH: "branch (SBI)",
    Dimension.CATEGORY: "category",
    Dimension.ROLE: "role",
    Dimension.MONTH: "month",
    Dimension.INTERVENTION_TYPE: "intervention type",
}


@dataclass(frozen=True, slots=True)
class PictureReport:
    """What the report shows. Every table is a released one (after disclosure control).

    ``trend``: tables by month (active signals, hit groups); ``areas`` and ``branches``:
    tables by area and by branch (top ``top`` rows shown); ``heat``: a table by branch
    and category; ``accountability``: case tables by month (opened, closed) and an
    interventions table by intervention type (and optionally month).
    """

    title: str
    covenant: str
    period: Period
    generated_at: datetime
    trend: Sequence[ReleasedTable] = ()
    areas: ReleasedTable | None = None
    branches: ReleasedTable | None = None
    heat: ReleasedTable | None = None
    accountability: Sequence[ReleasedTable] = field(default_factory=tuple)
    top: int = 10
    notes: Sequence[str] = ()


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:2rem;
color:#1b1b1b;max-width:70rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ccc}
.meta{color:#555}.legend{font-size:.9rem;color:#444}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0;text-align:left}
td.sup{color:#888;text-align:center}tr.total td,td.total{font-weight:bold;background:#fafafa}
svg text{font-size:11px;fill:#333}
"""

_SERIES_COLOURS = ("#1f5fa8", "#c2410c", "#15803d", "#7c3aed")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _figure(cell: ReleasedCell) -> tuple[str, str, str]:
    """The cell's text, its title (tooltip) and its CSS class."""
    if cell.quality is CellQuality.SUPPRESSED or cell.count is None:
        return SUPPRESSED_MARK, "suppressed (too few)", "n sup"
    if cell.quality is CellQuality.NOISY:
        return (
            f"{NOISY_MARK}{cell.count}",
            f"noisy, standard deviation {cell.noise_scale:.1f}",
            "n",
        )
    return str(cell.count), "exact", "n"


def _td(cell: ReleasedCell, *, style: str = "") -> str:
    text, title, css = _figure(cell)
    if cell.is_total:
        css += " total"
    attr = f' style="{_e(style)}"' if style else ""
    return f'<td class="{css}" title="{_e(title)}"{attr}>{_e(text)}</td>'


def _list_table(table: ReleasedTable, top: int) -> str:
    """A one-dimensional table, largest released counts first, then the total."""
    dimension = table.dimensions[0]
    leaves = [table.cell((v,)) for v in table.axis(dimension)]
    leaves.sort(key=lambda c: (c.count is None, -(c.count or 0), c.values))
    rows = [f"<tr><td>{_e(c.values[0])}</td>{_td(c)}</tr>" for c in leaves[:top] if c.count != 0]
    if len(leaves) > top:
        rows.append(f'<tr><td colspan="2">… and {len(leaves) - top} more</td></tr>')
    if dimension in table.totals_over:
        total = table.cell((TOTAL,))
        rows.append(f'<tr class="total"><td>total</td>{_td(total)}</tr>')
    head = (
        f"<tr><th>{_e(_DIMENSION_LABELS[dimension])}</th><th>{_e(_LABELS[table.measure])}</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _shown_value(value: str) -> str:
    """A dimension value as a reader sees it: the totals row and column say "total"."""
    return "total" if value == TOTAL else value


def _heat_table(table: ReleasedTable) -> str:
    """Rows by the first dimension, columns by the second, cells coloured by count."""
    rows_dim, cols_dim = table.dimensions[0], table.dimensions[1]
    row_values = list(table.axis(rows_dim))
    col_values = list(table.axis(cols_dim))
    if cols_dim in table.totals_over:
        col_values.append(TOTAL)
    if rows_dim in table.totals_over:
        row_values.append(TOTAL)
    leaf_counts = [
        c.count
        for c in table.cells
        if not c.is_total and c.count is not None and c.quality is not CellQuality.SUPPRESSED
    ]
    peak = max(leaf_counts, default=0) or 1
    head = "".join(f"<th>{_e(_shown_value(v))}</th>" for v in col_values)
    lines = [f"<tr><th>{_e(_DIMENSION_LABELS[rows_dim])}</th>{head}</tr>"]
    for r in row_values:
        cells = []
        for c in col_values:
            cell = table.cell((r, c))
            style = ""
            if not cell.is_total and cell.count:
                alpha = 0.1 + 0.8 * min(cell.count / peak, 1.0)
                style = f"background:rgba(194,65,12,{alpha:.2f})"
            cells.append(_td(cell, style=style))
        css = ' class="total"' if r == TOTAL else ""
        lines.append(f"<tr{css}><th>{_e(_shown_value(r))}</th>{''.join(cells)}</tr>")
    return f"<table>{''.join(lines)}</table>"


def _trend_svg(tables: Sequence[ReleasedTable], months: Sequence[str]) -> str:
    """A line per measure over the months; suppressed months are gaps, marked below."""
    width, height, left, bottom, top = 640, 240, 48, 36, 16
    series: list[tuple[str, list[int | None]]] = []
    for table in tables:
        values = [table.cell((m,)).count for m in months]
        series.append((_LABELS[table.measure], values))
    peak = max((v for _, vs in series for v in vs if v is not None), default=0) or 1
    step = (width - left - 16) / max(len(months) - 1, 1)

    def x(i: int) -> float:
        return left + i * step

    def y(v: int) -> float:
        return height - bottom - (height - bottom - top) * v / peak

    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="trend by month">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 8}" y2="{height - bottom}" '
        'stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{height - bottom + 4}" text-anchor="end">0</text>',
    ]
    for i, m in enumerate(months):
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - bottom + 14}" '
            f'text-anchor="middle">{_e(m[2:])}</text>'
        )
    for n, (label, values) in enumerate(series):
        colour = _SERIES_COLOURS[n % len(_SERIES_COLOURS)]
        segment: list[str] = []
        segments: list[list[str]] = [segment]
        for i, v in enumerate(values):
            if v is None:
                segment = []
                segments.append(segment)
                parts.append(
                    f'<text x="{x(i):.1f}" y="{height - bottom - 4}" text-anchor="middle" '
                    f'fill="{colour}">{SUPPRESSED_MARK}</text>'
                )
                continue
            segment.append(f"{x(i):.1f},{y(v):.1f}")
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
        for points in segments:
            if len(points) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{" ".join(points)}"/>'
                )
        parts.append(
            f'<text x="{left + 8}" y="{top + 14 * (n + 1)}" fill="{colour}">{_e(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _month_table(tables: Sequence[ReleasedTable], months: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(_LABELS[t.measure])}</th>" for t in tables)
    rows = [f"<tr><th>month</th>{head}</tr>"]
    for m in months:
        rows.append(f"<tr><td>{_e(m)}</td>{''.join(_td(t.cell((m,))) for t in tables)}</tr>")
    return f"<table>{''.join(rows)}</table>"


def _any_table(table: ReleasedTable, top: int) -> str:
    if len(table.dimensions) == 1:
        return _list_table(table, top)
    if len(table.dimensions) == 2:
        return _heat_table(table)
    rows = [
        "<tr>"
        + "".join(f"<th>{_e(_DIMENSION_LABELS[d])}</th>" for d in table.dimensions)
        + "<th>count</th></tr>"
    ]
    for cell in table.cells:
        rows.append(
            "<tr>" + "".join(f"<td>{_e(v)}</td>" for v in cell.values) + _td(cell) + "</tr>"
        )
    return f"<table>{''.join(rows)}</table>"


def _legend(tables: Sequence[ReleasedTable]) -> str:
    min_counts = sorted({t.min_count for t in tables})
    scales = sorted({c.noise_scale for t in tables for c in t.cells if c.noise_scale > 0})
    text = (
        f"{SUPPRESSED_MARK} = suppressed: fewer than {', '.join(map(str, min_counts)) or '?'} "
        "(or suppressed to protect such a cell, so that it cannot be worked out from the "
        "totals)."
    )
    if scales:
        text += (
            f" {NOISY_MARK} = noisy (differential privacy): standard deviation "
            f"{scales[0]:.1f} to {scales[-1]:.1f} (see each cell's tooltip). "
            "Negative noisy results show as 0."
        )
    else:
        text += " Every figure shown is exact."
    return f'<p class="legend">{_e(text)}</p>'


def render(report: PictureReport) -> str:
    """The report as one HTML document (a ``str``), self-contained and escaped."""
    months = report.period.months()
    tables: list[ReleasedTable] = [*report.trend, *report.accountability]
    tables += [t for t in (report.areas, report.branches, report.heat) if t is not None]
    body = [
        f"<h1>{_e(report.title)}</h1>",
        f'<p class="meta">Covenant {_e(report.covenant)} · period {_e(report.period)} · '
        f"made {_e(report.generated_at.isoformat(timespec='minutes'))}</p>",
        _legend(tables),
    ]
    if report.trend:
        body += [
            "<h2>Trend by month</h2>",
            _trend_svg(report.trend, months),
            _month_table(report.trend, months),
        ]
    if report.areas is not None:
        body += [f"<h2>Top {report.top} areas</h2>", _list_table(report.areas, report.top)]
    if report.branches is not None:
        body += [
            f"<h2>Top {report.top} branches</h2>",
            _list_table(report.branches, report.top),
        ]
    if report.heat is not None and len(report.heat.dimensions) == 2:
        body += ["<h2>Branch &times; category</h2>", _heat_table(report.heat)]
    if report.accountability:
        body.append("<h2>Accountability (verantwoording): cases and interventions</h2>")
        by_month = [t for t in report.accountability if t.dimensions == (Dimension.MONTH,)]
        others = [t for t in report.accountability if t.dimensions != (Dimension.MONTH,)]
        if by_month:
            body.append(_month_table(by_month, months))
        for table in others:
            body += [f"<h3>{_e(_LABELS[table.measure])}</h3>", _any_table(table, report.top)]
    for note in report.notes:
        body.append(f'<p class="legend">{_e(note)}</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
