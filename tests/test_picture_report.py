"""The picture report as its readers need it (issue 13, items 5-8): its HTML structure,
parsed with the standard library's ``html.parser``.

A map from a GeoJSON file (the schematic fixture ``node/demo/areas.geojson`` and small
files made here, in WGS 84 and in Rijksdriehoek), Dutch words and dates, honest figures
(a protected cell said to be one, hidden cells not ranked, a hidden total explained, the
trend for one month and for many), and screens and paper (tables in their own scrolling
box, headings kept with their tables, the covenant's classification on every page).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samenloop.node.demo.daemons import DEMO_AREAS
from samenloop.node.picture import arithmetic as p
from samenloop.node.picture import commands as picture_commands
from samenloop.node.picture import protocol as picture_protocol
from samenloop.node.picture import report as picture_report
from samenloop.node.picture.map import read_areas
from samenloop.policies.errors import ConfigurationError, InvalidInput
from samenloop.policies.policy import PictureRules, Role

A, B, C, M = p.Dimension.AREA, p.Dimension.BRANCH, p.Dimension.CATEGORY, p.Dimension.MONTH
SIGNALS = p.Measure.ACTIVE_SIGNALS
Q4 = p.Period("2026-10", "2026-12")
DEC = p.Period("2026-12", "2026-12")
AREAS_FILE = DEMO_AREAS
MIN = 5


class Page(HTMLParser):
    """The document as elements with their attributes, texts and enclosing tags."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr"})

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.elements: list[tuple[str, dict[str, str], tuple[str, ...]]] = []
        self.texts: list[tuple[str, tuple[str, ...], dict[str, str]]] = []
        self.style = ""
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes, tuple(t for t, _ in self.stack)))
        if tag not in self.VOID:
            self.stack.append((tag, attributes))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}, tuple(t for t, _ in self.stack)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack, tag
        assert self.stack[-1][0] == tag, (self.stack[-3:], tag)
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1][0] == "style":
            self.style += data
        elif data.strip():
            attrs = self.stack[-1][1] if self.stack else {}
            self.texts.append((data.strip(), tuple(t for t, _ in self.stack), attrs))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a, _ in self.elements
            if t == tag and all(a.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def headings(self) -> list[str]:
        return [text for text, tags, _ in self.texts if tags and tags[-1] in ("h1", "h2", "h3")]


def _released(
    cells: dict[tuple[str, ...], int], dims: tuple[p.Dimension, ...], period: p.Period = Q4
) -> p.ReleasedTable:
    return p.release(p.with_totals(p.Table(SIGNALS, dims, period, cells)), min_count=MIN)


def _areas() -> p.ReleasedTable:
    """By area: 4461 has 3 (too few), so one more area is withheld to protect it; 4331 is
    the largest of all and 9999 is on no map."""
    return _released(
        {
            ("pc4:4331",): 40,
            ("pc4:4332",): 12,
            ("pc4:4333",): 7,
            ("pc4:4381",): 9,
            ("pc4:4461",): 3,
            ("pc4:9999",): 20,
        },
        (A,),
    )


def _report(**changes: object) -> picture_report.PictureReport:
    heat = _released(
        {
            ("5610", "woonfraude"): 12,
            ("5610", "leegstand"): 2,
            ("6810", "woonfraude"): 8,
            ("6810", "leegstand"): 9,
        },
        (B, C),
    )
    month = p.release(
        p.with_totals(
            p.Table(SIGNALS, (M,), Q4, {("2026-10",): 20, ("2026-11",): 2, ("2026-12",): 31})
        ),
        min_count=MIN,
    )
    hits = p.release(
        p.with_totals(p.Table(p.Measure.HIT_GROUPS, (M,), Q4, {("2026-10",): 6, ("2026-12",): 9})),
        min_count=MIN,
    )
    report = picture_report.PictureReport(
        title="Integraal ondermijningsbeeld Zeeland",
        covenant="riec-zeeland v3",
        period=Q4,
        generated_at=datetime(2026, 12, 7, 12, 52, tzinfo=UTC),
        trend=(month, hits),
        areas=_areas(),
        heat=heat,
        branches=picture_commands._branches(heat),
        area_map=read_areas(AREAS_FILE.read_bytes()),
        categories=("woonfraude", "leegstand"),
        classification="Departementaal vertrouwelijk",
    )
    return replace(report, **changes)  # type: ignore[arg-type]


def test_the_report_is_dutch_with_dates_as_people_write_them() -> None:
    page = Page(picture_report.render(_report()))
    assert page.find("html") == [{"lang": "nl"}]
    headings = page.headings()
    assert "Kaart: actieve signalen per gebied" in headings
    assert "Verloop per maand" in headings
    assert "Top 10 gebieden" in headings
    assert "Branche (SBI) \u00d7 categorie" in headings
    texts = [t for t, _, _ in page.texts]
    meta = next(t for t in texts if t.startswith("Convenant"))
    assert "periode oktober t/m december 2026" in meta
    assert "gemaakt op 7 december 2026, 12:52 UTC" in meta
    assert "december 2026" in texts  # a month in the month table
    # one word for a total, the same as the CLI's and the JSON's
    assert p.TOTAL == "totaal"
    assert "totaal" in texts
    assert "total" not in texts
    assert picture_report.period_name(p.Period("2026-11", "2027-01")) == (
        "november 2026 t/m januari 2027"
    )
    assert picture_report.month_name("2026-03") == "maart 2026"


def test_the_covenants_categories_in_its_order_and_names() -> None:
    page = Page(picture_report.render(_report(categories=("leegstand", "woonfraude"))))
    heads = [t for t, tags, _ in page.texts if tags[-1:] == ("th",)]
    assert heads.index("leegstand") < heads.index("woonfraude")
    page = Page(picture_report.render(_report()))
    heads = [t for t, tags, _ in page.texts if tags[-1:] == ("th",)]
    assert heads.index("woonfraude") < heads.index("leegstand")


def test_branches_are_named_from_a_given_sbi_list_and_say_so_when_not() -> None:
    page = Page(picture_report.render(_report()))
    assert any("geen lijst met SBI-namen" in t for t, _, _ in page.texts)
    names = picture_commands.read_sbi_names(
        b"Code;Omschrijving\nI;Logies-, maaltijd- en drankverstrekking\n"
        b"56.10;Restaurants (test)\n6810;Handel in eigen onroerend goed (test)\n"
    )
    assert names == {
        "5610": "Restaurants (test)",
        "6810": "Handel in eigen onroerend goed (test)",
    }
    page = Page(picture_report.render(_report(branch_names=names)))
    assert "5610 Restaurants (test)" in [t for t, _, _ in page.texts]
    with pytest.raises(ConfigurationError) as caught:
        picture_commands.read_sbi_names(b"just a line\n")
    assert caught.value.field == "--sbi-names"
    with pytest.raises(ConfigurationError) as caught:
        picture_commands.read_sbi_names(b"PK\x03\x04 not really a workbook")
    assert caught.value.field == "--sbi-names"


def test_sbi_names_from_the_xlsx_workbook(tmp_path: Path) -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    for row in (
        ("SBI 2008 (test)", None),
        ("I", "Logies-, maaltijd- en drankverstrekking (test)"),
        ("56.10", "Restaurants (test)"),
        ("56.10.1", "Restaurants met een volledige bediening (test)"),
    ):
        sheet.append(row)
    path = tmp_path / "sbi.xlsx"
    workbook.save(path)
    assert picture_commands.read_sbi_names(path.read_bytes()) == {
        "5610": "Restaurants (test)",
        "56101": "Restaurants met een volledige bediening (test)",
    }


def test_the_map_draws_every_area_and_hatches_and_marks_suppressed_ones() -> None:
    report = _report()
    page = Page(picture_report.render(report))
    (svg,) = page.find("svg", class_="map")
    assert svg["role"] == "img"
    paths = {a["data-area"]: a for a in page.find("path") if "data-area" in a}
    assert set(paths) == {a.value for a in report.area_map.areas}  # type: ignore[union-attr]
    assert all(re.fullmatch(r"(M[\d. ,]+Z)+", a["d"]) for a in paths.values())
    assert page.find("pattern", id="arcering")
    areas = report.areas
    assert areas is not None
    for value, path in paths.items():
        cell = areas.cell((value,))
        if cell.quality is p.CellQuality.SUPPRESSED:
            assert path["fill"] == "url(#arcering)"
            assert path["data-suppressed"] == cell.reason.value  # type: ignore[union-attr]
        else:
            assert path["fill"].startswith("#")
    # 4461 is too few; another area is withheld to protect it
    assert paths["pc4:4461"]["data-suppressed"] == "too_few"
    assert "protects_another" in {a.get("data-suppressed") for a in paths.values()}
    marks = [t for t, _, attrs in page.texts if "mark" in attrs.get("class", "").split()]
    assert picture_report.SUPPRESSED_MARK in marks
    assert picture_report.PROTECTED_MARK in marks
    # an area of the table that has no boundary is listed under the map
    assert any(t.startswith("Niet op de kaart") and "9999 (20)" in t for t, _, _ in page.texts)
    # a hole (4331's park) is a second ring in the same path
    assert paths["pc4:4331"]["d"].count("M") == 2


def test_no_number_is_shown_for_a_suppressed_cell() -> None:
    report = _report()
    page = Page(picture_report.render(report))
    marks = (picture_report.SUPPRESSED_MARK, picture_report.PROTECTED_MARK)
    hidden_cells = [
        (t, attrs)
        for t, tags, attrs in page.texts
        if tags[-1:] == ("td",) and "sup" in attrs.get("class", "").split()
    ]
    assert len(hidden_cells) >= 4  # areas, the branch table, the heat table
    for text, attrs in hidden_cells:
        assert text in marks
        assert not re.search(r"\d", attrs["title"].replace(f"minder dan {MIN}", ""))
    # on the map: the hidden areas' labels are their code and a mark, their tooltip a reason
    hidden_areas = {a["data-area"] for a in page.find("path") if "data-suppressed" in a}
    assert "pc4:4461" in hidden_areas
    labels = [t for t, tags, attrs in page.texts if tags[-1:] == ("text",)]
    assert "3" not in labels  # 4461's own count
    for title, tags, _ in page.texts:
        if tags[-1:] == ("title",) and any(title.startswith(a) for a in hidden_areas):
            assert not re.search(r"\d", title.split(":", 2)[-1].replace(f"minder dan {MIN}", ""))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.sampled_from("abcd"), st.sampled_from("xyz")),
        st.integers(0, 12),
        min_size=1,
    ),
    st.integers(2, 6),
)
def test_every_suppressed_cell_says_truly_why(cells: dict[tuple[str, str], int], low: int) -> None:
    counted = p.with_totals(p.Table(SIGNALS, (A, C), Q4, cells))
    released = p.release(counted, min_count=low)
    for cell in released.cells:
        value = counted.get(cell.values, 0)
        if cell.quality is not p.CellQuality.SUPPRESSED:
            assert cell.reason is None
        elif cell.reason is p.SuppressionReason.TOO_FEW:
            assert 0 < value < low
        else:
            assert cell.reason is p.SuppressionReason.PROTECTS_ANOTHER
            assert value == 0 or value >= low


def test_the_branch_list_keeps_the_heat_table_s_reasons() -> None:
    cells = {("5610", "x"): 3, ("5610", "y"): 9, ("6810", "x"): 1, ("6810", "y"): 2}
    heat = _released(cells, (B, C))  # 6810's total, 3, is too few
    branches = picture_commands._branches(heat)
    for cell in branches.cells:
        source = heat.cell((cell.values[0], p.TOTAL))
        assert (cell.count, cell.quality, cell.reason) == (
            source.count,
            source.quality,
            source.reason,
        )
    assert branches.cell(("6810",)).reason is p.SuppressionReason.TOO_FEW


def test_a_protected_cell_says_so_and_is_not_called_too_few() -> None:
    page = Page(picture_report.render(_report()))
    protected = page.find("td", class_="n sup prot")
    assert protected
    assert all(a["title"].startswith("niet getoond ter bescherming") for a in protected)
    too_few = page.find("td", class_="n sup")
    assert too_few
    assert all(
        a["title"].startswith(f"niet getoond: te weinig (minder dan {MIN}, ") for a in too_few
    )


def test_hidden_cells_are_not_ranked_at_the_bottom_of_the_top_ten() -> None:
    report = _report(top=2)
    text = picture_report.render(report)
    page = Page(text)
    start = text.index("<h2>Top 2 gebieden</h2>")
    section = text[start : text.index("</section>", start)]
    ranked, _, hidden = section.partition('class="hidden-rows"')
    assert "<th>gebied (postcode-4)</th>" in ranked
    assert "<td>4331</td>" in ranked  # 40
    assert "<td>9999</td>" in ranked  # 20
    assert "4332" not in ranked  # 12: third
    assert "en nog 2 andere gebieden" in ranked
    assert "4461" not in ranked  # hidden: listed apart, unranked
    assert "<td>4461</td>" in hidden
    assert "geen rangorde" in hidden
    assert page.find("tbody", class_="hidden-rows")


def test_a_hidden_total_is_explained_next_to_its_table() -> None:
    table = _released({("pc4:4331",): 2, ("pc4:4332",): 1}, (A,))
    total = table.cell((p.TOTAL,))
    assert total.quality is p.CellQuality.SUPPRESSED
    text = picture_report.render(_report(areas=table, area_map=None))
    page = Page(text)
    whys = [t for t, _, attrs in page.texts if attrs.get("class") == "why"]
    assert any(t.startswith("Het totaal is niet getoond") for t in whys)


def test_the_trend_for_one_month_has_no_line_and_for_many_a_panel_per_series() -> None:
    month = _released({("2026-12",): 31}, (M,), DEC)
    one = Page(picture_report.render(_report(period=DEC, trend=(month,))))
    assert not one.find("svg", class_="chart")
    assert not one.find("polyline")
    assert any("één maand" in t for t, _, _ in one.texts)

    many = Page(picture_report.render(_report()))
    (chart,) = many.find("svg", class_="chart")
    assert "eigen schaal" in chart["aria-label"]
    texts = {t: attrs for t, tags, attrs in many.texts if "svg" in tags}
    # axis titles, and each series named above its own panel (a legend outside the plot)
    assert texts["aantal"]["class"] == "axis-title"
    assert texts["maand"]["class"] == "axis-title"
    series = [t for t, attrs in texts.items() if attrs.get("class") == "series"]
    assert series == ["actieve signalen", "samenlopen"]
    assert "okt 2026" in texts
    # November's 2 signals are too few and October's 20 is withheld to protect it (with
    # the total they would give it away): the signals show December alone, with both
    # marks where the line is not drawn; the hit groups' line runs through all three.
    assert len(many.find("polyline")) == 1
    assert len(many.find("circle")) == 1 + 3
    assert picture_report.SUPPRESSED_MARK in texts
    assert picture_report.PROTECTED_MARK in texts


def test_tables_scroll_in_their_own_box_and_print_keeps_headings_with_tables() -> None:
    text = picture_report.render(_report())
    page = Page(text)
    tables = [enclosing for tag, _, enclosing in page.elements if tag == "table"]
    assert tables
    assert all(enclosing[-1] == "div" for enclosing in tables)
    boxes = page.find("div", class_="scroll", role="region")
    assert len(boxes) == len(tables)
    css = page.style
    assert re.search(r"\.scroll\{overflow-x:auto", css)
    assert re.search(r"@media print\{.*h2,h3\{break-after:avoid", css, re.S)
    assert "section{break-inside:avoid" in css
    assert "thead{display:table-header-group}" in css


def test_the_classification_is_on_every_printed_page() -> None:
    page = Page(picture_report.render(_report()))
    at_page = re.search(r"@page\{(.*?)\}\s*@media print", page.style, re.S)
    assert at_page is not None
    mark = '"Departementaal vertrouwelijk"'
    assert f"@top-center{{content:{mark}" in at_page.group(1)
    assert f"@bottom-center{{content:{mark}" in at_page.group(1)
    assert "Departementaal vertrouwelijk" in [t for t, _, _ in page.texts]
    none = Page(picture_report.render(_report(classification="")))
    assert "@top-center" not in none.style


def test_a_classification_cannot_leave_its_css_string() -> None:
    hostile = 'Geheim"}body{display:none}</style><script>x</script>'
    text = picture_report.render(_report(classification=hostile))
    assert "<script>" not in text
    assert "</style><script>" not in text
    style = Page(text).style
    (mark,) = re.findall(r"@top-center\{content:(\"[^\"]*\")", style)
    assert "}" not in mark
    assert "<" not in mark
    assert mark.startswith('"Geheim\\22 \\7d body\\7b display')


def test_the_covenant_carries_a_validated_classification() -> None:
    rules = PictureRules(
        viewers=(Role.RIEC,), min_cell_count=5, classification="Departementaal vertrouwelijk"
    )
    assert rules.classification == "Departementaal vertrouwelijk"
    for bad in ("line\nbreak", " padded", "x" * 101, "bell\x07"):
        with pytest.raises(InvalidInput) as caught:
            PictureRules(viewers=(Role.RIEC,), min_cell_count=5, classification=bad)
        assert caught.value.field == "classification"


def test_protocol_carries_the_suppression_reason() -> None:
    table = _areas()
    back = picture_protocol.released_from_proto(
        picture_protocol.released_to_proto(table), min_count=MIN
    )
    assert [c.reason for c in back.cells] == [c.reason for c in table.cells]
    assert {c.reason for c in back.suppressed} == {
        p.SuppressionReason.TOO_FEW,
        p.SuppressionReason.PROTECTS_ANOTHER,
    }
    assert all(c.reason is None for c in back.cells if c.quality is not p.CellQuality.SUPPRESSED)


def test_json_says_why_a_cell_is_hidden() -> None:
    from samenloop.node.client import Picture

    shown = Picture(table=_areas(), contributors=("gemeente",), missing=(), refusals=())
    cells = picture_commands.picture_to_json(shown)["cells"]
    by_value = {tuple(c["values"]): c for c in cells}
    assert by_value[("pc4:4461",)]["suppression"] == "too_few"
    assert by_value[("pc4:4461",)]["count"] is None
    assert by_value[("pc4:4331",)]["suppression"] is None
    json.dumps(cells)


# --- reading boundary files --------------------------------------------------------------------


def _collection(features: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": features, **extra}).encode()


def _square(x: float, y: float, size: float) -> list[list[list[float]]]:
    return [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]


def test_areas_show_by_code_and_the_map_file_s_names() -> None:
    table = _released({("wijk:WK068701",): 12, ("buurt:BU06870102",): 9}, (A,))
    named = read_areas(_wijk_and_buurt())
    page = Page(picture_report.render(_report(areas=table, area_map=named)))
    cells = [t for t, tags, _ in page.texts if tags[-1:] == ("td",)]
    assert "WK068701 Middelburg-Centrum" in cells
    assert "BU06870102 Binnenstad" in cells
    heads = [t for t, tags, _ in page.texts if tags[-1:] == ("th",)]
    assert "gebied (CBS-wijk, CBS-buurt)" in heads


def _wijk_and_buurt() -> bytes:
    return _collection(
        [
            {
                "type": "Feature",
                "properties": {"wijkcode": "WK068701", "wijknaam": "Middelburg-Centrum"},
                "geometry": {"type": "Polygon", "coordinates": _square(31000, 391000, 1000)},
            },
            {
                "type": "Feature",
                "properties": {"statcode": "BU06870102", "statnaam": "Binnenstad"},
                "geometry": {"type": "Polygon", "coordinates": _square(32000, 391000, 1000)},
            },
        ],
        crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::28992"}},
    )


def test_cbs_wijk_and_buurt_codes_in_rijksdriehoek_and_wgs84() -> None:
    area_map = read_areas(_wijk_and_buurt())
    assert [(a.value, a.name) for a in area_map.areas] == [
        ("wijk:WK068701", "Middelburg-Centrum"),
        ("buurt:BU06870102", "Binnenstad"),
    ]
    # two equal squares side by side: twice as wide as high, north up
    assert area_map.width == pytest.approx(2 * (area_map.height - 16) + 16, rel=0.01)
    wgs84 = _collection(
        [
            {
                "type": "Feature",
                "properties": {"postcode4": 4331},
                "geometry": {"type": "Polygon", "coordinates": _square(3.60, 51.49, 0.02)},
            }
        ]
    )
    (area,) = read_areas(wgs84).areas
    assert area.value == "pc4:4331"
    # projected to Rijksdriehoek: 0.02° of longitude is shorter than 0.02° of latitude here
    projected = read_areas(wgs84)
    assert projected.height > projected.width * 0.9


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (b"not json", "areas"),
        (json.dumps({"type": "Feature"}).encode(), "type"),
        (_collection([]), "features"),
        (
            _collection([{"type": "Feature", "properties": {}, "geometry": None}]),
            "features[0].properties",
        ),
        (
            _collection(
                [{"type": "Feature", "properties": {"postcode": "0123"}, "geometry": None}]
            ),
            "features[0].properties.postcode",
        ),
        (
            _collection([{"type": "Feature", "properties": {"wijkcode": "XX1"}, "geometry": None}]),
            "features[0].properties.wijkcode",
        ),
        (
            _collection(
                [
                    {
                        "type": "Feature",
                        "properties": {"postcode": "4331"},
                        "geometry": {"type": "Point", "coordinates": [3.6, 51.5]},
                    }
                ]
            ),
            "features[0].geometry",
        ),
        (
            _collection(
                [
                    {
                        "type": "Feature",
                        "properties": {"postcode": "4331"},
                        "geometry": {"type": "Polygon", "coordinates": _square(3.6, 51.5, 0.1)},
                    }
                ]
                * 2
            ),
            "features[1].properties",
        ),
        (
            _collection(
                [],
                crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
            ),
            "crs",
        ),
    ],
)
def test_a_bad_boundary_file_is_refused_naming_where(doc: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        read_areas(doc)
    assert caught.value.field == field
    assert caught.value.reason == "picture.areas"


def test_the_cli_names_areas_and_the_fault_in_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_bytes(
        _collection([{"type": "Feature", "properties": {"postcode": "12"}, "geometry": None}])
    )
    with pytest.raises(ConfigurationError) as caught:
        picture_commands.load_area_map(bad)
    assert caught.value.field == "--areas"
    assert "features[0].properties.postcode" in caught.value.message
    with pytest.raises(ConfigurationError) as caught:
        picture_commands.load_area_map(tmp_path / "missing.geojson")
    assert caught.value.field == "--areas"


def test_picture_report_refuses_a_bad_areas_file_before_asking_anyone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from samenloop.policies.cli import main

    bad = tmp_path / "bad.geojson"
    bad.write_bytes(b'{"type": "FeatureCollection", "features": []}')
    out = tmp_path / "beeld.html"
    code = main(
        [
            "picture",
            "report",
            "--period",
            "2026-12",
            "--out",
            str(out),
            "--areas",
            str(bad),
            "--socket",
            str(tmp_path / "no-node.sock"),  # never reached
        ]
    )
    assert code != 0
    error = capsys.readouterr().err
    assert "--areas" in error
    assert "features" in error
    assert not out.exists()
