"""``samenloop signal`` and ``samenloop hits``: a partner's signals in, its hits out.

Both talk to the partner's own node through its local API (the client library,
:mod:`samenloop.node.client`), found with ``--node node.toml`` (its
``api_socket`` or ``api_listen``) or ``--socket PATH``; without either, a
``node.toml`` in the current directory.

``samenloop signal import FILE`` reads a CSV or XLSX file whose first row names
the columns, maps columns to identifier types (``--map "bsn=BSN nummer"``,
repeatable), takes each row's reference and category from columns (or one
category for the whole file), validates every row locally with
:mod:`samenloop.node.identifiers.normalise`, and sends the valid rows to the node in
chunks. Each row is stored whole or not at all. The validation report lists,
per refused row, the row number as a spreadsheet shows it (the header is row
1), the column and the rule it breaks; ``--report out.csv`` (or ``.xlsx``)
writes it to a file, with every cell that a spreadsheet would run as a formula
given a leading ``'`` (:mod:`samenloop.policies.spreadsheet`). The exit code
is 0 when every row was imported (or was already there unchanged), 1 when
some were refused. Coarse attributes for the regional
picture come from columns too (``--area-column``, ``--branch-column``,
``--month-column``) and are validated the same way. Identifier values never appear in the
report: only where and why. The report names each refused row by its number and its
reference. A ``--category`` the covenant does not list is refused once, before the file
is read (the node's status lists the covenant's categories). The long layout that
``registers export`` writes, one identifier a row (``--type-column type --value-column
value``), joins the rows of one reference into one signal, sent whole or not at all; rows
of one reference that give different per-signal values are refused, naming the rows.
A person's postcode, house number and gender, as a register export has them beside the
name and birth date, are parts of the row's ``person`` identifier, not identifiers:
``--map person.postcode=Postcode --map person.house_number=Huisnummer --map
person.gender=Geslacht`` (in the long layout, rows of type ``person.postcode`` and so on).
They are checked here (the report names their column), sent with the person identifier,
and the node keeps only the person keys derived from them.

``samenloop signal add`` adds one signal; ``signal withdraw`` withdraws one.
Its identifiers and details are best given with ``--from FILE`` (``--from -``:
standard input), one ``id TYPE=VALUE`` or ``detail NAME=VALUE`` line each,
because every account on the host reads a process's arguments
(``/proc/PID/cmdline``, ``ps``) and the shell keeps them in its history; given
as ``--id``/``--value``/``--detail`` arguments they still work, with a warning
on stderr. The other commands that take free text that may name a subject
(``disclosure request | approve | deny``, ``case open | act | update | close``)
read it the same way (:func:`add_from_option`, :func:`take_from`).

``samenloop hits list`` and ``hits watch`` show the hits the node received,
as a table or (``--json``) as JSON; ``hits watch --until-caught-up`` ends once the
node has sent the changes it holds. Other parties' text (party, role,
categories) and the file's own text are shown as plain text
(:mod:`samenloop.policies.terminal`); a category another member sealed that
the covenant does not list shows as "(unknown category)" (or "(N unknown
categories)"), never by its text.

Over 800 lines: ``signal`` and ``hits`` share the CSV and XLSX reading, the column
mapping, the terminal tables and their options.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from samenloop.policies import terminal
from samenloop.policies.cli import add_node_config
from samenloop.policies.errors import ConfigurationError, InvalidInput, SamenloopError
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from rich.table import Table

    from samenloop.node.client import Hit, NodeClient, OwnSignal, Signal, SignalInput
    from samenloop.node.identifiers.normalise import IdentifierType
    from samenloop.node.identifiers.person_hits import GivenParts
    from samenloop.node.signals.models import AreaKind

__all__ = [
    "ColumnMapping",
    "Problem",
    "add_from_option",
    "add_node_options",
    "hit_to_json",
    "open_client",
    "read_table",
    "register",
    "register_hits",
    "require_option",
    "rows_to_signals",
    "take_from",
]

#: The environment variable naming the node.toml to use when neither option is given.
NODE_CONFIG_ENV: Final = "SAMENLOOP_NODE_CONFIG"
DEFAULT_CHUNK: Final = 1000
#: The row number of the header in a file: data rows start at HEADER_ROW + 1.
HEADER_ROW: Final = 1
_XLSX_SUFFIXES: Final = (".xlsx", ".xlsm")
_DELIMITERS: Final = (",", ";", "\t", "|")
#: ``--area-kind`` and ``--state``: the values of ``AreaKind`` and ``HitState``, written out
#: so that registering the commands imports no model (a test compares them).
AREA_KINDS: Final = ("postcode4", "cbs_wijk", "cbs_buurt")
#: The person parts a ``--map``, a type column or ``signal add --id`` names, to the part:
#: written out so that registering the commands imports no model (a test compares them).
PERSON_PARTS: Final = {
    "person.postcode": "postcode",
    "person.house_number": "house_number",
    "person.gender": "gender",
}
HIT_STATES: Final = ("open", "closed")


# --- connecting -----------------------------------------------------------------------------


def add_node_options(parser: argparse.ArgumentParser) -> None:
    """``--node`` / ``--socket`` (with ``--token-file``): where the node's local API is."""
    where = parser.add_mutually_exclusive_group()
    add_node_config(
        where, help=f"the node's node.toml (default: ${NODE_CONFIG_ENV}, else ./node.toml)"
    )
    where.add_argument(
        "--socket",
        metavar="PATH",
        help="the node's local API socket (or 127.0.0.1:PORT)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="with --socket: the node's API token file (default: api-token beside the socket)",
    )


def open_client(args: argparse.Namespace) -> NodeClient:
    """A client for the node that ``--node`` / ``--socket`` name, with its API token."""
    from samenloop.node.client import NodeClient, normalise_target

    token_file: Path | None = getattr(args, "token_file", None)
    if args.socket:
        target = normalise_target(args.socket)
        beside = Path(target.removeprefix("unix:")).parent / "api-token"
        if token_file is None and target.startswith("unix:") and beside.exists():
            token_file = beside
        # Without a token file the node answers UNAUTHENTICATED, naming what is missing.
        return NodeClient(args.socket, token_file=token_file)
    if token_file is not None:
        raise ConfigurationError("--token-file goes with --socket", field="--token-file")
    config: Path | None = args.node
    if config is None and os.environ.get(NODE_CONFIG_ENV):
        config = Path(os.environ[NODE_CONFIG_ENV])
    if config is None and Path("node.toml").is_file():
        config = Path("node.toml")
    if config is None:
        raise ConfigurationError(
            "say where the node is: --node NODE_TOML or --socket PATH", field="--node"
        )
    return NodeClient.from_config(config)


# --- values kept off the command line -------------------------------------------------------

#: ``--from -``: read the lines from standard input.
FROM_STDIN: Final = "-"
#: The most ``--from`` reads: a few identifiers, details and sentences, never a data file.
MAX_FROM_BYTES: Final = 1 << 20
#: Why values that may name a subject do not belong in a command's arguments.
ARGUMENTS_ARE_VISIBLE: Final = (
    "command-line arguments are visible to every account on this host while the command "
    "runs (/proc/PID/cmdline, ps) and stay in the shell's history"
)
_FROM_LINE: Final = re.compile(r"([a-z][a-z-]*)[ \t](.*)", re.DOTALL)


def add_from_option(
    parser: argparse.ArgumentParser, names: Mapping[str, str], *, example: str
) -> None:
    """``--from FILE``: the options ``names`` (option name without ``--`` to its ``dest``)
    read from a file or standard input instead of the command line (:func:`take_from`)."""
    listed = ", ".join(names)
    parser.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help=f"read {listed} from FILE ('-': standard input), one 'NAME VALUE' line each "
        f"(e.g. '{example}'): unlike arguments, they stay out of the process list that "
        "every account on this host reads and out of the shell's history",
    )
    parser.set_defaults(from_names=dict(names))


def take_from(args: argparse.Namespace) -> None:
    """Merge the lines of ``--from`` into ``args``: a repeatable option's values are added
    to those of the command line, any other option may come from one place only.

    Each line is ``NAME VALUE`` (one space or tab between; the value is the rest of the
    line, kept as written); blank lines and lines starting with ``#`` are skipped. Errors
    name ``--from`` and the line, never its value."""
    source: str | None = getattr(args, "from_file", None)
    if source is None:
        return
    names: dict[str, str] = args.from_names
    seen: set[str] = set()
    for number, line in enumerate(_from_text(source).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _FROM_LINE.fullmatch(line)
        if match is None or match.group(1) not in names:
            raise ConfigurationError(
                f"line {number} does not start with one of: {', '.join(names)} "
                "(then a space and the value)",
                field="--from",
            )
        name, value = match.groups()
        dest = names[name]
        current = getattr(args, dest, None)
        if isinstance(current, list):
            current.append(value)
            continue
        if name in seen or current:
            where = "twice" if name in seen else "on the command line too"
            raise ConfigurationError(f"line {number}: {name} is given {where}", field="--from")
        seen.add(name)
        setattr(args, dest, value)


def _from_text(source: str) -> str:
    if source == FROM_STDIN:
        if sys.stdin.isatty():
            print("reading 'NAME VALUE' lines; end with Ctrl-D", file=sys.stderr)
        data = sys.stdin.buffer.read(MAX_FROM_BYTES + 1)
    else:
        try:
            with Path(source).open("rb") as handle:
                data = handle.read(MAX_FROM_BYTES + 1)
        except OSError as error:
            raise ConfigurationError(
                f"cannot read {source}: {error.strerror}", field="--from"
            ) from None
    if len(data) > MAX_FROM_BYTES:
        raise ConfigurationError(f"at most {MAX_FROM_BYTES} bytes", field="--from")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigurationError("not UTF-8 text", field="--from") from None


def require_option(args: argparse.Namespace, name: str, dest: str | None = None) -> str:
    """The value of an option that must be given, on the command line or in ``--from``."""
    value: str | None = getattr(args, dest or name.replace("-", "_"))
    if not value:
        raise ConfigurationError(f"give --{name} (or a '{name}' line in --from)", field=f"--{name}")
    return value


# --- reading files ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One line of the validation report: where (row, column) and why; never the value."""

    row: int
    column: str
    reason: str
    message: str
    #: The row's reference ("" when it has none), so that the report names the signal.
    reference: str = ""


def _cell(value: object) -> str:
    """A spreadsheet cell as text: numbers without a trailing ``.0``, dates as ISO."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def read_table(
    path: Path,
    *,
    file_format: str | None = None,
    sheet: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-empty data rows (with their row numbers) of a CSV or XLSX
    file. A file that cannot be read as one is ``InvalidInput`` naming the file."""
    kind = file_format or ("xlsx" if path.suffix.lower() in _XLSX_SUFFIXES else "csv")
    if kind == "xlsx":
        records = _read_xlsx(path, sheet)
    elif kind == "csv":
        records = _read_csv(path, "\t" if delimiter == "tab" else delimiter, encoding)
    else:
        raise ConfigurationError("the format is csv or xlsx", field="--format")
    try:
        header_row = next(records)
    except StopIteration:
        raise InvalidInput("the file is empty", field=str(path), reason="file.empty") from None
    header = [_cell(v) for v in header_row[1]]
    rows = [(number, cells) for number, cells in records if any(c for c in cells)]
    return header, rows


def _read_xlsx(path: Path, sheet: str | None) -> Iterator[tuple[int, list[str]]]:
    import openpyxl  # imported here: only XLSX imports pay for it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, InvalidFileException, zipfile.BadZipFile, KeyError) as error:
        raise InvalidInput(
            f"cannot read {path} as an XLSX workbook ({type(error).__name__})",
            field=str(path),
            reason="file.unreadable",
        ) from None
    try:
        if sheet is not None:
            if sheet not in workbook.sheetnames:
                raise ConfigurationError(
                    f"no sheet {sheet!r}; the workbook has: {', '.join(workbook.sheetnames)}",
                    field="--sheet",
                )
            worksheet = workbook[sheet]
        else:
            worksheet = workbook.worksheets[0]
        for number, values in enumerate(worksheet.iter_rows(values_only=True), start=1):
            yield number, [_cell(v) for v in values]
    finally:
        workbook.close()


def _read_csv(path: Path, delimiter: str | None, encoding: str) -> Iterator[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise InvalidInput(
            f"{path} is not {encoding} text; give its encoding with --encoding",
            field=str(path),
            reason="file.encoding",
        ) from None
    except OSError as error:
        raise InvalidInput(
            f"cannot read {path}: {error.strerror}", field=str(path), reason="file.unreadable"
        ) from None
    if delimiter is None:
        # The header line decides: the candidate it holds most often (Dutch spreadsheet
        # exports use ';'). csv.Sniffer is thrown off by a single ragged row.
        header_line = text.split("\n", 1)[0]
        delimiter = max(_DELIMITERS, key=header_line.count)
        if not header_line.count(delimiter):
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    number = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise InvalidInput(
                f"{path} line {reader.line_num}: not valid CSV ({error})",
                field=str(path),
                reason="file.csv",
            ) from None
        number += 1
        yield number, [c.strip() for c in cells]


# --- rows to signals ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Which column holds what. ``identifiers`` are ``(type, column)`` pairs; a fixed
    ``category`` applies to every row when there is no ``category_column``."""

    reference_column: str
    identifiers: tuple[tuple[IdentifierType, str], ...]
    category_column: str | None = None
    category: str | None = None
    detail_columns: tuple[str, ...] = ()
    expires_column: str | None = None
    leading_zero_dropped: frozenset[IdentifierType] = frozenset()
    #: Coarse attributes for the regional picture: each row's area (its kind fixed by
    #: ``area_kind``, or read from the code's shape), SBI branch code and month.
    area_column: str | None = None
    area_kind: AreaKind | None = None
    branch_column: str | None = None
    month_column: str | None = None
    #: The long layout (as ``registers export`` writes it): one identifier a row, its type
    #: in ``type_column`` and its value in ``value_column``; the rows of one reference make
    #: one signal. ``identifiers`` is empty then.
    type_column: str | None = None
    value_column: str | None = None
    #: The columns of the row's person's parts (``--map person.postcode=COLUMN``): the
    #: part (``postcode``, ``house_number``, ``gender``) and its column. In the long layout
    #: they are rows of their own (type ``person.postcode``), never columns.
    person_parts: tuple[tuple[str, str], ...] = ()

    def columns(self) -> list[tuple[str, str]]:
        """Every column the mapping reads, with the option that names it."""
        named = [("--reference-column", self.reference_column)]
        named += [("--map", column) for _, column in self.identifiers]
        named += [("--map", column) for _, column in self.person_parts]
        if self.type_column is not None and self.value_column is not None:
            named += [("--type-column", self.type_column), ("--value-column", self.value_column)]
        if self.category_column is not None:
            named.append(("--category-column", self.category_column))
        named += [("--detail-column", column) for column in self.detail_columns]
        if self.expires_column is not None:
            named.append(("--expires-column", self.expires_column))
        for option, column in (
            ("--area-column", self.area_column),
            ("--branch-column", self.branch_column),
            ("--month-column", self.month_column),
        ):
            if column is not None:
                named.append((option, column))
        return named


@dataclass(frozen=True, slots=True)
class PreparedRow:
    """A row that passed local validation, ready to send, and the columns of its parts."""

    row: int
    signal: SignalInput
    identifier_columns: tuple[str, ...]
    #: The row of each identifier (in the long layout the rows of one reference differ).
    identifier_rows: tuple[int, ...] = ()
    #: Where each person part given came from: its row and column.
    part_places: Mapping[str, tuple[int, str]] = dataclasses.field(default_factory=dict)


def _expiry(text: str) -> datetime:
    """A date (the signal expires at the end of it, UTC) or an ISO time with a zone."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("not a date (YYYY-MM-DD)", reason="signal.expiry") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def rows_to_signals(
    header: Sequence[str],
    rows: Sequence[tuple[int, Sequence[str]]],
    mapping: ColumnMapping,
    *,
    today: date | None = None,
) -> tuple[list[PreparedRow], list[Problem]]:
    """Validate rows locally: the signals to send, and a problem per fault of a refused
    row (a row with any fault is not sent at all). In the long layout
    (``mapping.type_column``) the rows of one reference are one signal, sent whole or not
    at all: each of its rows carries one identifier, and the per-signal columns (category,
    details, expiry, area, branch, month) must not differ between them."""
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        positions.setdefault(name, index)
    for option, column in mapping.columns():
        if column not in positions:
            known = ", ".join(repr(h) for h in header if h)
            raise ConfigurationError(f"no column {column!r}; the file has: {known}", field=option)
    if mapping.category_column is None and not mapping.category:
        raise ConfigurationError("give --category-column or a fixed --category", field="--category")

    def cell(column: str, cells: Sequence[str]) -> str:
        index = positions[column]
        return cells[index] if index < len(cells) else ""

    groups: list[list[tuple[int, Sequence[str]]]]
    if mapping.type_column is None:
        groups = [[row] for row in rows]
    else:  # the rows of one reference, in the order of their first row
        by_reference: dict[str, list[tuple[int, Sequence[str]]]] = {}
        groups = []
        for number, cells in rows:
            reference = cell(mapping.reference_column, cells)
            if not reference:  # no reference: a signal (and a refusal) of its own
                groups.append([(number, cells)])
            elif reference in by_reference:
                by_reference[reference].append((number, cells))
            else:
                by_reference[reference] = [(number, cells)]
                groups.append(by_reference[reference])
    prepared: list[PreparedRow] = []
    problems: list[Problem] = []
    for group in groups:
        signal, faults = _one_signal(group, cell, len(header), mapping, today)
        if signal is not None:
            prepared.append(signal)
        problems += faults
    return prepared, problems


def _one_signal(
    group: Sequence[tuple[int, Sequence[str]]],
    cell: Callable[[str, Sequence[str]], str],
    width: int,
    mapping: ColumnMapping,
    today: date | None,
) -> tuple[PreparedRow | None, list[Problem]]:
    """The signal of one row (or, in the long layout, of the rows of one reference), or
    the faults that refuse it: each fault at its row, every row of a refused signal named."""
    from samenloop.node.client import SignalInput
    from samenloop.node.identifiers.normalise import identifier_type, parse

    number, first = group[0]
    faults: list[Problem] = []
    for row, cells in group:
        if len(cells) > width and any(cells[width:]):
            faults.append(
                Problem(
                    row,
                    "*",
                    "row.too_many_cells",
                    f"the row has {len(cells)} cells, the header {width}",
                )
            )
    reference = cell(mapping.reference_column, first)
    if not reference:
        faults.append(
            Problem(
                number,
                mapping.reference_column,
                "signal.reference_missing",
                "the row has no reference",
            )
        )
    agreed: dict[str, str] = {}

    def shared(column: str) -> str:
        """A per-signal column's value: the one its rows give (empty cells aside)."""
        if column not in agreed:
            seen: dict[str, int] = {}
            for row, cells in group:
                if value := cell(column, cells):
                    seen.setdefault(value, row)
            if len(seen) > 1:
                named = " and ".join(str(row) for row in seen.values())
                faults.append(
                    Problem(
                        list(seen.values())[1],
                        column,
                        "signal.rows_differ",
                        f"rows {named} of one reference give different values: a signal has one",
                    )
                )
            agreed[column] = next(iter(seen), "")
        return agreed[column]

    if mapping.category_column is not None:
        category = shared(mapping.category_column)
        if not category:
            faults.append(
                Problem(
                    number,
                    mapping.category_column,
                    "signal.category_missing",
                    "the row has no category",
                )
            )
    else:
        category = mapping.category or ""
    candidates: list[tuple[int, IdentifierType | None, str, str]] = []  # row, type, column, value
    part_cells: list[tuple[int, str, str, str]] = []  # row, part, column, value
    if mapping.type_column is not None and mapping.value_column is not None:
        for row, cells in group:
            type_text = cell(mapping.type_column, cells)
            value = cell(mapping.value_column, cells)
            if not type_text and not value:
                continue
            if (part := PERSON_PARTS.get(type_text.strip().lower())) is not None:
                part_cells.append((row, part, mapping.value_column, value))
                continue
            try:
                kind: IdentifierType | None = identifier_type(type_text)
            except SamenloopError as error:
                message = _naming(error.message, type_text)
                faults.append(Problem(row, mapping.type_column, error.reason, message))
                kind = None
            candidates.append((row, kind, mapping.value_column, value))
    else:
        candidates = [
            (number, kind, column, cell(column, first)) for kind, column in mapping.identifiers
        ]
        part_cells = [
            (number, part, column, cell(column, first)) for part, column in mapping.person_parts
        ]
    identifiers: list[tuple[IdentifierType | str, str]] = []
    columns: list[str] = []
    identifier_rows: list[int] = []
    for row, found_kind, column, value in candidates:
        if found_kind is None:
            continue
        if not value:
            if mapping.type_column is not None:  # a type with no value in its row
                faults.append(
                    Problem(row, column, "signal.identifier_missing", "the row has no value")
                )
            continue
        try:
            parse(
                found_kind,
                value,
                field=column,
                today=today,
                leading_zero_dropped=found_kind in mapping.leading_zero_dropped,
            )
        except SamenloopError as error:
            faults.append(Problem(row, column, error.reason, error.message))
            continue
        identifiers.append((found_kind, value))
        columns.append(column)
        identifier_rows.append(row)
    if not identifiers and not any(p.column in _identifier_columns(mapping) for p in faults):
        faults.append(
            Problem(
                number,
                ", ".join(_identifier_columns(mapping)),
                "signal.identifiers_missing",
                "the row has no identifier",
            )
        )
    given, part_places = _person_parts(part_cells, candidates, faults)
    details = {column: value for column in mapping.detail_columns if (value := shared(column))}
    expires_at: datetime | None = None
    if mapping.expires_column is not None and (text := shared(mapping.expires_column)):
        try:
            expires_at = _expiry(text)
        except InvalidInput as error:
            faults.append(Problem(number, mapping.expires_column, error.reason, error.message))
    coarse = _coarse(number, shared, mapping, faults)
    if faults:
        faulty = {p.row for p in faults}
        others = [row for row, _ in group if row not in faulty]
        if others:  # refused with the rows of its reference: say so at each of them
            named = ", ".join(str(row) for row in sorted(faulty))
            faults += [
                Problem(
                    row,
                    "*",
                    "signal.refused_with_its_rows",
                    f"refused with row{'s' if len(faulty) > 1 else ''} {named} of the same "
                    "reference",
                )
                for row in others
            ]
        faults = [dataclasses.replace(p, reference=reference) for p in faults]
        return None, faults
    signal = SignalInput(
        reference=reference,
        category=category,
        identifiers=tuple(identifiers),
        details=details,
        expires_at=expires_at,
        leading_zero_dropped=mapping.leading_zero_dropped,
        person_parts=given,
        **coarse,
    )
    return (
        PreparedRow(
            row=number,
            signal=signal,
            identifier_columns=tuple(columns),
            identifier_rows=tuple(identifier_rows),
            part_places=part_places,
        ),
        [],
    )


def _person_parts(
    part_cells: Sequence[tuple[int, str, str, str]],
    candidates: Sequence[tuple[int, IdentifierType | None, str, str]],
    faults: list[Problem],
) -> tuple[GivenParts | None, dict[str, tuple[int, str]]]:
    """The person parts of a signal's cells (row, part, column, value; empty cells
    aside), checked: they need exactly one person identifier beside them, a part given
    twice with different values is refused, and each part is read by the node's rules
    with its column named. ``None`` when no part is given."""
    from samenloop.node.identifiers.normalise import IdentifierType
    from samenloop.node.identifiers.person_hits import GivenParts, check_given_parts

    values: dict[str, str] = {}
    places: dict[str, tuple[int, str]] = {}
    cells: dict[str, tuple[int, str]] = {}  # every part's cell, empty or not
    for row, part, column, value in part_cells:
        cells.setdefault(part, (row, column))
        if not value:
            continue
        if part in values and values[part] != value:
            faults.append(
                Problem(
                    row,
                    column,
                    "signal.rows_differ",
                    f"rows {places[part][0]} and {row} of one reference give different "
                    f"person.{part} values: a person has one",
                )
            )
            continue
        values[part] = value
        places.setdefault(part, (row, column))
    if not values:
        return None, {}
    where = sorted(places.values())
    persons = [c for c in candidates if c[1] == IdentifierType.PERSON and c[3]]
    if len(persons) != 1:
        row, column = where[0]
        faults.append(
            Problem(
                row,
                column,
                "person.parts_without_person" if not persons else "person.parts_ambiguous",
                "person parts (postcode, house number, gender) go with a person identifier; "
                "the row has none"
                if not persons
                else f"person parts go with one person identifier; the row has {len(persons)}",
            )
        )
        return None, places
    given = GivenParts(**values)
    # A missing part is named by its (empty) cell, else by the first part given.
    fields = {part: part for part in PERSON_PARTS.values()}
    try:
        check_given_parts(given, fields=fields)
    except SamenloopError as error:
        row, column = places.get(error.field or "") or cells.get(error.field or "", where[0])
        if error.field not in places:  # the part that is missing: say which
            message = f"{error.message} (person.{error.field} is not given)"
        else:
            message = error.message
        faults.append(Problem(row, column, error.reason, message))
        return None, places
    return given, places


def _coarse(
    number: int, cell: Callable[[str], str], mapping: ColumnMapping, faults: list[Problem]
) -> dict[str, Any]:
    """A row's coarse attributes, checked here so the report names the column; an empty
    cell leaves the attribute to the node (area from the address, month of today)."""
    from samenloop.node.identifiers.attributes import check_area, check_branch, parse_month

    found: dict[str, Any] = {}
    if mapping.area_column is not None and (text := cell(mapping.area_column)):
        try:
            kind, code = check_area(mapping.area_kind, text, field=mapping.area_column)
        except InvalidInput as error:
            faults.append(Problem(number, mapping.area_column, error.reason, error.message))
        else:
            found.update(area_kind=kind, area_code=code)
    if mapping.branch_column is not None and (text := cell(mapping.branch_column)):
        try:
            found["branch"] = check_branch(text, field=mapping.branch_column)
        except InvalidInput as error:
            faults.append(Problem(number, mapping.branch_column, error.reason, error.message))
    if mapping.month_column is not None and (text := cell(mapping.month_column)):
        try:
            found["month"] = parse_month(text, field=mapping.month_column)
        except InvalidInput as error:
            faults.append(Problem(number, mapping.month_column, error.reason, error.message))
    return found


def _identifier_columns(mapping: ColumnMapping) -> list[str]:
    if mapping.type_column is not None and mapping.value_column is not None:
        return [mapping.value_column, mapping.type_column]
    return [column for _, column in mapping.identifiers]


def _row_of(field: str, row: PreparedRow) -> int:
    """The file's row for a field the node named: an identifier's own row (the long layout
    has one a row), else the signal's first."""
    head = field.split(".", 1)[0]
    if ".person_parts." in field and (part := field.rsplit(".", 1)[1]) in row.part_places:
        return row.part_places[part][0]
    index = head.removeprefix("identifiers[").removesuffix("]")
    if (
        head.startswith("identifiers[")
        and index.isdigit()
        and int(index) < len(row.identifier_rows)
    ):
        return row.identifier_rows[int(index)]
    return row.row


def _column_of(field: str, row: PreparedRow, mapping: ColumnMapping) -> str:
    """The file's column for a field the node named in a row (``identifiers[1].value``)."""
    head = field.split(".", 1)[0]
    if head == "reference":
        return mapping.reference_column
    if head == "category":
        return mapping.category_column or "--category"
    if ".person_parts." in field and (part := field.rsplit(".", 1)[1]) in row.part_places:
        return row.part_places[part][1]
    if head.startswith("identifiers["):
        index = head[len("identifiers[") : -1]
        if index.isdigit() and int(index) < len(row.identifier_columns):
            return row.identifier_columns[int(index)]
        return ", ".join(row.identifier_columns)
    if head == "identifiers":
        return ", ".join(row.identifier_columns)
    if head.startswith("details[") and head.endswith("]"):
        return head[len("details[") : -1]
    if head == "expires_at":
        return mapping.expires_column or "(retention)"
    if head == "attributes":
        part = field.split(".")[1] if field.count(".") else ""
        column = {
            "area": mapping.area_column,
            "branch": mapping.branch_column,
            "month": mapping.month_column,
        }.get(part)
        return column or field
    return field or "*"


# --- signal commands ------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signal import``, ``signal add`` and ``signal withdraw``."""
    parser = subparsers.add_parser(
        "signal",
        help="add, import and withdraw this partner's signals",
        description="Add, import and withdraw signals at the partner's own node.",
    )
    commands = parser.add_subparsers(dest="signal_command", metavar="SUBCOMMAND", required=True)

    importing = commands.add_parser(
        "import",
        help="import signals from a CSV or XLSX file, with a validation report",
        description=(
            "Import signals from a CSV or XLSX file whose first row names the columns. "
            "Rows are validated locally first; valid rows are stored (each whole), "
            "refused rows are reported with row, column and reason. Exit 0 if every "
            "row was imported, 1 if some were refused."
        ),
        epilog=(
            "examples: samenloop signal import dossiers.xlsx --map 'bsn=BSN nummer' "
            "--map kvk=KvK --reference-column Dossier --category vastgoedmisbruik "
            "--leading-zero-dropped bsn --report refused.csv; "
            "samenloop signal import export.csv --type-column type --value-column value "
            "--reference-column reference --category-column category"
        ),
    )
    importing.add_argument("file", type=Path, metavar="FILE", help="a .csv or .xlsx file")
    importing.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TYPE=COLUMN",
        help="a column holding identifiers of TYPE (repeatable); person.postcode, "
        "person.house_number and person.gender name columns of the row's person's parts "
        "(postcode with house number); or the long layout:",
    )
    importing.add_argument(
        "--type-column",
        metavar="COLUMN",
        help="the long layout ('registers export'): one identifier a row, its TYPE in this "
        "column and its value in --value-column; the rows of one reference are one signal "
        "(a row of type person.postcode, person.house_number or person.gender: a part of "
        "its person)",
    )
    importing.add_argument(
        "--value-column", metavar="COLUMN", help="with --type-column: the identifier's value"
    )
    importing.add_argument(
        "--reference-column", required=True, metavar="COLUMN", help="the partner's reference"
    )
    category = importing.add_mutually_exclusive_group(required=True)
    category.add_argument("--category-column", metavar="COLUMN", help="each row's category")
    category.add_argument("--category", help="one category for every row")
    importing.add_argument(
        "--detail-column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="a column kept as a detail of the signal, by its name (repeatable)",
    )
    importing.add_argument(
        "--expires-column", metavar="COLUMN", help="each row's expiry date (YYYY-MM-DD)"
    )
    importing.add_argument(
        "--area-column",
        metavar="COLUMN",
        help="each row's area: a postcode-4 or a CBS wijk/buurt code "
        "(default: postcode-4 from an address identifier)",
    )
    importing.add_argument(
        "--area-kind",
        choices=AREA_KINDS,
        help="the kind of code in --area-column (default: by each code's shape)",
    )
    importing.add_argument(
        "--branch-column", metavar="COLUMN", help="each row's branch: an SBI code (5610)"
    )
    importing.add_argument(
        "--month-column",
        metavar="COLUMN",
        help="each row's month, YYYY-MM or a date (default: the month it is imported)",
    )
    importing.add_argument(
        "--leading-zero-dropped",
        action="append",
        default=[],
        metavar="TYPE",
        help=(
            "the file dropped leading zeros of this type (a number column): restore one "
            "(bsn, rsin, kvk, bag; 'all' for each of them; repeatable)"
        ),
    )
    importing.add_argument("--format", choices=("csv", "xlsx"), help="default: by file suffix")
    importing.add_argument("--sheet", help="XLSX: the sheet to read (default: the first)")
    importing.add_argument(
        "--delimiter",
        help="CSV: the delimiter, or 'tab' (default: the one the header row uses most)",
    )
    importing.add_argument("--encoding", default="utf-8-sig", help="CSV: the text encoding")
    importing.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK, help="rows per call to the node"
    )
    importing.add_argument(
        "--validate-only", action="store_true", help="validate every row; store nothing"
    )
    importing.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write the validation report to this file (.xlsx as a workbook, else CSV)",
    )
    importing.add_argument("--json", action="store_true", help="print the outcome as JSON")
    add_node_options(importing)
    importing.set_defaults(func=_import)

    add = commands.add_parser(
        "add",
        help="add one signal",
        description="Add one signal. Give its identifiers and details with --from FILE, "
        "or --from - to read them from standard input: one 'id TYPE=VALUE' or "
        "'detail NAME=VALUE' line each. As arguments (--id TYPE=VALUE, --type TYPE "
        f"--value VALUE, --detail NAME=VALUE) they work too, but {ARGUMENTS_ARE_VISIBLE}.",
        epilog="example: samenloop signal add --reference DOSSIER-17 --category "
        "vastgoedmisbruik --from signal.txt  (signal.txt, 0600: 'id bsn=123456782', "
        "'detail naam=...')",
    )
    add.add_argument("--reference", required=True, help="the partner's own reference")
    add.add_argument("--category", required=True, help="the signal's category")
    visible = "; visible to other accounts, use --from"
    add.add_argument(
        "--id",
        action="append",
        default=[],
        dest="ids",
        metavar="TYPE=VALUE",
        help=f"an identifier (repeatable{visible}); person.postcode, person.house_number "
        "and person.gender: parts of the person identifier",
    )
    add.add_argument("--type", help="the type of one identifier (with --value)")
    add.add_argument("--value", help=f"the value of one identifier (with --type{visible})")
    add.add_argument(
        "--detail",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a detail field (repeatable{visible})",
    )
    add_from_option(
        add,
        {"id": "ids", "type": "type", "value": "value", "detail": "detail"},
        example="id bsn=123456782",
    )
    add.add_argument("--expires", metavar="DATE", help="expiry date (default: the retention)")
    add.add_argument(
        "--leading-zero-dropped",
        action="store_true",
        help="restore one dropped leading zero (bsn, rsin, kvk, bag)",
    )
    add.add_argument("--json", action="store_true", help="print the stored signal as JSON")
    add_node_options(add)
    add.set_defaults(func=_add)

    withdraw = commands.add_parser("withdraw", help="withdraw a signal by its reference")
    withdraw.add_argument("reference", metavar="REFERENCE")
    withdraw.add_argument("--reason", default="", help="why, for the audit log")
    withdraw.add_argument("--officer", default="", help="who, for the audit log")
    withdraw.add_argument("--json", action="store_true", help="print the signal as JSON")
    add_node_options(withdraw)
    withdraw.set_defaults(func=_withdraw)


def _pairs(values: Sequence[str], option: str, form: str = "NAME=VALUE") -> list[tuple[str, str]]:
    """``NAME=VALUE`` options as pairs; a malformed one is refused in the help's words."""
    pairs = []
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"write {option} {form}", field=option)
        pairs.append((name.strip(), value))
    return pairs


def _option_type(name: str, option: str) -> IdentifierType:
    from samenloop.node.identifiers.normalise import identifier_type

    try:
        return identifier_type(name)
    except SamenloopError as error:
        raise ConfigurationError(
            _naming(error.message, name), field=option, reason=error.reason
        ) from None


def _naming(message: str, name: str) -> str:
    """``unknown identifier type; known types: ...`` with the type the user wrote in it
    (a type name from an option or a type column, never an identifier value)."""
    return message.replace("unknown identifier type", f"unknown identifier type {name!r}", 1)


def _mapping(args: argparse.Namespace) -> ColumnMapping:
    from samenloop.node.client import RESTORABLE_TYPES
    from samenloop.node.signals.models import AreaKind

    maps = _pairs(args.map, "--map", "TYPE=COLUMN")
    identifiers = tuple(
        (_option_type(kind, "--map"), column.strip())
        for kind, column in maps
        if _person_part(kind) is None
    )
    person_parts = tuple(
        (part, column.strip()) for kind, column in maps if (part := _person_part(kind)) is not None
    )
    if person_parts:
        _check_part_maps(person_parts, identifiers, args.type_column is not None)
    if (args.type_column is None) != (args.value_column is None):
        missing = "--value-column" if args.value_column is None else "--type-column"
        raise ConfigurationError(
            "the long layout takes both --type-column and --value-column", field=missing
        )
    if identifiers and args.type_column is not None:
        raise ConfigurationError(
            "give --map TYPE=COLUMN (one column per type) or --type-column and --value-column "
            "(one identifier a row), not both",
            field="--map",
        )
    if not identifiers and args.type_column is None and not person_parts:
        raise ConfigurationError(
            "give --map TYPE=COLUMN (repeatable) or --type-column and --value-column",
            field="--map",
        )
    restored: set[IdentifierType] = set()
    for name in args.leading_zero_dropped:
        if name.strip().lower() == "all":
            restored |= RESTORABLE_TYPES
            continue
        kind = _option_type(name, "--leading-zero-dropped")
        if kind not in RESTORABLE_TYPES:
            raise ConfigurationError(
                f"leading zeros are restored for {', '.join(sorted(RESTORABLE_TYPES))} only",
                field="--leading-zero-dropped",
            )
        restored.add(kind)
    return ColumnMapping(
        reference_column=args.reference_column,
        identifiers=identifiers,
        category_column=args.category_column,
        category=args.category,
        detail_columns=tuple(args.detail_column),
        expires_column=args.expires_column,
        leading_zero_dropped=frozenset(restored),
        area_column=args.area_column,
        area_kind=None if args.area_kind is None else AreaKind(args.area_kind),
        branch_column=args.branch_column,
        month_column=args.month_column,
        type_column=args.type_column,
        value_column=args.value_column,
        person_parts=person_parts,
    )


def _person_part(name: str) -> str | None:
    """The person part a ``--map`` or ``--id`` type names (``person.postcode``), or
    ``None`` for an identifier type. An unknown ``person.`` name is refused, listing the
    parts."""
    text = name.strip().lower()
    if not text.startswith("person."):
        return None
    if text not in PERSON_PARTS:
        raise ConfigurationError(
            f"unknown person part {name.strip()!r}; the parts are: {', '.join(PERSON_PARTS)}",
            field="--map",
            reason="person.unknown_part",
        )
    return PERSON_PARTS[text]


def _check_part_maps(
    person_parts: Sequence[tuple[str, str]],
    identifiers: Sequence[tuple[IdentifierType, str]],
    long_layout: bool,
) -> None:
    """``--map person.PART=COLUMN`` goes with ``--map person=COLUMN`` (one), once a part,
    postcode with house number; the long layout has its parts in rows of their own."""
    from samenloop.node.identifiers.normalise import IdentifierType

    if long_layout:
        raise ConfigurationError(
            "in the long layout person parts are rows of their own, of type person.postcode, "
            "person.house_number or person.gender: not --map columns",
            field="--map",
        )
    parts = [part for part, _ in person_parts]
    twice = sorted({part for part in parts if parts.count(part) > 1})
    if twice:
        raise ConfigurationError(f"person.{twice[0]} is mapped twice", field="--map")
    persons = sum(1 for kind, _ in identifiers if kind is IdentifierType.PERSON)
    if persons != 1:
        raise ConfigurationError(
            "person parts go with one person column: give --map person=COLUMN"
            if not persons
            else f"person parts go with one person column; --map names {persons}",
            field="--map",
            reason="person.parts_without_person" if not persons else "person.parts_ambiguous",
        )
    if ("postcode" in parts) != ("house_number" in parts):
        missing = "house_number" if "postcode" in parts else "postcode"
        raise ConfigurationError(
            f"postcode and house number go together: give --map person.{missing}=COLUMN too",
            field="--map",
            reason="person.address",
        )


def _check_category(args: argparse.Namespace) -> None:
    """A ``--category`` the covenant does not list is refused once, before the file is
    read (it would refuse every row): the node's status names the covenant's categories."""
    with open_client(args) as client:
        listed = client.status().categories
    if listed and args.category not in listed:
        raise ConfigurationError(
            f"{printable(args.category)!r} is not a category of this covenant; use one of: "
            f"{', '.join(printable(c) for c in listed)}",
            field="--category",
            reason="signal.unknown_category",
        )


def _import(args: argparse.Namespace) -> int:
    mapping = _mapping(args)
    if args.category is not None:
        _check_category(args)
    header, rows = read_table(
        args.file,
        file_format=args.format,
        sheet=args.sheet,
        delimiter=args.delimiter,
        encoding=args.encoding,
    )
    prepared, problems = rows_to_signals(header, rows, mapping)
    # The long layout joins rows: say how many signals they were (a reference a signal;
    # a row without one is a refused signal of its own).
    signals = len(prepared) + len({p.reference or f"row {p.row}" for p in problems})
    imported = unchanged = 0
    if prepared:
        with open_client(args) as client, _progress(len(prepared)) as advance:
            report = client.import_signals(
                [p.signal for p in prepared],
                validate_only=args.validate_only,
                chunk_size=args.chunk_size,
                on_progress=advance,
            )
        imported, unchanged = report.imported, report.unchanged
        for result in report.results:
            row = prepared[result.row]
            problems += [
                Problem(
                    _row_of(e.field, row),
                    _column_of(e.field, row, mapping),
                    e.reason,
                    e.message,
                    row.signal.reference,
                )
                for e in result.errors
            ]
    problems.sort(key=lambda p: p.row)
    refused = len({p.row for p in problems})
    if args.report is not None:
        _write_report(args.report, problems)
    if args.validate_only:
        valid = len(rows) - refused
        imported = unchanged = 0
    else:
        valid = imported + unchanged
    # In the long layout the rows are not the signals: the summary says which it counts.
    counted = (f"{len(rows)} rows ({signals} signals)", " signals", " rows")
    if mapping.type_column is None:
        counted = (f"{len(rows)} rows", "", "")
    _print_outcome(args, counted, len(rows), valid, imported, unchanged, refused, problems)
    return 0 if refused == 0 else 1


class _ProgressBar:
    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=terminal.console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("rows", total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._progress.start()
        return self.advance

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


def _progress(total: int) -> _ProgressBar:
    return _ProgressBar(total)


def _write_report(path: Path, problems: Sequence[Problem]) -> None:
    from samenloop.policies import spreadsheet

    spreadsheet.write_table(
        path,
        ["row", "reference", "column", "reason", "message"],
        [[p.row, p.reference, p.column, p.reason, p.message] for p in problems],
        field="--report",
    )


def _print_outcome(
    args: argparse.Namespace,
    counted: tuple[str, str, str],
    rows: int,
    valid: int,
    imported: int,
    unchanged: int,
    refused: int,
    problems: Sequence[Problem],
) -> None:
    from rich.table import Table

    if args.json:
        print(
            terminal.dumps(
                {
                    "rows": rows,
                    "valid": valid,
                    "imported": imported,
                    "unchanged": unchanged,
                    "refused": refused,
                    "validate_only": args.validate_only,
                    "problems": [
                        {
                            "row": p.row,
                            "reference": p.reference,
                            "column": p.column,
                            "reason": p.reason,
                            "message": p.message,
                        }
                        for p in problems
                    ],
                },
                indent=2,
            )
        )
        return
    console = terminal.console()
    total, signals, rows_ = counted
    if args.validate_only:
        console.print(f"{total}: {valid}{rows_} valid, {refused}{rows_} refused (nothing stored)")
    else:
        console.print(
            f"{total}: {imported}{signals} imported, {unchanged} unchanged, "
            f"{refused}{rows_} refused"
        )
    if problems:
        table = Table(title="validation report")
        for name in ("row", "reference", "column", "reason", "message"):
            table.add_column(name, overflow="fold")
        for p in problems:
            table.add_row(
                str(p.row),
                printable(p.reference),
                printable(p.column),
                p.reason,
                printable(p.message),
            )
        terminal.show_table(console, table)
    if args.report is not None:
        console.print(f"report written to {printable(str(args.report))}")


def _signal_json(signal: Signal) -> dict[str, Any]:
    return {
        "signal_id": signal.signal_id,
        "reference": signal.reference,
        "category": signal.category,
        "state": signal.state.value,
        "identifier_types": [i.type.value for i in signal.identifiers],
        "details": sorted(signal.details),
        "created_at": _iso(signal.created_at),
        "expires_at": _iso(signal.expires_at),
    }


def _add(args: argparse.Namespace) -> int:
    if args.ids or args.value is not None or args.detail:
        print(
            f"samenloop: warning: {ARGUMENTS_ARE_VISIBLE}: give identifiers and details "
            "with --from FILE or --from - (standard input)",
            file=sys.stderr,
        )
    take_from(args)
    identifiers: list[tuple[IdentifierType | str, str]] = []
    parts: dict[str, str] = {}
    for kind, value in _pairs(args.ids, "--id"):
        try:
            part = _person_part(kind)
        except ConfigurationError as error:
            raise ConfigurationError(error.message, field="--id", reason=error.reason) from None
        if part is None:
            identifiers.append((_option_type(kind, "--id"), value))
        elif part in parts:
            raise ConfigurationError(f"person.{part} is given twice", field="--id")
        else:
            parts[part] = value
    if (args.type is None) != (args.value is None):
        raise ConfigurationError("give --type and --value together", field="--type")
    if args.type is not None:
        identifiers.append((_option_type(args.type, "--type"), args.value))
    if not identifiers:
        raise ConfigurationError("give an identifier: --id TYPE=VALUE", field="--id")
    expires_at = None
    if args.expires is not None:
        try:
            expires_at = _expiry(args.expires)
        except InvalidInput as error:
            raise ConfigurationError(error.message, field="--expires") from None
    person_parts = _given_parts(parts, identifiers)
    with open_client(args) as client:
        signal = client.add_signal(
            args.reference,
            args.category,
            identifiers,
            details=dict(_pairs(args.detail, "--detail")),
            expires_at=expires_at,
            leading_zero_dropped=bool(args.leading_zero_dropped),
            person_parts=person_parts,
        )
    if args.json:
        print(terminal.dumps(_signal_json(signal), indent=2))
    else:
        types = ", ".join(i.type.value for i in signal.identifiers)
        print(
            f"signal {signal.signal_id} ({printable(signal.reference)}): {types}; "
            f"expires {_iso(signal.expires_at)}"
        )
    return 0


def _given_parts(
    parts: Mapping[str, str], identifiers: Sequence[tuple[IdentifierType | str, str]]
) -> GivenParts | None:
    """``signal add``'s ``--id person.PART=VALUE``: checked here, naming the option and the
    part (never the value), then sent with the one person identifier."""
    from samenloop.node.identifiers.normalise import IdentifierType
    from samenloop.node.identifiers.person_hits import GivenParts, check_given_parts

    if not parts:
        return None
    persons = sum(1 for kind, _ in identifiers if kind is IdentifierType.PERSON)
    if persons != 1:
        raise ConfigurationError(
            "person parts go with a person identifier: give --id person=NAME;DATE"
            if not persons
            else f"person parts go with one person identifier; there are {persons}",
            field="--id",
            reason="person.parts_without_person" if not persons else "person.parts_ambiguous",
        )
    given = GivenParts(**parts)
    try:
        check_given_parts(given, fields={p: f"--id person.{p}" for p in PERSON_PARTS.values()})
    except SamenloopError as error:
        raise ConfigurationError(
            f"{error.field}: {error.message}", field="--id", reason=error.reason
        ) from None
    return given


def _withdraw(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        signal = client.withdraw_signal(args.reference, reason=args.reason, officer=args.officer)
    if args.json:
        print(terminal.dumps(_signal_json(signal), indent=2))
    else:
        print(f"signal {signal.signal_id} ({printable(signal.reference)}): {signal.state.value}")
    return 0


# --- hits --------------------------------------------------------------------------------------


def register_hits(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hits list`` and ``hits watch``."""
    parser = subparsers.add_parser(
        "hits",
        help="the hits this partner's node received",
        description="Show the hits (samenloop) the partner's node received from the broker.",
    )
    commands = parser.add_subparsers(dest="hits_command", metavar="SUBCOMMAND", required=True)

    listing = commands.add_parser("list", help="list hits, newest change first")
    listing.add_argument("--state", choices=HIT_STATES, help="only these")
    listing.add_argument("--limit", type=int, help="at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_node_options(listing)
    listing.set_defaults(func=_list_hits)

    watch = commands.add_parser(
        "watch",
        help="print hit changes as they arrive (Ctrl-C to stop)",
        description="Print every hit change after --after: the backlog first, then each "
        "change as the node accepts it, until Ctrl-C, --count changes or, with "
        "--until-caught-up, the end of the backlog (exit 0).",
    )
    watch.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="SEQUENCE",
        help="start after this sequence number (default: from the first hit)",
    )
    watch.add_argument(
        "--epoch",
        type=int,
        default=0,
        metavar="FEED_EPOCH",
        help="the feed epoch of --after, as printed with it (after a restore of the node)",
    )
    watch.add_argument("--count", type=int, help="stop after this many changes")
    watch.add_argument(
        "--until-caught-up",
        action="store_true",
        help="stop once the changes the node holds now are printed (for scripts: resume "
        "the next run after the last sequence printed)",
    )
    watch.add_argument("--json", action="store_true", help="print one JSON object per change")
    add_node_options(watch)
    watch.set_defaults(func=_watch_hits)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def hit_to_json(hit: Hit) -> dict[str, Any]:
    """A hit as a JSON object (bytes as hex)."""
    shown: dict[str, Any] = {
        "group_id": hit.group_hex,
        "revision": hit.revision,
        "state": hit.state.value,
        "last_kind": hit.last_kind.value,
        "party_count": hit.party_count,
        "own_signals": [
            {
                "signal_ref": own.signal_ref.hex(),
                "signal_id": own.signal_id,
                "reference": own.reference,
                "category": own.category,
                "identifier_type": None
                if own.identifier_type is None
                else own.identifier_type.value,
                "person_kind": own.person_kind,
            }
            for own in hit.own_signals
        ],
        "probable_hits": [
            {
                "signal_id": p.signal_id,
                "party": p.party,
                "agreeing_kinds": list(p.agreeing_kinds),
                "score": round(p.score, 1),
                "disclosable": p.disclosable,
            }
            for p in hit.probable_hits
        ],
        "members": [
            {
                "party": member.party,
                "role": member.role,
                "categories": list(member.categories),
                "unknown_categories": member.unknown_categories,
                "signal_refs": [ref.hex() for ref in member.signal_refs],
            }
            for member in hit.members
        ],
        "first_seen": _iso(hit.first_seen),
        "last_seen": _iso(hit.last_seen),
        "received_at": _iso(hit.received_at),
    }
    if hit.sequence is not None:
        shown = {
            "sequence": hit.sequence,
            "feed_epoch": hit.feed_epoch,
            "restated": hit.restated,
            **shown,
        }
    return shown


#: How a category another member sealed but the covenant does not list is shown.
UNKNOWN_CATEGORY: Final = "(unknown category)"


def _unknown(count: int) -> list[str]:
    if count <= 1:
        return [UNKNOWN_CATEGORY] * count
    return [f"({count} unknown categories)"]


def _own_type(own: OwnSignal) -> str:
    if own.person_kind:
        return f" ({printable(own.person_kind)})"
    return f" ({own.identifier_type.value})" if own.identifier_type else ""


def _probable(hit: Hit) -> list[str]:
    """A probable person hit as ``probable 41.7 bits with woco: phonetic_date,
    names_year_month`` (kinds without their ``person.`` prefix)."""
    return [
        f"probable {p.score:.1f} bits"
        + (f" with {printable(p.party)}" if p.party else "")
        + ("" if p.disclosable else " (not enough to disclose)")
        + ": "
        + ", ".join(printable(k.removeprefix("person.")) for k in p.agreeing_kinds)
        for p in hit.probable_hits
    ]


def _own(hit: Hit) -> str:
    return "\n".join(
        [
            f"{printable(own.reference) if own.reference else own.signal_ref.hex()[:8]}"
            + _own_type(own)
            for own in hit.own_signals
        ]
        + _probable(hit)
    )


def _others(hit: Hit) -> str:
    lines = []
    for member in hit.members:
        who = printable(member.party or member.role or "(hidden)")
        if member.party and member.role:
            who = f"{printable(member.party)} ({printable(member.role)})"
        shown = [printable(c) for c in member.categories]
        shown += _unknown(member.unknown_categories)
        lines.append(who + (f": {', '.join(shown)}" if shown else ""))
    return "\n".join(lines)


def _hits_table(hits: Sequence[Hit]) -> Table:
    from rich.table import Table

    table = Table(title=f"{len(hits)} hit{'s' if len(hits) != 1 else ''}")
    for name in ("group", "state", "rev", "parties", "own signals", "others", "last seen"):
        table.add_column(name, overflow="fold")
    for hit in hits:
        table.add_row(
            hit.group_hex[:12],
            f"{hit.state.value} ({hit.last_kind.value})",
            str(hit.revision),
            "" if hit.party_count is None else str(hit.party_count),
            _own(hit),
            _others(hit),
            hit.last_seen.strftime("%Y-%m-%d %H:%M") if hit.last_seen else "",
        )
    return table


def _list_hits(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        hits = client.hits(args.state, limit=args.limit)
    if args.json:
        print(terminal.dumps([hit_to_json(h) for h in hits], indent=2))
    else:
        terminal.show_table(terminal.console(), _hits_table(hits))
    return 0


def _watch_hits(args: argparse.Namespace) -> int:
    seen = 0
    console = terminal.console()
    told = False
    with (
        open_client(args) as client,
        client.watch_hits(args.after, args.epoch, until_caught_up=args.until_caught_up) as stream,
    ):
        if args.count is not None and args.count <= 0:
            return 0
        for hit in stream:
            if stream.restored is not None and not told:
                told = True
                print(
                    f"the node was restored from a backup: feed epoch {stream.restored.feed_epoch},"
                    f" resumed after {stream.restored.resumed_after}; a change marked restated"
                    " may repeat one seen before",
                    file=sys.stderr,
                )
            if args.json:
                print(terminal.dumps(hit_to_json(hit)), flush=True)
            else:
                others = _others(hit).replace("\n", "; ")
                console.print(
                    f"[{hit.sequence}] {hit.group_hex[:12]} {hit.state.value} "
                    f"{hit.last_kind.value} rev {hit.revision}"
                    f"{' (restated)' if hit.restated else ''}: "
                    f"{_own(hit).replace(chr(10), ', ')} | {others}"
                )
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0
