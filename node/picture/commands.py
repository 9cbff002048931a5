"""``samenloop picture``: the regional picture (integraal ondermijningsbeeld) for its viewers.

Talks to the partner's own node through its local API (the client library),
found with ``--node node.toml`` or ``--socket PATH`` as ``samenloop signal``
does. Only a party whose role the covenant lists as a picture viewer (usually
the RIEC) can collect and show.

* ``picture collect --period 2026-10[..2026-12] [--by area,category]
  [--measure active_signals,hit_groups]`` asks every party for its counts;
* ``picture show --period 2026-10 --by area,category [--json]`` shows the
  latest such collection after disclosure control, waiting briefly for parties
  that have not answered: every figure is exact, noisy (``≈``, with its noise
  scale) or suppressed (``•``, never a number);
* ``picture report --period 2026-07..2026-12 --out beeld.html [--areas pc4.geojson]
  [--sbi-names sbi.csv]`` collects what the report needs (a trend by month, areas,
  branch by category, and the accountability for cases) and writes one
  self-contained HTML file in Dutch, with a map of the areas when given their
  boundaries, and the covenant's classification on every printed page.

Party names and refusal messages come from other parties: they are shown as
plain text (:mod:`samenloop.policies.terminal`); the HTML report escapes them.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import re
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from samenloop.node.signals.commands import add_node_options, open_client
from samenloop.policies import terminal
from samenloop.policies.errors import ConfigurationError, InvalidInput, NotFound
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from samenloop.node.client import NodeClient, Picture, PictureCollection
    from samenloop.node.picture import report as picture_report
    from samenloop.node.picture.arithmetic import (
        Dimension,
        Measure,
        Period,
        ReleasedCell,
        ReleasedTable,
    )
    from samenloop.node.picture.map import AreaMap

__all__ = ["build_report", "picture_to_json", "register", "wait_for_picture"]

DEFAULT_WAIT: Final = 10.0
_POLL: Final = 0.25

#: Exit code of ``show`` and ``report`` when the figures were shown or written but a party
#: refused to contribute (they lack its counts).
EXIT_REFUSED: Final = 5


#: What the report shows: (measures, dimensions) per collection. Under a privacy budget
#: each is a request of its own (each spends ``epsilon_per_request``); in exact mode only
#: the first of each cube is collected and every table is a slice of that cube.
def report_collections() -> tuple[tuple[tuple[Measure, ...], tuple[Dimension, ...]], ...]:
    """What the report shows (a function: the enums are imported when a report runs)."""
    from samenloop.node.picture.arithmetic import Dimension, Measure

    return (
        ((Measure.ACTIVE_SIGNALS, Measure.HIT_GROUPS), (Dimension.MONTH,)),
        ((Measure.ACTIVE_SIGNALS,), (Dimension.AREA,)),
        ((Measure.ACTIVE_SIGNALS,), (Dimension.BRANCH, Dimension.CATEGORY)),
        ((Measure.CASES_OPENED, Measure.CASES_CLOSED), (Dimension.MONTH,)),
        ((Measure.INTERVENTIONS,), (Dimension.INTERVENTION_TYPE,)),
    )


def _names(text: str | None, parse: Callable[..., Any], option: str) -> list[Any]:
    if not text:
        return []
    try:
        return [parse(part, field=option) for part in text.split(",") if part.strip()]
    except InvalidInput as error:
        raise ConfigurationError(error.message, field=option, reason=error.reason) from None


def _period(text: str) -> Period:
    from samenloop.node.picture.arithmetic import Period

    try:
        return Period.parse(text, field="--period")
    except InvalidInput as error:
        raise ConfigurationError(error.message, field="--period", reason=error.reason) from None


def _officer(args: argparse.Namespace) -> str:
    officer: str = args.officer or getpass.getuser() or "cli"
    return officer


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``picture collect | show | report``."""
    parser = subparsers.add_parser(
        "picture",
        help="the regional picture: collect, show and report counts (viewers only)",
        description="Collect the partners' counts of signals and hit groups by coarse "
        "attributes, and show or report them after the covenant's disclosure control.",
    )
    commands = parser.add_subparsers(dest="picture_command", metavar="SUBCOMMAND", required=True)

    collect = commands.add_parser("collect", help="ask every party for its counts")
    _common(collect)
    collect.add_argument(
        "--measure",
        default="active_signals,hit_groups",
        help="comma-separated: active_signals, hit_groups, cases_opened, cases_closed, "
        "interventions (default: active_signals,hit_groups)",
    )
    collect.add_argument("--officer", help="who asks, for the audit log (default: your login)")
    collect.add_argument(
        "--dry-run",
        action="store_true",
        help="only say what it would cost of the privacy budget; ask no one",
    )
    collect.set_defaults(func=_collect)

    show = commands.add_parser("show", help="show a collection after disclosure control")
    _common(show)
    show.add_argument("--measure", default="active_signals", help="one measure to show")
    show.add_argument("--request", metavar="ID", help="a collection's request id (hex)")
    show.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"wait this long for parties that have not answered (default {DEFAULT_WAIT:g})",
    )
    show.set_defaults(func=_show)

    report = commands.add_parser("report", help="write the picture as one HTML file")
    report.add_argument("--period", required=True, help="YYYY-MM or YYYY-MM..YYYY-MM")
    report.add_argument("--out", required=True, type=Path, metavar="HTML", help="the file")
    report.add_argument("--title", default="Integraal ondermijningsbeeld", help="its title")
    report.add_argument("--officer", help="who asks, for the audit log (default: your login)")
    report.add_argument("--wait", type=float, default=DEFAULT_WAIT * 3, metavar="SECONDS")
    report.add_argument("--top", type=int, default=10, help="areas and branches listed")
    report.add_argument(
        "--areas",
        type=Path,
        metavar="GEOJSON",
        help="area boundaries for the map: postcode-4 or CBS wijk/buurt polygons as PDOK and "
        "CBS publish them (GeoJSON, WGS 84 or Rijksdriehoek)",
    )
    report.add_argument(
        "--sbi-names",
        type=Path,
        metavar="FILE",
        help="CBS's published SBI 2008 list (its XLSX, or saved as CSV: code and name per row), "
        "to name the branches; without it the report shows the codes",
    )
    report.add_argument(
        "--dry-run",
        action="store_true",
        help="only say what the report would cost of the privacy budget; ask no one",
    )
    report.add_argument(
        "--no-network",
        action="store_true",
        help="leave out the subject network (drawn when this node holds linked hits)",
    )
    add_node_options(report)
    report.set_defaults(func=_report)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--period", required=True, help="YYYY-MM or YYYY-MM..YYYY-MM")
    parser.add_argument(
        "--by",
        default="",
        help="comma-separated dimensions: area, branch, category, role, month, intervention_type",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_node_options(parser)


def _collect(args: argparse.Namespace) -> int:
    from samenloop.node.picture.arithmetic import Dimension, Measure

    period = _period(args.period)
    measures = _names(args.measure, Measure.parse, "--measure")
    dimensions = _names(args.by, Dimension.parse, "--by")
    with open_client(args) as client:
        started = client.picture_collect(
            period, measures, dimensions, officer=_officer(args), dry_run=args.dry_run
        )
    if args.json:
        print(
            terminal.dumps(
                {
                    "request_id": started.request_id.hex(),
                    "asked": list(started.asked),
                    "noisy": started.noisy,
                    "epsilon_needed": started.epsilon_needed,
                    "epsilon_remaining": started.epsilon_remaining,
                }
            )
        )
        return 0
    if args.dry_run:
        print(f"dry run, nothing asked: {cost_line(period, started)}")
        return 0
    asked = ", ".join(printable(p) for p in started.asked)
    print(f"collection {started.request_id.hex()}: asked {asked}")
    if started.noisy:
        left = started.epsilon_remaining - started.epsilon_needed
        print(
            f"privacy budget: epsilon {started.epsilon_needed:g} spent on each month of "
            f"{period} (at every node that answers); {left:g} left at this node"
        )
    return 0


def cost_line(period: Period, cost: PictureCollection) -> str:
    """``2026-12 needs epsilon 2 on each of its months, 1 left`` (or: exact mode)."""
    if not cost.noisy:
        return f"{period}: exact mode, no privacy budget to spend"
    return (
        f"{period} needs epsilon {cost.epsilon_needed:g} on each of its months at every "
        f"node, {cost.epsilon_remaining:g} left at this node"
    )


def wait_for_picture(
    client: NodeClient,
    period: Period | None,
    measure: Measure,
    dimensions: Sequence[Dimension],
    *,
    request_id: bytes | None = None,
    wait: float = DEFAULT_WAIT,
) -> Picture:
    """The collection's picture once every party answered, or as it is after ``wait``
    seconds (its ``missing`` then says who has not answered)."""
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        shown = client.picture_show(period, measure, dimensions, request_id=request_id)
        if not shown.missing or time.monotonic() >= deadline:
            return shown
        time.sleep(_POLL)


def _figure(cell: ReleasedCell) -> str:
    from samenloop.node.picture import report as picture_report
    from samenloop.node.picture.arithmetic import CellQuality, SuppressionReason

    if cell.quality is CellQuality.SUPPRESSED or cell.count is None:
        if cell.reason is SuppressionReason.PROTECTS_ANOTHER:
            return picture_report.PROTECTED_MARK
        return picture_report.SUPPRESSED_MARK
    if cell.quality is CellQuality.NOISY:
        return f"≈{cell.count} (±{cell.noise_scale:.1f})"
    return str(cell.count)


def picture_to_json(shown: Picture) -> dict[str, Any]:
    """A shown picture as JSON: suppressed cells carry no count (``null``)."""
    from samenloop.node.picture.arithmetic import CellQuality

    table = shown.table
    return {
        "period": str(table.period),
        "measure": table.measure.value,
        "dimensions": [d.value for d in table.dimensions],
        "min_count": table.min_count or None,
        "cells": []
        if not shown.contributors
        else [
            {
                "values": list(c.values),
                "count": None if c.quality is CellQuality.SUPPRESSED else c.count,
                "quality": c.quality.value,
                "noise_scale": c.noise_scale,
                "suppression": c.reason.value if c.reason is not None else None,
            }
            for c in table.cells
        ],
        "no_data": not shown.contributors,
        "contributors": list(shown.contributors),
        "missing": list(shown.missing),
        "refusals": [
            {"party": r.contributor, "reason": r.reason, "message": r.message}
            for r in shown.refusals
        ],
    }


def _show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from samenloop.node.picture import report as picture_report
    from samenloop.node.picture.arithmetic import TOTAL, Dimension, Measure

    period = _period(args.period)
    measure = _names(args.measure, Measure.parse, "--measure")
    if len(measure) != 1:
        raise ConfigurationError("show one measure", field="--measure")
    dimensions = _names(args.by, Dimension.parse, "--by")
    request_id = None
    if args.request:
        try:
            request_id = bytes.fromhex(args.request)
        except ValueError:
            raise ConfigurationError("must be hex", field="--request") from None
    with open_client(args) as client:
        shown = wait_for_picture(
            client, period, measure[0], dimensions, request_id=request_id, wait=args.wait
        )
    code = EXIT_REFUSED if shown.refusals else 0
    if args.json:
        print(terminal.dumps(picture_to_json(shown), indent=2))
        return code
    console = terminal.console()
    table = shown.table
    if not shown.contributors:
        console.print(
            f"{table.measure.value}, {table.period}: no data (no party contributed counts; "
            "not a count of 0)"
        )
        _footer(console, shown)
        return code
    grid = Table(title=f"{table.measure.value}, {table.period}", title_justify="left")
    for dimension in table.dimensions:
        grid.add_column(dimension.value)
    grid.add_column("count", justify="right")
    for cell in table.cells:
        style = "bold" if TOTAL in cell.values else None
        grid.add_row(*(printable(v) for v in cell.values), _figure(cell), style=style)
    terminal.show_table(console, grid)
    console.print(
        f"{picture_report.SUPPRESSED_MARK} = suppressed, too few (below the covenant's "
        "minimum, too few partners, or one partner holds nearly all); "
        f"{picture_report.PROTECTED_MARK} = suppressed to protect such a cell; "
        "≈ = noisy, ± its standard deviation; cells not listed are 0; totaal = the sum"
    )
    _footer(console, shown)
    return code


def _footer(console: Any, shown: Picture) -> None:
    console.print(f"contributed: {', '.join(printable(p) for p in shown.contributors) or '-'}")
    for note in shown.refusals:
        console.print(
            f"refused by {printable(note.contributor)}: {printable(note.reason)} "
            f"({printable(note.message)})"
        )
    if shown.missing:
        console.print(f"not answered yet: {', '.join(printable(p) for p in shown.missing)}")


def _branches(heat: ReleasedTable) -> ReleasedTable:
    """The branch totals of the branch-by-category table, as a table of their own: the same
    released figures (and suppressions), so the two cannot be played against each other."""
    from samenloop.node.picture.arithmetic import TOTAL, Dimension, ReleasedCell, ReleasedTable

    column = heat.dimensions.index(Dimension.CATEGORY)
    row = heat.dimensions.index(Dimension.BRANCH)
    cells = tuple(
        ReleasedCell((c.values[row],), c.count, c.quality, c.noise_scale, c.reason)
        for c in heat.cells
        if c.values[column] == TOTAL
    )
    return ReleasedTable(
        heat.measure,
        (Dimension.BRANCH,),
        heat.period,
        (heat.axes[row],),
        cells,
        heat.min_count,
        (Dimension.BRANCH,),
    )


def report_cost(client: NodeClient, period: Period, *, officer: str) -> PictureCollection:
    """What the report would spend of the privacy budget, asking no one."""
    measures, dims = report_collections()[0]
    return client.picture_collect(
        period,
        measures,
        dims,
        officer=officer,
        planned_requests=len(report_collections()),
        dry_run=True,
    )


def build_report(
    client: NodeClient,
    period: Period,
    *,
    officer: str,
    covenant: str = "",
    title: str = "Integraal ondermijningsbeeld",
    wait: float = DEFAULT_WAIT * 3,
    top: int = 10,
    now: datetime | None = None,
    area_map: AreaMap | None = None,
    categories: Sequence[str] = (),
    branch_names: Mapping[str, str] | None = None,
    classification: str = "",
) -> picture_report.PictureReport:
    """Collect what the report shows, wait for the parties' answers (up to ``wait``
    seconds) and gather the released tables; parties missing or refusing are noted, and
    a table no party contributed to is left out, said to have no data.

    Under a privacy budget the first collection asks the node to check that its budget
    covers every request of the report (``QuotaExceeded`` naming what it needs and what
    is left, nothing spent, if not). In exact mode each cube is collected once and every
    table of it is a slice of that one protected cube."""
    from samenloop.node.picture import report as picture_report
    from samenloop.node.picture.arithmetic import Dimension, Measure, cube_dimensions

    first_measures, first_dims = report_collections()[0]
    first = client.picture_collect(
        period,
        first_measures,
        first_dims,
        officer=officer,
        planned_requests=len(report_collections()),
    )
    started: list[tuple[bytes, tuple[Measure, ...], tuple[Dimension, ...]]] = [
        (first.request_id, first_measures, first_dims)
    ]
    cubes = {cube_dimensions(first_measures): first.request_id}
    for measures, dims in report_collections()[1:]:
        cube = cube_dimensions(measures)
        if not first.noisy and cube in cubes:
            started.append((cubes[cube], measures, dims))
            continue
        request_id = client.picture_collect(period, measures, dims, officer=officer).request_id
        cubes.setdefault(cube, request_id)
        started.append((request_id, measures, dims))
    deadline = time.monotonic() + wait
    shown: dict[tuple[Measure, tuple[Dimension, ...]], Picture] = {}
    notes: list[str] = []
    if first.noisy:
        notes.append(
            f"Privacybudget: {len(report_collections())} verzoeken van epsilon "
            f"{first.epsilon_needed / len(report_collections()):g} op elke maand van {period} "
            f"(daarna nog {first.epsilon_remaining - first.epsilon_needed:g} over bij dit "
            "knooppunt)."
        )
    for request_id, measures, dims in started:
        for measure in measures:
            left = max(deadline - time.monotonic(), 0.0)
            shown[(measure, dims)] = wait_for_picture(
                client, None, measure, dims, request_id=request_id, wait=left
            )
    contributors = sorted({p for s in shown.values() for p in s.contributors})
    notes.append(f"Bijdragen van: {', '.join(contributors) or '-'}.")
    missing = sorted({p for s in shown.values() for p in s.missing})
    if missing:
        notes.append(f"Nog geen antwoord van: {', '.join(missing)}.")
    refused = sorted(
        {(r.contributor, r.reason, r.message) for s in shown.values() for r in s.refusals}
    )
    notes += [
        f"Geweigerd door {party}: {reason} ({message})." for party, reason, message in refused
    ]
    empty = [
        f"{m.value} naar {','.join(d.value for d in dims) or '-'}"
        for (m, dims), s in shown.items()
        if not s.contributors
    ]
    if empty:
        notes.append(
            f"Geen gegevens (geen enkele partner droeg bij; dat is geen telling van 0): "
            f"{'; '.join(empty)}."
        )

    def table(measure: Measure, *dims: Dimension) -> ReleasedTable | None:
        found = shown[(measure, dims)]
        return found.table if found.contributors else None

    month = Dimension.MONTH
    heat = table(Measure.ACTIVE_SIGNALS, Dimension.BRANCH, Dimension.CATEGORY)
    return picture_report.PictureReport(
        title=title,
        covenant=covenant,
        period=period,
        generated_at=now or datetime.now(UTC),
        trend=_present(table(Measure.ACTIVE_SIGNALS, month), table(Measure.HIT_GROUPS, month)),
        areas=table(Measure.ACTIVE_SIGNALS, Dimension.AREA),
        branches=None if heat is None else _branches(heat),
        heat=heat,
        accountability=_present(
            table(Measure.CASES_OPENED, month),
            table(Measure.CASES_CLOSED, month),
            table(Measure.INTERVENTIONS, Dimension.INTERVENTION_TYPE),
        ),
        top=top,
        notes=tuple(notes),
        area_map=area_map,
        categories=tuple(categories),
        branch_names=dict(branch_names or {}),
        classification=classification,
    )


def _read_file(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}", field=option) from None


def load_area_map(path: Path) -> AreaMap:
    """The boundaries in ``path``; a bad file is a ``ConfigurationError`` naming ``--areas``
    and, in its message, the part of the file at fault."""
    from samenloop.node.picture.map import read_areas

    try:
        return read_areas(_read_file(path, "--areas"))
    except InvalidInput as error:
        raise ConfigurationError(
            f"{path}: {error.field}: {error.message}", field="--areas", reason=error.reason
        ) from None


_SBI_CODE: Final = re.compile(r"\d{2,5}")


def read_sbi_names(data: bytes, *, field: str = "--sbi-names") -> dict[str, str]:
    """SBI code to name, from CBS's published SBI 2008 list saved as CSV (``;``, ``,`` or
    tab) or as the XLSX workbook itself (its first sheet): each row a code (``56.10.1`` or
    ``56101``) and its name in the next filled cell; other rows (headings, sections) are
    skipped. A file naming no code at all is refused."""
    if data.startswith(b"PK\x03\x04"):
        rows = _xlsx_rows(data, field)
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("cp1252")  # CBS's Excel exports
        lines = text.splitlines()
        try:
            dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
                "\n".join(lines[:20]), delimiters=";,\t"
            )
        except csv.Error:
            dialect = csv.excel
        rows = list(csv.reader(lines, dialect))
    names: dict[str, str] = {}
    for row in rows:
        cells = [c.strip() for c in row if c.strip()]
        if len(cells) < 2:
            continue
        code = cells[0].replace(".", "").replace(" ", "")
        if _SBI_CODE.fullmatch(code) and code not in names:
            names[code] = printable(cells[1])[:200]
    if not names:
        raise ConfigurationError("no SBI code and name found (one per row)", field=field)
    return names


def _xlsx_rows(data: bytes, field: str) -> list[list[str]]:
    import openpyxl  # imported here: only a workbook pays for it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (OSError, InvalidFileException, zipfile.BadZipFile, KeyError) as error:
        raise ConfigurationError(
            f"cannot read it as an XLSX workbook ({type(error).__name__})", field=field
        ) from None
    try:
        return [
            ["" if v is None else str(v) for v in values]
            for values in workbook.worksheets[0].iter_rows(values_only=True)
        ]
    finally:
        workbook.close()


def _present(*tables: ReleasedTable | None) -> tuple[ReleasedTable, ...]:
    return tuple(t for t in tables if t is not None)


def _report(args: argparse.Namespace) -> int:
    from samenloop.node.picture import report as picture_report

    period = _period(args.period)
    area_map = load_area_map(args.areas) if args.areas is not None else None
    branch_names = (
        read_sbi_names(_read_file(args.sbi_names, "--sbi-names"))
        if args.sbi_names is not None
        else None
    )
    with open_client(args) as client:
        status = client.status()
        cost = report_cost(client, period, officer=_officer(args))
        if args.dry_run:
            print(f"dry run, nothing asked: the report for {cost_line(period, cost)}")
            return 0
        if cost.noisy:
            print(f"the report for {cost_line(period, cost)}")
        try:
            report = build_report(
                client,
                period,
                officer=_officer(args),
                covenant=f"{status.covenant_id} v{status.covenant_version}",
                title=args.title,
                wait=args.wait,
                top=args.top,
                area_map=area_map,
                categories=status.categories,
                branch_names=branch_names,
                classification=status.picture_classification,
            )
        except NotFound as error:
            raise ConfigurationError(error.message, field="--period") from None
        # The subject network as this node holds it now (a network viewer's, usually the
        # RIEC's): its components with at least one link; none, no section.
        network = None if args.no_network else client.network_components() or None
    try:
        args.out.write_text(picture_report.render(report, network), encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(
            f"cannot write {args.out}: {error.strerror}", field="--out"
        ) from None
    print(f"report written to {args.out}")
    refused = [n for n in report.notes if n.startswith(("Geweigerd door", "Geen gegevens"))]
    for note in refused:
        print(note)
    return EXIT_REFUSED if refused else 0
