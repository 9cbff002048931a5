"""The ``samenloop`` command: one console script, subcommands per role.

Each role registers its own subcommands through the ``samenloop.commands``
entry-point group (see ``pyproject.toml``), so this core never imports the
node or the broker. This is also the one place where errors become messages
and exit codes; a message can quote another party's or a file's text, so it is
printed through :func:`~samenloop.policies.terminal.printable`. Every command's
process gets its owner-only umask here (files 0600, directories 0700:
databases, keys, reports and exports hold raw data or secrets).

The rule for commands: building the parser imports argparse and no more
-------------------------------------------------------------------------
``samenloop --help`` loads every role's ``register``; ``identifier check`` loads
one. Either must not pay for the broker, SQLAlchemy, Alembic, numpy, grpc or rich
(a test, ``tests/test_cli_imports.py``, counts the modules a process imports).
So a module that holds a ``register`` function (a ``samenloop.commands`` entry
point, or a helper such as ``add_node_options`` that registers options):

1. imports at module level only the standard library, :mod:`samenloop.policies.errors`,
   :mod:`samenloop.policies.terminal` (rich is imported inside its ``console()``) and
   other modules that follow this rule;
2. imports everything else inside the handler (``func``) or helper that uses it,
   and under ``if TYPE_CHECKING:`` for annotations;
3. gives ``choices=`` from literal tuples, not from an enum in a heavy module (a test
   compares the tuples with the enums);
4. or, for a handler in another module, sets ``func=lazy("package.module:function")``:
   the module is imported when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Protocol

from samenloop.policies.errors import SamenloopError, Status
from samenloop.policies.process import keep_to_owner
from samenloop.policies.terminal import fitted, printable


class Command(Protocol):
    """What a subcommand handler is: parsed arguments in, exit code out."""

    def __call__(self, args: argparse.Namespace) -> int: ...


Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: Exit codes by status hint. 1: the input was refused; 2: usage or local
#: configuration; 3: try again later (also ``node status`` when the node is not
#: connected to the broker); 4: not allowed; 70: our own bug.
EXIT_CODES: dict[Status, int] = {
    Status.INVALID_ARGUMENT: 1,
    Status.NOT_FOUND: 1,
    Status.ALREADY_EXISTS: 1,
    Status.RESOURCE_EXHAUSTED: 1,
    Status.FAILED_PRECONDITION: 2,
    Status.UNAVAILABLE: 3,
    Status.UNIMPLEMENTED: 2,
    Status.PERMISSION_DENIED: 4,
    Status.UNAUTHENTICATED: 4,
    Status.INTERNAL: 70,
}


def lazy(target: str) -> Command:
    """A handler that imports ``target`` (``"package.module:function"``) when it runs, so
    that registering the command imports nothing of it."""
    module_name, _, name = target.partition(":")

    def handler(args: argparse.Namespace) -> int:
        function: Command = getattr(importlib.import_module(module_name), name)
        return function(args)

    handler.__qualname__ = handler.__name__ = name
    return handler


#: The one name of the option that says which node.toml a command uses, in every command.
NODE_OPTION = "--node"
#: Its old names, still taken (hidden from the help, with a warning) so scripts keep working.
NODE_OPTION_ALIASES = ("--config",)


class DeprecatedOption(argparse.Action):
    """An option's old name: stores into the new name's ``dest``, warns on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        self.preferred = str(kwargs.pop("preferred"))
        super().__init__(option_strings, dest, **kwargs)  # type: ignore[arg-type]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(
            f"samenloop: warning: {option_string} is deprecated, use {self.preferred}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_node_config(
    parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup,
    *,
    dest: str = "node",
    required: bool = False,
    help: str = "the node's node.toml",
) -> None:
    """``--node NODE_TOML`` (and its hidden old name ``--config``) on ``parser``: given as
    a mutually exclusive group when ``required``, so that either name satisfies it."""
    from pathlib import Path

    target = parser
    if required and isinstance(parser, argparse.ArgumentParser):
        target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(NODE_OPTION, dest=dest, type=Path, metavar="NODE_TOML", help=help)
    for alias in NODE_OPTION_ALIASES:
        target.add_argument(
            alias,
            dest=dest,
            type=Path,
            action=DeprecatedOption,
            preferred=NODE_OPTION,
            help=argparse.SUPPRESS,
        )


def software_version() -> str:
    """The installed package's version, as ``samenloop --version`` shows it."""
    try:
        return version("samenloop")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every role's subcommands; with ``command`` (the first word of a
    command line) only of the role that registers it, when one does.

    Each role registers the command of its entry point's name. Loading one role spares a
    process the imports of the others (``node serve`` does not import the broker): a
    second or so of every daemon's start and every CLI call. Without ``command``, or for a
    word no role registers (``--help``, a typo), every role loads, so that the help and
    argparse's own error list them all."""
    parser = argparse.ArgumentParser(
        prog="samenloop",
        description=(
            "Samenloop: find shared subjects across covenant partners without sharing raw data."
        ),
    )
    parser.add_argument("--version", action="version", version=f"samenloop {software_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    roles = sorted(entry_points(group="samenloop.commands"), key=lambda e: e.name)
    chosen = [entry for entry in roles if entry.name == command]
    if command == "--version":  # argparse prints it and exits before it looks for a command
        return parser
    for entry in chosen or roles:
        register: Register = entry.load()
        register(subparsers)
    return parser


def exit_code_for(error: SamenloopError) -> int:
    return EXIT_CODES.get(error.status, 70)


def main(argv: Sequence[str] | None = None) -> int:
    keep_to_owner()
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
    handler: Command = args.func
    try:
        return handler(args)
    except SamenloopError as error:
        print(fitted(f"samenloop: error: {printable(str(error))}"), file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
