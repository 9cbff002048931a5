"""``samenloop identifier``: check identifiers before import, list the types.

``samenloop identifier check TYPE VALUE`` prints the canonical form and exits 0,
or lets the error reach the CLI's one error handler (message on stderr, exit 1).
With ``--json`` it prints ``{"type", "canonical"}`` or ``{"field", "reason",
"message"}`` on stdout instead; the exit code is the same as without it.
"""

from __future__ import annotations

import argparse
import json

from samenloop.node.identifiers import DESCRIPTIONS, IdentifierType, parse
from samenloop.policies.cli import exit_code_for
from samenloop.policies.errors import SamenloopError


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
            "Put '--' before a VALUE that starts with a dash."
        ),
        epilog="example: samenloop identifier check address '1234 ab 12-a'",
    )
    check.add_argument("type", metavar="TYPE", help="identifier type (see 'identifier types')")
    check.add_argument(
        "value", metavar="VALUE", help="the identifier; for person: 'NAME;DATE OF BIRTH'"
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=check_command)

    types = commands.add_parser("types", help="list the identifier types")
    types.add_argument("--json", action="store_true", help="print the list as JSON")
    types.set_defaults(func=types_command)


def check_command(args: argparse.Namespace) -> int:
    """Handler of ``identifier check``."""
    if not args.json:
        print(parse(args.type, args.value).canonical)
        return 0
    try:
        identifier = parse(args.type, args.value)
    except SamenloopError as error:
        print(json.dumps({"field": error.field, "reason": error.reason, "message": error.message}))
        return exit_code_for(error)
    print(json.dumps({"type": identifier.type.value, "canonical": identifier.canonical}))
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
