"""The regional picture as one self-contained HTML file, in Dutch, for an offline laptop.

No external URL of any kind: inline CSS, inline SVG, no scripts, no fonts, no
images from elsewhere. Every text that comes from data is escaped. Sans-IO:
``render`` takes released tables and metadata and returns the HTML text; the
caller writes it where it likes.

The report is written for a mayor as much as for an analyst: Dutch words (one
word per concept, the same as the CLI's and JSON's ``totaal``), dates as people
write them (``december 2026``, with Babel's Dutch locale), every figure saying
what it is (exact, ``≈`` noisy, ``•`` too few, ``◦`` withheld to protect another
cell), a map of the areas, and a page that prints with the covenant's
classification on every sheet.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from babel.dates import format_date
from babel.numbers import format_decimal

from samenloop.node.network.graph import Component
from samenloop.node.picture.arithmetic import (
    TOTAL,
    CellQuality,
    Dimension,
    Measure,
    Period,
    ReleasedCell,
    ReleasedTable,
    SuppressionReason,
)
from samenloop.node.picture.map import AreaMap, MapArea
from samenloop.node.picture.network_section import NETWORK_CSS, network_section

__all__ = [
    "NOISY_MARK",
    "PROTECTED_MARK",
    "SUPPRESSED_MARK",
    "PictureReport",
    "month_name",
    "period_name",
    "render",
]

#: A cell withheld because it is too small (primary suppression).
SUPPRESSED_MARK = "•"
#: A cell withheld, though not small itself (0 or at least the minimum), to protect a small one.
PROTECTED_MARK = "\u25cb"  # a white circle
#: Prefix of a noisy figure; its tooltip gives the noise scale.
NOISY_MARK = "≈"
_LOCALE = "nl_NL"

#: One Dutch word per concept, everywhere in the report.
_MEASURES = {
    Measure.ACTIVE_SIGNALS: "actieve signalen",
    Measure.HIT_GROUPS: "samenlopen",
    Measure.CASES_OPENED: "casussen geopend",
    Measure.CASES_CLOSED: "casussen afgesloten",
    Measure.INTERVENTIONS: "interventies",
}
_DIMENSIONS = {
    Dimension.AREA: "gebied",
    Dimension.BRANCH: "branche (SBI)",
    Dimension.CATEGORY: "categorie",
    Dimension.ROLE: "rol",
    Dimension.MONTH: "maand",
    Dimension.INTERVENTION_TYPE: "soort interventie",
}
_AREA_PLURAL = "gebieden"
_BRANCH_PLURAL = "branches"
#: The multiplication sign and the en dash, spelled out so that no one mistakes them.
_TIMES = "\u00d7"
_DASH = "\u2013"


@dataclass(frozen=True, slots=True)
class PictureReport:
    """What the report shows. Every table is a released one (after disclosure control).

    ``trend``: tables by month (active signals, hit groups); ``areas`` and ``branches``:
    tables by area and by branch (top ``top`` rows shown); ``heat``: a table by branch
    and category; ``accountability``: case tables by month (opened, closed) and an
    interventions table by intervention type. ``area_map``: the boundaries the areas
    are drawn on; ``categories``: the covenant's categories in its order;
    ``branch_names``: SBI code to its name, from a published SBI list (empty: codes
    only); ``classification``: the covenant's marking for every printed page.
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
    area_map: AreaMap | None = None
    categories: Sequence[str] = ()
    branch_names: Mapping[str, str] = field(default_factory=dict)
    classification: str = ""


# --- words, dates and numbers ---------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _month_date(month: str) -> date:
    year, number = month.split("-")
    return date(int(year), int(number), 1)


def month_name(month: str) -> str:
    """``2026-12`` as people write it: ``december 2026``."""
    return format_date(_month_date(month), "MMMM y", locale=_LOCALE)


def _month_short(month: str, *, with_year: bool) -> str:
    shown = format_date(_month_date(month), "MMM", locale=_LOCALE).rstrip(".")
    return f"{shown} {month[:4]}" if with_year else shown


def period_name(period: Period) -> str:
    """``oktober t/m december 2026``, ``november 2026 t/m januari 2027`` or one month."""
    first, last = period.first_month, period.last_month
    if first == last:
        return month_name(first)
    if first[:4] == last[:4]:
        start = format_date(_month_date(first), "MMMM", locale=_LOCALE)
        return f"{start} t/m {month_name(last)}"
    return f"{month_name(first)} t/m {month_name(last)}"


def _moment(when: datetime) -> str:
    when = when.astimezone(UTC)
    return f"{format_date(when.date(), 'd MMMM y', locale=_LOCALE)}, {when:%H:%M} UTC"


def _number(value: int) -> str:
    return format_decimal(value, locale=_LOCALE)


def _decimal(value: float) -> str:
    return format_decimal(round(value, 1), locale=_LOCALE)


_AREA_KINDS = {"pc4": "postcode-4", "wijk": "CBS-wijk", "buurt": "CBS-buurt"}


def _value(dimension: Dimension, value: str, names: Mapping[str, str]) -> str:
    """A dimension value as a reader sees it: a month in words, an area by its code (the
    heading says which kind) and name, a branch by its SBI code and name, where known."""
    if value == TOTAL:
        return TOTAL
    if dimension is Dimension.MONTH:
        return month_name(value)
    shown = value
    if dimension is Dimension.AREA:
        kind, _, code = value.partition(":")
        shown = code if kind in _AREA_KINDS and code else value
    name = names.get(value) if dimension in (Dimension.AREA, Dimension.BRANCH) else None
    return f"{shown} {name}" if name else shown


def _heading(dimension: Dimension, values: Sequence[str]) -> str:
    """A column heading; for areas with the kinds of area the table holds."""
    if dimension is not Dimension.AREA:
        return _DIMENSIONS[dimension]
    kinds = [k for k in _AREA_KINDS if any(v.startswith(f"{k}:") for v in values)]
    if not kinds:
        return _DIMENSIONS[dimension]
    return f"{_DIMENSIONS[dimension]} ({', '.join(_AREA_KINDS[k] for k in kinds)})"


# --- figures ---------------------------------------------------------------------------------


def _hidden(cell: ReleasedCell) -> bool:
    return cell.quality is CellQuality.SUPPRESSED or cell.count is None


def _why(cell: ReleasedCell, min_count: int) -> str:
    """Why a hidden cell is hidden, in a reader's words."""
    if cell.reason is SuppressionReason.PROTECTS_ANOTHER:
        return (
            "niet getoond ter bescherming van een kleine cel: anders zou die uit de "
            "andere cijfers te berekenen zijn"
        )
    if cell.reason is SuppressionReason.TOO_FEW:
        if cell.noise_scale > 0:  # decided on the noisy figure, not on the true count
            return f"niet getoond: te weinig (met ruis minder dan {min_count})"
        return (
            f"niet getoond: te weinig (minder dan {min_count}, te weinig "
            "partners, of één partner heeft bijna alles)"
        )
    return "niet getoond (te weinig, of ter bescherming van een kleine cel)"


def _mark(cell: ReleasedCell) -> str:
    return PROTECTED_MARK if cell.reason is SuppressionReason.PROTECTS_ANOTHER else SUPPRESSED_MARK


def _figure(cell: ReleasedCell, min_count: int) -> tuple[str, str, str]:
    """The cell's text, its title (tooltip) and its CSS class."""
    if _hidden(cell):
        css = "n sup prot" if cell.reason is SuppressionReason.PROTECTS_ANOTHER else "n sup"
        return _mark(cell), _why(cell, min_count), css
    assert cell.count is not None
    if cell.quality is CellQuality.NOISY:
        return (
            f"{NOISY_MARK}{_number(cell.count)}",
            f"met ruis, standaardafwijking {_decimal(cell.noise_scale)}",
            "n",
        )
    return _number(cell.count), "exact", "n"


def _td(cell: ReleasedCell, min_count: int, *, style: str = "") -> str:
    text, title, css = _figure(cell, min_count)
    if cell.is_total:
        css += " total"
    attr = f' style="{_e(style)}"' if style else ""
    return f'<td class="{css}" title="{_e(title)}"{attr}>{_e(text)}</td>'


def _boxed(table_html: str, caption: str = "") -> str:
    """A table in its own box that scrolls sideways on a narrow screen."""
    label = f' aria-label="{_e(caption)}"' if caption else ""
    return f'<div class="scroll" role="region" tabindex="0"{label}>{table_html}</div>'


def _hidden_totals_note(table: ReleasedTable, names: Mapping[str, str]) -> str:
    """Next to a table: which of its totals are hidden, and why."""
    lines: list[str] = []
    for cell in table.cells:
        if not (cell.is_total and _hidden(cell)):
            continue
        if all(v == TOTAL for v in cell.values):
            which = "Het totaal"
        else:
            which = "Het totaal van " + ", ".join(
                _value(d, v, names)
                for d, v in zip(table.dimensions, cell.values, strict=True)
                if v != TOTAL
            )
        lines.append(f"{which} is {_why(cell, table.min_count)}.")
    if not lines:
        return ""
    return f'<p class="why">{_e(" ".join(lines))}</p>'


# --- tables ----------------------------------------------------------------------------------


def _ranked_table(table: ReleasedTable, top: int, names: Mapping[str, str], plural: str) -> str:
    """A one-dimensional table: the largest shown counts first. Hidden cells are listed
    apart, unranked: they may be larger than any shown."""
    dimension = table.dimensions[0]
    leaves = [table.cell((v,)) for v in table.axis(dimension)]
    shown = [c for c in leaves if not _hidden(c) and c.count]
    shown.sort(key=lambda c: (-(c.count or 0), c.values))
    hidden = [c for c in leaves if _hidden(c)]
    head = (
        f"<thead><tr><th>{_e(_heading(dimension, table.axis(dimension)))}</th>"
        f"<th>{_e(_MEASURES[table.measure])}</th></tr></thead>"
    )
    rows = [
        f"<tr><td>{_e(_value(dimension, c.values[0], names))}</td>{_td(c, table.min_count)}</tr>"
        for c in shown[:top]
    ]
    if len(shown) > top:
        rows.append(
            f'<tr class="more"><td colspan="2">en nog {len(shown) - top} andere {plural} '
            "met kleinere aantallen</td></tr>"
        )
    body = [f"<tbody>{''.join(rows)}</tbody>"]
    if hidden:
        hidden_rows = [
            f"<tr><td>{_e(_value(dimension, c.values[0], names))}</td>"
            f"{_td(c, table.min_count)}</tr>"
            for c in hidden
        ]
        body.append(
            '<tbody class="hidden-rows"><tr><th colspan="2">Niet getoond (geen rangorde: '
            f"deze kunnen groter zijn dan de getoonde)</th></tr>{''.join(hidden_rows)}</tbody>"
        )
    if dimension in table.totals_over:
        total = table.cell((TOTAL,))
        body.append(
            f'<tbody><tr class="total"><td>{TOTAL}</td>{_td(total, table.min_count)}</tr></tbody>'
        )
    caption = f"{_MEASURES[table.measure]} per {_DIMENSIONS[dimension]}"
    return _boxed(f"<table>{head}{''.join(body)}</table>", caption) + _hidden_totals_note(
        table, names
    )


def _category_order(values: Sequence[str], categories: Sequence[str]) -> list[str]:
    """The covenant's categories in its order, then any other value as the table has it."""
    listed = [c for c in categories if c in values]
    return listed + [v for v in values if v not in listed]


def _heat_table(table: ReleasedTable, names: Mapping[str, str], categories: Sequence[str]) -> str:
    """Rows by the first dimension, columns by the second, cells coloured by count."""
    rows_dim, cols_dim = table.dimensions[0], table.dimensions[1]
    row_values = list(table.axis(rows_dim))
    col_values = list(table.axis(cols_dim))
    if cols_dim is Dimension.CATEGORY:
        col_values = _category_order(col_values, categories)
    if cols_dim in table.totals_over:
        col_values.append(TOTAL)
    if rows_dim in table.totals_over:
        row_values.append(TOTAL)
    leaf_counts = [c.count for c in table.cells if not c.is_total and not _hidden(c) and c.count]
    peak = max(leaf_counts, default=0) or 1
    head = "".join(f"<th>{_e(_value(cols_dim, v, names))}</th>" for v in col_values)
    lines = [f"<thead><tr><th>{_e(_DIMENSIONS[rows_dim])}</th>{head}</tr></thead><tbody>"]
    for r in row_values:
        cells = []
        for c in col_values:
            cell = table.cell((r, c))
            style = ""
            if not cell.is_total and not _hidden(cell) and cell.count:
                alpha = 0.1 + 0.8 * min(cell.count / peak, 1.0)
                style = f"background:rgba(194,65,12,{alpha:.2f})"
                if alpha > 0.55:
                    style += ";color:#fff"
            cells.append(_td(cell, table.min_count, style=style))
        css = ' class="total"' if r == TOTAL else ""
        lines.append(f"<tr{css}><th>{_e(_value(rows_dim, r, names))}</th>{''.join(cells)}</tr>")
    lines.append("</tbody>")
    caption = f"{_DIMENSIONS[rows_dim]} {_TIMES} {_DIMENSIONS[cols_dim]}"
    return _boxed(f'<table class="heat">{"".join(lines)}</table>', caption) + (
        _hidden_totals_note(table, names)
    )


def _month_table(tables: Sequence[ReleasedTable], months: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(_MEASURES[t.measure])}</th>" for t in tables)
    rows = [f"<thead><tr><th>maand</th>{head}</tr></thead><tbody>"]
    for m in months:
        cells = "".join(_td(t.cell((m,)), t.min_count) for t in tables)
        rows.append(f"<tr><td>{_e(month_name(m))}</td>{cells}</tr>")
    if len(months) > 1 and any(Dimension.MONTH in t.totals_over for t in tables):
        cells = "".join(_td(t.cell((TOTAL,)), t.min_count) for t in tables)
        rows.append(f'<tr class="total"><td>{TOTAL}</td>{cells}</tr>')
    rows.append("</tbody>")
    notes = "".join(_hidden_totals_note(t, {}) for t in tables) if len(months) > 1 else ""
    return _boxed(f"<table>{''.join(rows)}</table>", "per maand") + notes


def _any_table(table: ReleasedTable, report: PictureReport) -> str:
    names = report.branch_names
    if len(table.dimensions) == 1:
        return _ranked_table(table, report.top, names, "waarden")
    if len(table.dimensions) == 2:
        return _heat_table(table, names, report.categories)
    heads = "".join(f"<th>{_e(_DIMENSIONS[d])}</th>" for d in table.dimensions)
    rows = [f"<thead><tr>{heads}<th>aantal</th></tr></thead><tbody>"]
    for cell in table.cells:
        values = "".join(
            f"<td>{_e(_value(d, v, names))}</td>"
            for d, v in zip(table.dimensions, cell.values, strict=True)
        )
        rows.append(f"<tr>{values}{_td(cell, table.min_count)}</tr>")
    rows.append("</tbody>")
    return _boxed(f"<table>{''.join(rows)}</table>") + _hidden_totals_note(table, names)


# --- the trend chart -------------------------------------------------------------------------

_SERIES_COLOURS = ("#1f5fa8", "#b4460b", "#15803d", "#7c3aed")


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times 10^k at or above ``value`` (an axis maximum)."""
    if value <= 1:
        return 1
    power: int = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _trend_svg(tables: Sequence[ReleasedTable], months: Sequence[str]) -> str:
    """One panel per measure, each on its own scale; the measure's name above its panel
    (outside the plot), the months along the bottom, the count up the side. A hidden
    month is a shaded gap with its mark under the axis, where no value can be."""
    width, left, right, panel_h, gap, top_pad, bottom_pad = 640, 56, 16, 120, 40, 22, 52
    height = top_pad + len(tables) * (panel_h + gap) - gap + bottom_pad
    step = (width - left - right) / max(len(months) - 1, 1)
    every = max(1, math.ceil(len(months) / 12))

    def x(i: int) -> float:
        return left + i * step

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" role="img" '
        f'aria-label="verloop per maand, per reeks een eigen schaal">',
        f'<text x="14" y="{top_pad + (height - top_pad - bottom_pad) / 2:.0f}" '
        f'transform="rotate(-90 14 {top_pad + (height - top_pad - bottom_pad) / 2:.0f})" '
        'text-anchor="middle" class="axis-title">aantal</text>',
    ]
    for n, table in enumerate(tables):
        colour = _SERIES_COLOURS[n % len(_SERIES_COLOURS)]
        y0 = top_pad + n * (panel_h + gap)
        base = y0 + panel_h
        values = [table.cell((m,)) for m in months]
        peak = _nice_ceiling(max((c.count or 0 for c in values if not _hidden(c)), default=0))

        def y(v: int, base: float = base, peak: int = peak) -> float:
            return base - panel_h * v / peak

        parts.append(
            f'<text x="{left}" y="{y0 - 8}" class="series" fill="{colour}">'
            f"{_e(_MEASURES[table.measure])}</text>"
        )
        for tick in (0, peak // 2 if peak % 2 == 0 else None, peak):
            if tick is None:
                continue
            parts.append(
                f'<line x1="{left}" y1="{y(tick):.1f}" x2="{width - right}" y2="{y(tick):.1f}" '
                f'class="grid"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" '
                f'text-anchor="end">{_number(tick)}</text>'
            )
        parts.append(
            f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{base}" class="axis"/>'
            f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" class="axis"/>'
        )
        segment: list[str] = []
        segments = [segment]
        for i, cell in enumerate(values):
            if _hidden(cell) or cell.count is None:
                segment = []
                segments.append(segment)
                band = min(step * 0.6, 28.0)
                parts.append(
                    f'<rect x="{x(i) - band / 2:.1f}" y="{y0}" width="{band:.1f}" '
                    f'height="{panel_h}" class="hidden-month"/>'
                    f'<text x="{x(i):.1f}" y="{base + 15:.1f}" text-anchor="middle" '
                    f'class="mark" fill="{colour}">{_mark(cell)}<title>'
                    f"{_e(month_name(months[i]))}: {_e(_why(cell, table.min_count))}</title></text>"
                )
                continue
            segment.append(f"{x(i):.1f},{y(cell.count):.1f}")
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(cell.count):.1f}" r="3" fill="{colour}">'
                f"<title>{_e(month_name(months[i]))}: {_e(_figure(cell, 0)[0])}</title></circle>"
            )
        for points in segments:
            if len(points) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{" ".join(points)}"/>'
                )
    last_base = top_pad + len(tables) * (panel_h + gap) - gap
    for i, m in enumerate(months):
        if i % every and i != len(months) - 1:
            continue
        with_year = i == 0 or m.endswith("-01")
        parts.append(
            f'<text x="{x(i):.1f}" y="{last_base + 30}" text-anchor="middle">'
            f"{_e(_month_short(m, with_year=with_year))}</text>"
        )
    parts.append(
        f'<text x="{left + (width - left - right) / 2:.0f}" y="{height - 6}" '
        'text-anchor="middle" class="axis-title">maand</text></svg>'
    )
    shown = f'<div class="scroll">{"".join(parts)}</div>'
    if any(_hidden(t.cell((m,))) for t in tables for m in months):
        shown += (
            f'<p class="legend">Grijze band: maand niet getoond ({SUPPRESSED_MARK} te weinig, '
            f"{PROTECTED_MARK} afgeschermd); de lijn is daar onderbroken.</p>"
        )
    return shown


# --- the map ---------------------------------------------------------------------------------

#: ColorBrewer's sequential "Oranges", five classes (light to dark).
_CLASS_COLOURS = ("#feedde", "#fdbe85", "#fd8d3c", "#e6550d", "#a63603")
_ZERO_COLOUR = "#f2f2f2"


def _classes(counts: Sequence[int]) -> list[tuple[int, int]]:
    """Five classes (low, high) of equal width from 1 to a round number at or above the
    largest shown count, so that a colour means the same range whatever the spread;
    classes above the largest count are left out."""
    peak = max((c for c in counts if c > 0), default=0)
    if not peak:
        return []
    k = len(_CLASS_COLOURS)
    width = max(1, _nice_ceiling(math.ceil(peak / k)))
    classes = [(i * width + 1, (i + 1) * width) for i in range(k)]
    return [(low, high) for low, high in classes if low <= peak]


def _map_label(area: MapArea, figure: str, ink: str, *, css: str = "figure") -> str:
    """The area's code (without its kind) over its figure, at a point inside it."""
    code = area.value.partition(":")[2] or area.value
    halo = " halo" if "halo" in css else ""
    return (
        f'<text x="{area.label_x:.1f}" y="{area.label_y - 3:.1f}" text-anchor="middle" '
        f'class="code{halo}" fill="{ink}">{_e(code)}</text>'
        f'<text x="{area.label_x:.1f}" y="{area.label_y + 11:.1f}" text-anchor="middle" '
        f'class="{css}" fill="{ink}">{_e(figure)}</text>'
    )


def _map_section(report: PictureReport) -> str:
    area_map, table = report.area_map, report.areas
    assert area_map is not None
    assert table is not None
    cells = {v: table.cell((v,)) for v in table.axis(Dimension.AREA)}
    on_map = area_map.by_value()
    shown_counts = [c.count for v, c in cells.items() if v in on_map and not _hidden(c) and c.count]
    classes = _classes(shown_counts)

    def colour(count: int) -> tuple[str, str]:
        for i, (low, high) in enumerate(classes):
            if low <= count <= high:
                return _CLASS_COLOURS[i], ("#fff" if i >= 3 else "#222")
        return _ZERO_COLOUR, "#222"

    label_all = len(area_map.areas) <= 80
    parts = [
        f'<svg class="map" viewBox="0 0 {area_map.width} {area_map.height}" '
        f'width="{area_map.width}" role="img" '
        f'aria-label="kaart: {_e(_MEASURES[table.measure])} per gebied">',
        '<defs><pattern id="arcering" patternUnits="userSpaceOnUse" width="7" height="7" '
        'patternTransform="rotate(45)"><rect width="7" height="7" fill="#fff"/>'
        '<line x1="0" y1="0" x2="0" y2="7" stroke="#666" stroke-width="2.5"/></pattern></defs>',
    ]
    labels: list[str] = []
    for area in area_map.areas:
        cell = cells.get(area.value, ReleasedCell((area.value,), 0, CellQuality.EXACT))
        name = f"{area.value} {area.name}".strip()
        if _hidden(cell):
            reason = (cell.reason or SuppressionReason.TOO_FEW).value
            parts.append(
                f'<path d="{area.path}" fill="url(#arcering)" class="area sup" '
                f'data-area="{_e(area.value)}" data-suppressed="{_e(reason)}">'
                f"<title>{_e(name)}: {_e(_why(cell, table.min_count))}</title></path>"
            )
            labels.append(_map_label(area, _mark(cell), "#111", css="mark halo"))
            continue
        count = cell.count or 0
        fill, ink = colour(count)
        text = _figure(cell, table.min_count)[0]
        parts.append(
            f'<path d="{area.path}" fill="{fill}" class="area" data-area="{_e(area.value)}">'
            f"<title>{_e(name)}: {_e(text)} {_e(_MEASURES[table.measure])}</title></path>"
        )
        if label_all:
            labels.append(_map_label(area, text, ink))
    parts += labels
    parts.append("</svg>")
    legend = ['<ul class="map-legend">']
    for i, (low, high) in enumerate(classes):
        span = _number(low) if low == high else f"{_number(low)}{_DASH}{_number(high)}"
        legend.append(
            f'<li><span class="swatch" style="background:{_CLASS_COLOURS[i]}"></span>{span}</li>'
        )
    legend.append(f'<li><span class="swatch" style="background:{_ZERO_COLOUR}"></span>0</li>')
    legend.append(
        '<li><svg width="18" height="14" aria-hidden="true"><rect width="18" height="14" '
        'fill="url(#arcering)" stroke="#999"/></svg>niet getoond '
        f"({SUPPRESSED_MARK} te weinig, {PROTECTED_MARK} afgeschermd)</li></ul>"
    )
    off_map = [
        f"{_value(Dimension.AREA, v, {})} ({_figure(c, table.min_count)[0]})"
        for v, c in cells.items()
        if v not in on_map
    ]
    note = ""
    if off_map:
        note = (
            '<p class="why">Niet op de kaart (geen grens in het kaartbestand): '
            f"{_e('; '.join(off_map))}.</p>"
        )
    source = ""
    if area_map.name:
        source = f'<p class="legend">Kaartgrenzen: {_e(area_map.name)}.</p>'
    return f'<div class="scroll">{"".join(parts)}</div>{"".join(legend)}{note}{source}'


# --- the page --------------------------------------------------------------------------------


def _css_string(text: str) -> str:
    """``text`` as a CSS string literal: anything but letters, digits and spaces escaped,
    so that no quote, backslash or ``</style>`` can leave it."""
    out = "".join(c if c.isalnum() or c == " " else f"\\{ord(c):x} " for c in text)
    return f'"{out}"'


def _css(classification: str) -> str:
    margin = ""
    if classification:
        mark = _css_string(classification)
        margin = (
            f"@top-center{{content:{mark};font:bold 9pt system-ui,sans-serif;color:#8b0000}}"
            f"@bottom-center{{content:{mark};font:bold 9pt system-ui,sans-serif;color:#8b0000}}"
        )
    return (
        """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;
padding:1.5rem 2rem;color:#1b1b1b;max-width:72rem;line-height:1.4}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;margin-top:2rem;
border-bottom:1px solid #ccc;padding-bottom:.2rem}h3{font-size:1.05rem;margin-top:1.2rem}
.meta{color:#555;margin-top:0}.legend,.why{font-size:.9rem;color:#444}
.why{border-left:3px solid #c2410c;padding-left:.5rem}
.classification{display:inline-block;border:2px solid #8b0000;color:#8b0000;
font-weight:bold;padding:.1rem .5rem;margin:0;text-transform:uppercase;font-size:.85rem}
.scroll{overflow-x:auto;max-width:100%;margin:.5rem 0}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.25rem .5rem}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{background:#f0f0f0;text-align:left;font-weight:600}
td.sup{color:#111;font-weight:bold;text-align:center;
background:repeating-linear-gradient(45deg,#fff 0 4px,#eee 4px 8px)}
tr.total td,td.total{font-weight:bold;background:#fafafa}
tbody.hidden-rows th{background:#fff;font-weight:normal;font-style:italic;color:#555;
font-size:.85rem;max-width:22rem}
tr.more td{color:#555;font-style:italic}
svg{max-width:100%;height:auto}svg text{font-size:11px}svg text:not([fill]){fill:#333}
svg .series{font-size:13px;font-weight:bold}svg .axis-title{font-size:12px;fill:#555}
svg .axis{stroke:#777}svg .grid{stroke:#e4e4e4}
svg.chart .hidden-month{fill:#000;fill-opacity:.06}svg.chart .mark{font-size:16px;font-weight:bold}
svg.map path{stroke:#fff;stroke-width:1;fill-rule:evenodd}
svg.map path.sup{stroke:#666}
svg.map .code{font-size:9px}svg.map .figure{font-size:12px;font-weight:bold}
svg.map .halo{paint-order:stroke;stroke:#fff;stroke-width:4px;stroke-linejoin:round}
svg.map .mark{font-size:16px;font-weight:bold}
.map-legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4rem 1rem;
font-size:.9rem}.map-legend li{display:flex;align-items:center;gap:.35rem}
.swatch{display:inline-block;width:18px;height:14px;border:1px solid #999}
dl.marks{display:grid;grid-template-columns:auto 1fr;gap:.2rem .8rem;font-size:.9rem}
dl.marks dt{font-weight:bold;text-align:center}dl.marks dd{margin:0}
"""
        + NETWORK_CSS
        + """
@media (max-width:600px){body{padding:.75rem}h1{font-size:1.3rem}}
@page{size:A4;margin:18mm 14mm;"""
        + margin
        + """@bottom-right{content:counter(page) " / " counter(pages);
font:9pt system-ui,sans-serif}}
@media print{body{padding:0;max-width:none;font-size:10pt}
.classification{display:none}
.scroll{overflow:visible}
h2,h3{break-after:avoid;page-break-after:avoid}
section{break-inside:avoid;page-break-inside:avoid}
tr,li,svg{break-inside:avoid;page-break-inside:avoid}
thead{display:table-header-group}
a{color:inherit;text-decoration:none}}
"""
    )


def _legend(tables: Sequence[ReleasedTable]) -> str:
    min_counts = sorted({t.min_count for t in tables if t.min_count})
    scales = sorted({c.noise_scale for t in tables for c in t.cells if c.noise_scale > 0})
    below = " of ".join(map(str, min_counts)) or "het minimum van het convenant"
    items = [
        ("12", "een exact aantal"),
        (
            SUPPRESSED_MARK,
            f"niet getoond: te weinig (minder dan {below}, te weinig "
            "partners, of één partner heeft bijna alles), zodat niemand kan herleiden om wie "
            "het gaat of wat één partner heeft",
        ),
        (
            PROTECTED_MARK,
            "niet getoond ter bescherming: dit aantal is zelf niet klein (0 of minstens "
            f"{below}), maar met dit aantal en de totalen zou een {SUPPRESSED_MARK}-cel uit te "
            "rekenen zijn",
        ),
        (TOTAL, "de som van de rij of kolom, ook van de niet getoonde cellen"),
    ]
    if scales:
        low = format_decimal(round(scales[0], 1), locale=_LOCALE)
        high = format_decimal(round(scales[-1], 1), locale=_LOCALE)
        items.insert(
            1,
            (
                f"{NOISY_MARK}12",
                f"met ruis (differentiële privacy), standaardafwijking {low} tot {high} "
                "(zie de tooltip van elke cel); negatieve uitkomsten staan als 0",
            ),
        )
    rows = "".join(f"<dt>{_e(mark)}</dt><dd>{_e(text)}</dd>" for mark, text in items)
    tail = "" if scales else '<p class="legend">Alle getoonde cijfers zijn exact.</p>'
    return f'<dl class="marks">{rows}</dl>{tail}'


def _section(heading: str, *content: str, level: int = 2) -> str:
    return f"<section><h{level}>{heading}</h{level}>{''.join(content)}</section>"


def render(report: PictureReport, network: Sequence[Component] | None = None) -> str:
    """The report as one HTML document (a ``str``), self-contained and escaped; with a
    section "Netwerk" when ``network`` (the coordinator's components) is given."""
    months = report.period.months()
    names = dict(report.branch_names)
    if report.area_map is not None:
        names.update((a.value, a.name) for a in report.area_map.areas if a.name)
    tables: list[ReleasedTable] = [*report.trend, *report.accountability]
    tables += [t for t in (report.areas, report.branches, report.heat) if t is not None]
    body = []
    if report.classification:
        body.append(f'<p class="classification">{_e(report.classification)}</p>')
    body += [
        f"<h1>{_e(report.title)}</h1>",
        f'<p class="meta">Convenant {_e(report.covenant)} · periode '
        f"{_e(period_name(report.period))} · gemaakt op {_e(_moment(report.generated_at))}</p>",
        _section("Zo leest u dit beeld", _legend(tables)),
    ]
    if report.area_map is not None and report.areas is not None:
        body.append(
            _section(
                f"Kaart: {_e(_MEASURES[report.areas.measure])} per {_DIMENSIONS[Dimension.AREA]}",
                _map_section(report),
            )
        )
    if report.trend:
        if len(months) == 1:
            chart = (
                f'<p class="legend">De periode is één maand ({_e(month_name(months[0]))}): '
                "er is geen verloop te tonen. De aantallen staan in de tabel.</p>"
            )
        else:
            chart = _trend_svg(report.trend, months)
        body.append(_section("Verloop per maand", chart, _month_table(report.trend, months)))
    if report.areas is not None:
        body.append(
            _section(
                f"Top {report.top} {_AREA_PLURAL}",
                _ranked_table(report.areas, report.top, names, _AREA_PLURAL),
            )
        )
    if report.branches is not None:
        note = (
            ""
            if names
            else '<p class="legend">Branches staan als SBI-code: bij dit rapport is geen '
            "lijst met SBI-namen gegeven.</p>"
        )
        body.append(
            _section(
                f"Top {report.top} {_BRANCH_PLURAL} (SBI)",
                note,
                _ranked_table(report.branches, report.top, names, _BRANCH_PLURAL),
            )
        )
    if report.heat is not None and len(report.heat.dimensions) == 2:
        rows_dim, cols_dim = report.heat.dimensions
        body.append(
            _section(
                f"{_e(_DIMENSIONS[rows_dim][:1].upper() + _DIMENSIONS[rows_dim][1:])} {_TIMES} "
                f"{_e(_DIMENSIONS[cols_dim])}",
                _heat_table(report.heat, names, report.categories),
            )
        )
    if report.accountability:
        parts = []
        by_month = [t for t in report.accountability if t.dimensions == (Dimension.MONTH,)]
        others = [t for t in report.accountability if t.dimensions != (Dimension.MONTH,)]
        if by_month:
            parts.append(_month_table(by_month, months))
        for table in others:
            parts.append(_section(_e(_MEASURES[table.measure]), _any_table(table, report), level=3))
        body.append(_section("Verantwoording: casussen en interventies", *parts))
    if network is not None:
        body.append(network_section(network))
    if report.notes:
        notes = "".join(f"<li>{_e(note)}</li>" for note in report.notes)
        body.append(_section("Bronnen", f'<ul class="legend">{notes}</ul>'))
    return (
        '<!DOCTYPE html>\n<html lang="nl"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(report.title)}</title><style>{_css(report.classification)}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
