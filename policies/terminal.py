"""Text from other parties, made safe to show on a terminal.

Categories, case titles, measures, notes, officer names, refusal messages,
disclosure fields and party names arrive from other parties' nodes (or from
a covenant another administrator wrote). Shown as they are, ``[/bold]`` is a
rich markup error (a traceback), ``[link=…]`` or an OSC 8 sequence puts a
hyperlink on the screen, and ESC, CR or a bidi override moves the cursor,
recolours the terminal or reorders what an officer reads. The commands
therefore never interpret markup or emoji codes, and never pass a control
character on:

* :func:`console` is the only rich ``Console`` the commands use: markup, emoji
  codes and highlighting off, so a string is shown as written (styles are
  given as ``style=`` or :class:`rich.text.Text`, never as markup).
* :func:`printable` shows every character that a terminal would act on or
  that is invisible as an escape (``\\x1b``, ``\\u202e``): control characters
  (C0, DEL, C1), format characters (bidi overrides and isolates, zero-width
  characters), surrogates, line and paragraph separators and unassigned
  code points. Everything else is kept as it is.
* :func:`dumps` is ``json.dumps`` for output: the same JSON value, with those
  characters written as ``\\uXXXX`` escapes instead of raw.

Sans-IO: nothing here writes; the console writes where it is told.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import IO, TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # rich is imported when a command prints: the CLI's error path stays light
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "UNSAFE_CATEGORIES",
    "console",
    "dumps",
    "fitted",
    "is_safe",
    "printable",
    "show_table",
]

#: Unicode general categories shown as escapes: control, format, surrogate,
#: line and paragraph separator, unassigned.
UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Cn"})

#: Every character outside printable ASCII: the candidates, checked one by one.
_CANDIDATE: Final = re.compile(r"[^\x20-\x7e]")


def is_safe(char: str) -> bool:
    """Whether one character may reach a terminal as it is."""
    return unicodedata.category(char) not in UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    return char if is_safe(char) else _escape(char)


def printable(text: str) -> str:
    """``text`` with every unsafe character (see :data:`UNSAFE_CATEGORIES`) written as
    its escape, so that it shows as text and does nothing to the terminal."""
    if text.isascii() and text.isprintable():
        return text
    return _CANDIDATE.sub(_shown, text)


def _json_escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\n" or is_safe(char):  # a raw newline is indentation: JSON escapes its own
        return char
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def dumps(value: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """``value`` as JSON for a terminal: non-ASCII text kept readable, every unsafe
    character escaped (``json.loads`` gives back exactly ``value``)."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    return _CANDIDATE.sub(_json_escape, text)


def fitted(message: str, stream: IO[str] | None = None) -> str:
    """A message for ``stream`` (stderr by default): on a terminal wrapped between words to
    its width (lists of allowed values are long); elsewhere, for logs and scripts, one line
    as it is."""
    import shutil
    import sys
    import textwrap

    if not (stream or sys.stderr).isatty():
        return message
    return textwrap.fill(
        message,
        shutil.get_terminal_size().columns,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def console(
    *, stderr: bool = False, file: IO[str] | None = None, width: int | None = None
) -> Console:
    """The commands' console: markup, emoji codes and highlighting off, so that no text
    is read as an instruction. Pass remote text through :func:`printable` as well."""
    from rich.console import Console

    return Console(
        stderr=stderr, file=file, width=width, markup=False, emoji=False, highlight=False
    )


def show_table(out: Console, table: Table) -> None:
    """Print ``table`` so that no word is broken across lines (one longer than the whole
    line aside): as a table when each column's longest word fits ``out``'s width, its
    columns widened from there in proportion to what their text could use (rich's own
    layout would narrow a column below its longest word); else as one record per row,
    ``header: value`` lines that wrap between words."""
    from rich.text import Text

    # rich's own measures (private: its public Measurement clamps to the console's width).
    unbounded = out.options.update_width(1 << 16)
    measures = [table._measure_column(out, unbounded, column) for column in table.columns]
    available = out.width - table._extra_width
    least = sum(m.minimum for m in measures)
    if least <= available:
        if sum(m.maximum for m in measures) > available:
            # Water-filling: the columns that want least get all they want first, the
            # others share what is left evenly.
            slack = available - least
            order = sorted(range(len(measures)), key=lambda i: measures[i].span)
            for left, index in enumerate(order):
                share = min(measures[index].span, slack // (len(order) - left))
                slack -= share
                width = measures[index].minimum + share
                table.columns[index].width = width - table._get_padding_width(index)
        out.print(table)
        return
    if table.title:
        out.print(table.title if isinstance(table.title, Text) else Text(str(table.title)))
    headers = [str(column.header) for column in table.columns]
    rows = zip(*(list(column.cells) for column in table.columns), strict=True)
    for number, row in enumerate(rows, start=1):
        out.print(Text(f"-- {number} --", style="dim"))
        for header, cell in zip(headers, row, strict=True):
            shown = cell if isinstance(cell, Text) else Text(str(cell))
            line = Text(f"{header}: " if header else "", style="bold")
            line.append_text(shown)
            out.print(line)
