"""``samenloop network``: the subject network a network viewer (usually the RIEC) was told of.

Talks to the party's own node through its local API (the client library), found with
``--node node.toml`` or ``--socket PATH`` as ``samenloop signal`` does.

* ``network show [--group G]`` lists the node's open hit groups (vertices) and the links
  partners reported between them (edges); with ``--group`` (a hex id, or a unique
  prefix of at least 6 digits) only that group's component, with its timeline (groups
  first and last seen, links first reported);
* ``network components [--limit N] [--all]`` lists the connected components, largest
  first (by groups, then partners, then last seen), each with its groups and links;
  ``--all`` includes single groups without links.

A component is named by its rank (1 is the largest) or by any of its group ids:
``samenloop case open --component 1`` opens a case on it (see ``samenloop case``).
Group ids are shown as their first 12 hex digits; ``--json`` prints them whole.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from samenloop.node.signals.commands import add_node_options, open_client
from samenloop.policies import terminal
from samenloop.policies.errors import ConfigurationError, NotFound
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from samenloop.node.client import NodeClient
    from samenloop.node.network.graph import Component, Edge, Vertex

__all__ = ["component_of", "network_to_json", "register"]

MIN_PREFIX = 6
#: How many hex digits of a group id a table shows.
SHORT = 12


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``network show | components``."""
    parser = subparsers.add_parser(
        "network",
        help="the subject network: which hits partners' signals tie together",
        description="Show the hit groups this node sees and the links partners reported "
        "between them (network viewers, usually the RIEC), and its connected components.",
    )
    commands = parser.add_subparsers(dest="network_command", metavar="SUBCOMMAND", required=True)
    show = commands.add_parser("show", help="the groups and links, or one group's component")
    show.add_argument("--group", metavar="G", help="only this group's component (hex id)")
    show.set_defaults(func=_show)
    comps = commands.add_parser("components", help="the connected components, largest first")
    comps.add_argument("--limit", type=int, default=0, metavar="N", help="at most N")
    comps.add_argument("--all", action="store_true", help="also single groups without links")
    comps.set_defaults(func=_components)
    for command in (show, comps):
        command.add_argument("--json", action="store_true", help="print JSON")
        add_node_options(command)


# --- naming a group or a component ------------------------------------------------------------


def _prefix(text: str, option: str) -> str:
    value = text.strip().lower()
    if len(value) < MIN_PREFIX or len(value) > 32:
        raise ConfigurationError(f"give the id in hex, at least {MIN_PREFIX} digits", field=option)
    try:
        int(value, 16)
    except ValueError:
        raise ConfigurationError("must be hex", field=option) from None
    return value


def _group(vertices: Sequence[Vertex], text: str, option: str) -> bytes:
    prefix = _prefix(text, option)
    found = [v.group_id for v in vertices if v.group_id.hex().startswith(prefix)]
    if len(found) != 1:
        raise NotFound(
            "no open hit with this group id" if not found else "several groups start with this id",
            field=option,
        )
    return found[0]


def component_of(client: NodeClient, text: str, option: str = "--component") -> Component:
    """The component that ``text`` names: its rank (1 is the largest with links) or one of
    its group ids (hex, or a unique prefix)."""
    ranked = client.network_components()
    if text.strip().isdigit() and len(text.strip()) < MIN_PREFIX:
        rank = int(text)
        if not 1 <= rank <= len(ranked):
            raise NotFound(f"there are {len(ranked)} components with links", field=option)
        return ranked[rank - 1]
    vertices, _ = client.network()
    group = _group(vertices, text, option)
    for component in ranked:
        if group in component.group_ids:
            return component
    raise NotFound("this group has no links: it is no component of its own", field=option)


# --- output -----------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _vertex_json(v: Vertex) -> dict[str, Any]:
    return {
        "hit_group_id": v.group_id.hex(),
        "identifier_type": v.identifier_type or None,
        "parties": sorted(v.parties),
        "first_seen": _iso(v.first_seen),
        "last_seen": _iso(v.last_seen),
        "person_score": v.score,
    }


def _edge_json(e: Edge) -> dict[str, Any]:
    return {
        "a": e.a.hex(),
        "b": e.b.hex(),
        "reporter": e.reporter,
        "count": e.count,
        "first_reported": _iso(e.first_reported),
        "last_reported": _iso(e.last_reported),
    }


def network_to_json(vertices: Sequence[Vertex], edges: Sequence[Edge]) -> dict[str, Any]:
    """Vertices and edges as a JSON object (ids in hex)."""
    return {
        "vertices": [_vertex_json(v) for v in vertices],
        "edges": [_edge_json(e) for e in edges],
    }


def _print_network(title: str, vertices: Sequence[Vertex], edges: Sequence[Edge]) -> None:
    from rich.table import Table

    out = terminal.console()
    scored = any(v.score is not None for v in vertices)  # a score column only if any
    groups = Table(title=title)
    for name in ("group", "type", "parties", "first seen", "last seen", "score")[: 5 + scored]:
        groups.add_column(name, overflow="fold")
    for v in vertices:
        row = [
            v.group_id.hex()[:SHORT],
            v.identifier_type or "?",
            ", ".join(printable(p) for p in sorted(v.parties)),
            v.first_seen.strftime("%Y-%m-%d"),
            v.last_seen.strftime("%Y-%m-%d"),
        ]
        if scored:
            row.append("" if v.score is None else f"{v.score:.1f}")
        groups.add_row(*row)
    terminal.show_table(out, groups)
    if not edges:
        return
    links = Table(title=f"{len(edges)} link(s)")
    for name in ("group a", "group b", "reported by", "signals"):
        links.add_column(name, overflow="fold")
    for e in edges:
        links.add_row(e.a.hex()[:SHORT], e.b.hex()[:SHORT], printable(e.reporter), str(e.count))
    terminal.show_table(out, links)


# --- commands ---------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        group = None
        if args.group is not None:
            group = _group(client.network()[0], args.group, "--group")
        vertices, edges = client.network(group)
    events = _timeline(vertices, edges) if group is not None else []
    if args.json:
        shown = network_to_json(vertices, edges)
        if group is not None:
            shown["timeline"] = [
                {"at": when.isoformat(), "event": what, "hit_group_id": g.hex()}
                for when, what, g in events
            ]
        print(terminal.dumps(shown, indent=2))
        return 0
    title = f"{len(vertices)} group(s)" + (" in the component" if group is not None else "")
    _print_network(title, vertices, edges)
    if events:
        out = terminal.console()
        out.print("timeline:")
        for when, what, g in events:
            out.print(f"  {when:%Y-%m-%d %H:%M}  {what.replace('_', ' '):<10}  {g.hex()[:SHORT]}")
    return 0


def _timeline(
    vertices: Sequence[Vertex], edges: Sequence[Edge]
) -> list[tuple[datetime, str, bytes]]:
    from samenloop.node.network.graph import Component, timeline

    return timeline(Component(tuple(vertices), tuple(edges)))


def _components(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise ConfigurationError("not negative", field="--limit")
    with open_client(args) as client:
        found = client.network_components(limit=args.limit, with_singletons=args.all)
    if args.json:
        shown = [
            {"rank": i, "partners": sorted(c.partners)} | network_to_json(c.vertices, c.edges)
            for i, c in enumerate(found, 1)
        ]
        print(terminal.dumps(shown, indent=2))
        return 0
    if not found:
        terminal.console().print("no components with links")
    for i, c in enumerate(found, 1):
        partners = ", ".join(printable(p) for p in sorted(c.partners))
        terminal.console().print(
            f"component {i}: {len(c.vertices)} group(s), {len(c.partners)} partner(s): {partners}"
        )
        _print_network(f"component {i}: groups", c.vertices, c.edges)
    return 0
