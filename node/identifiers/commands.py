"""``samenloop identifier``: check identifiers before import, list the types.

``samenloop identifier check TYPE VALUE`` prints the canonical form and exits 0,
or lets the error reach the CLI's one error handler (message on stderr, exit 1).
With ``--json`` it prints ``{"type", "canonical"}`` or ``{"field", "reason",
"message"}`` on stdout instead; the exit code is the same as without it.

``samenloop identifier check TYPE -`` reads the values from standard input, one
per line, so that they stay out of shell history and the process list, and
prints one line per value: the canonical form, or ``error: <reason>: <message>``
(with ``--json``: one JSON object per line, with the line number). It exits 0
only if every value is valid; a summary of the refusals goes to stderr.

``--leading-zero-dropped`` says the values come from a source that dropped
leading zeros (a spreadsheet column stored as numbers): one missing leading zero
is then restored for bsn, rsin, kvk and bag instead of refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Final, TextIO

from samenloop.node.identifiers.normalise import (
    DESCRIPTIONS,
    IdentifierType,
    identifier_type,
    parse,
)
from samenloop.policies.cli import exit_code_for
from samenloop.policies.errors import InvalidIdentifier, InvalidInput, SamenloopError

#: The VALUE that means: read the values from standard input.
STDIN: Final = "-"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``identifier check`` and ``identifier types`` to the ``samenloop`` command."""
    parser = subparsers.add_parser(
        "identifier",
        help="check identifiers and show their canonical form",
        description="Check identifiers the way the node normalises them before tokenising.",
    )
    commands = parser.add_subparsers(dest="identifier_command", metavar="SUBCOMMAND")
    commands.required = True

    check = commands.add_parser(
        "check",
        help="print the canonical form of VALUE, or why it is refused",
        description=(
            "Print the canonical form of VALUE (exit 0) or the rule it breaks (exit 1). "
            "With '-' as VALUE, read one value per line from standard input and print one "
            "line per value; this keeps real identifiers out of shell history and the "
            "process list. Put '--' before a VALUE that starts with a dash."
        ),
        epilog=(
            "examples: samenloop identifier check address '1234 ab 12-a'; "
            "samenloop identifier check --leading-zero-dropped bsn - < bsn-column.txt"
        ),
    )
    check.add_argument("type", metavar="TYPE", help="identifier type (see 'identifier types')")
    check.add_argument(
        "value",
        metavar="VALUE",
        help="the identifier, or '-' to read one per line from standard input (for real "
        "data: an argument is visible to every account on this host while the command runs, "
        "/proc/PID/cmdline, and stays in the shell's history); for person: 'NAME;DATE OF BIRTH'",
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument(
        "--leading-zero-dropped",
        action="store_true",
        help="the values come from a spreadsheet column that dropped leading zeros: restore "
        "one missing leading zero (bsn, rsin, kvk, bag) instead of refusing the value",
    )
    check.set_defaults(func=check_command)

    types = commands.add_parser("types", help="list the identifier types")
    types.add_argument("--json", action="store_true", help="print the list as JSON")
    types.set_defaults(func=types_command)


def check_command(args: argparse.Namespace) -> int:
    """Handler of ``identifier check``."""
    zero_dropped: bool = args.leading_zero_dropped
    if args.value == STDIN:
        return _check_lines(args.type, sys.stdin, as_json=args.json, zero_dropped=zero_dropped)
    if not args.json:
        print(parse(args.type, args.value, leading_zero_dropped=zero_dropped).canonical)
        return 0
    try:
        identifier = parse(args.type, args.value, leading_zero_dropped=zero_dropped)
    except SamenloopError as error:
        print(json.dumps({"field": error.field, "reason": error.reason, "message": error.message}))
        return exit_code_for(error)
    print(json.dumps({"type": identifier.type.value, "canonical": identifier.canonical}))
    return 0


def _check_lines(type_name: str, lines: TextIO, *, as_json: bool, zero_dropped: bool) -> int:
    """Check one value per line of ``lines``; print one result line per value."""
    try:
        kind = identifier_type(type_name)
    except SamenloopError as error:
        if not as_json:
            raise
        print(json.dumps({"field": error.field, "reason": error.reason, "message": error.message}))
        return exit_code_for(error)
    count = 0
    refused: InvalidIdentifier | None = None
    refusals = 0
    for count, line in enumerate(lines, start=1):
        value = line.rstrip("\r\n")
        try:
            identifier = parse(kind, value, leading_zero_dropped=zero_dropped)
        except InvalidIdentifier as error:
            refused = error
            refusals += 1
            if as_json:
                result = {"line": count, "field": error.field, "reason": error.reason}
                print(json.dumps({**result, "message": error.message}))
            else:
                print(f"error: {error.reason}: {error.message}")
            continue
        if as_json:
            print(
                json.dumps({"line": count, "type": kind.value, "canonical": identifier.canonical})
            )
        else:
            print(identifier.canonical)
    if count == 0:
        raise InvalidInput("no values on standard input (expected one per line)", field="value")
    if refused is not None:
        print(f"samenloop: error: {refusals} of {count} values refused", file=sys.stderr)
        return exit_code_for(refused)
    return 0


def types_command(args: argparse.Namespace) -> int:
    """Handler of ``identifier types``."""
    if args.json:
        print(json.dumps({kind.value: DESCRIPTIONS[kind] for kind in IdentifierType}, indent=2))
        return 0
    width = max(len(kind.value) for kind in IdentifierType)
    for kind in IdentifierType:
        print(f"{kind.value:<{width}}  {DESCRIPTIONS[kind]}")
    return 0
