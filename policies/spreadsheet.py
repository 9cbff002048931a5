"""Tables the project writes for spreadsheets (CSV, XLSX), with formulas neutralised.

A report can carry text that came from elsewhere: an imported file's column
headers, another party's messages. A spreadsheet program runs a cell that
starts with ``=``, ``+``, ``-`` or ``@`` as a formula (``=HYPERLINK(…)``,
``=cmd|…``), and one that starts with a tab or a carriage return can still
reach one. Every cell a writer here writes goes through :func:`cell`, which
gives such a text a leading ``'`` (OWASP, "CSV Injection"): the program then
shows it as text, and a reader sees where it was altered. Numbers are written
as numbers; no other text is changed, except that an XLSX cell cannot hold
the C0 control characters other than tab, LF and CR: those are written as
``\\xNN``.

The writers take a header and rows and write the whole file, or raise
``ConfigurationError`` naming ``field`` (the option that named the file).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from samenloop.policies.errors import ConfigurationError

__all__ = ["FORMULA_STARTS", "XLSX_SUFFIXES", "cell", "write_csv", "write_table", "write_xlsx"]

#: A text cell starting with one of these gets a leading ``'``.
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
#: File suffixes written as an XLSX workbook; any other as CSV.
XLSX_SUFFIXES: Final = (".xlsx",)

Value = str | int | float
Row = Sequence[Value | None]


def cell(value: Value | None) -> Value:
    """A value as written to a spreadsheet cell: ``None`` as empty, a number as it is,
    a text that a spreadsheet would read as a formula with a leading ``'``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _cells(rows: Iterable[Row]) -> Iterable[list[Value]]:
    return ([cell(v) for v in row] for row in rows)


def write_csv(path: Path, header: Row, rows: Iterable[Row], *, field: str) -> None:
    """Write ``header`` and ``rows`` as UTF-8 CSV, every cell through :func:`cell`."""
    try:
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(_cells([header, *rows]))
    except OSError as error:
        raise ConfigurationError(f"cannot write {path}: {error.strerror}", field=field) from None


def write_xlsx(path: Path, header: Row, rows: Iterable[Row], *, field: str) -> None:
    """Write ``header`` and ``rows`` as one sheet of an XLSX workbook, every cell through
    :func:`cell` and stored as text or number (never as a formula)."""
    import openpyxl  # imported here: only XLSX reports pay for it
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None  # a new workbook has one sheet
    sheet.title = "report"
    for row, values in enumerate(_cells([header, *rows]), start=1):
        for column, value in enumerate(values, start=1):
            if isinstance(value, str):  # XLSX cannot hold most C0 controls: shown as \\xNN
                value = ILLEGAL_CHARACTERS_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
            item = sheet.cell(row=row, column=column, value=value)
            if isinstance(value, str):
                item.data_type = "s"  # openpyxl would store a text starting with '=' as a formula
    try:
        workbook.save(path)
    except OSError as error:
        raise ConfigurationError(f"cannot write {path}: {error.strerror}", field=field) from None


def write_table(path: Path, header: Row, rows: Iterable[Row], *, field: str) -> None:
    """Write as XLSX when ``path`` ends in ``.xlsx``, else as CSV."""
    if path.suffix.lower() in XLSX_SUFFIXES:
        write_xlsx(path, header, rows, field=field)
    else:
        write_csv(path, header, rows, field=field)
