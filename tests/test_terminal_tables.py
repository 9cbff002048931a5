"""The commands' tables at 80 columns (and wider): no word broken across lines (issue 15).

``terminal.show_table`` prints a table whose columns' longest words fit as a table, its
columns widened from there, and one that does not fit as one record per row.
"""

from __future__ import annotations

import io

import pytest
from rich.table import Table
from rich.text import Text

from samenloop.policies import terminal

REFERENCES = ("DOSSIER-2026-000123-politie", "DOSSIER-2026-000124-gemeente")
FREE_TEXT = "leegstand boven de winkel sinds maart, eigenaar onbekend bij het kadaster"


def render(table: Table, width: int) -> str:
    out = io.StringIO()
    terminal.show_table(terminal.console(file=out, width=width), table)
    return out.getvalue()


def intact(out: str, width: int, *values: str) -> list[str]:
    """The lines of ``out``: none longer than ``width``, no word of ``values`` broken."""
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width, out
    for word in (w for value in values for w in value.split()):
        assert any(word in line for line in lines), f"{word!r} broken or missing:\n{out}"
    return lines


def hits_like(columns: int) -> Table:
    table = Table(title="2 hits")
    for name in ("group", "state", "rev", "parties", "own signals", "others", "last seen")[
        :columns
    ]:
        table.add_column(name, overflow="fold")
    for reference in REFERENCES:
        table.add_row(
            "c4e86f9fe6b7",
            "open (new)",
            "1796679050605394",
            "2",
            f"{reference} (bsn)",
            "gemeente (gemeente): woonfraude, vastgoedmisbruik",
            "2026-12-07 21:30",
        )
    return table


@pytest.mark.parametrize("width", [80, 115, 116, 140])
def test_a_table_is_a_table_or_records_and_breaks_no_word(width: int) -> None:
    out = render(hits_like(7), width)
    intact(out, width, *REFERENCES, "c4e86f9fe6b7", "1796679050605394", "vastgoedmisbruik")
    as_table = "┃ group" in out
    # The seven columns' longest words (with padding and borders) need 116 columns.
    assert as_table == (width >= 116)
    if not as_table:
        assert "own signals: DOSSIER-2026-000123-politie (bsn)" in out
        assert out.count("-- ") == 2  # one record a row


def test_a_narrow_table_stays_a_table_and_widens_its_columns() -> None:
    table = Table(title="validation report")
    for name in ("row", "reference", "reason", "message"):
        table.add_column(name, overflow="fold")
    table.add_row("4", REFERENCES[0], "bsn.check_digit", FREE_TEXT)
    out = render(table, 80)
    lines = intact(out, 80, REFERENCES[0], "bsn.check_digit", FREE_TEXT)
    assert any("┃ row" in line for line in lines)
    # Wide as it can use: the short columns whole, the message wrapped between words.
    assert any(f"{REFERENCES[0]} │ bsn.check_digit │" in line for line in lines)


def test_records_keep_text_styles_and_plain_text() -> None:
    table = Table(title=Text("node x"), show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("a very long key that is one of many words", Text("[/bold] " + FREE_TEXT))
    table.add_row("ab", "c" * 70)
    out = render(table, 40)
    assert "[/bold]" in out  # not read as markup
    intact(out, 40, "a very long key that is one of many words")
