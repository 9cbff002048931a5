"""``samenloop disclosure``: ask another partner for details of a hit, and answer them.

Talks to the partner's own node through its local API (the client library),
found with ``--node node.toml`` or ``--socket PATH`` as ``samenloop signal``
does. Ids are shown and given in hex.

* ``disclosure request HIT --owner PARTY --ref REF --purpose P --field F ...
  --officer ID`` asks the owner of a signal in a hit for its details;
* ``disclosure list`` and ``disclosure show ID`` show requests both ways (a
  granted outgoing request shows the released fields);
* ``disclosure pending``, ``approve ID --officer ID`` and ``deny ID --officer
  ID --reason TEXT`` are the four-eyes step at the owner: a second officer,
  never the one who asked, decides on what the covenant lets wait for one.

A justification, note or reason may name the subject: ``--from FILE`` (or
``--from -``, standard input) reads it as a ``justification TEXT`` (``note``,
``reason``) line instead of an argument, which every account on the host can
read while the command runs (:func:`~samenloop.node.signals.commands.take_from`).

Officer names, justifications, notes, refusal messages and released field
names and values come from the other party: they are shown as plain text
(:mod:`samenloop.policies.terminal`); ``--json`` prints them exactly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from samenloop.node.signals.commands import (
    add_from_option,
    add_node_options,
    open_client,
    require_option,
    take_from,
)
from samenloop.policies import terminal
from samenloop.policies.errors import ConfigurationError
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from rich.table import Table

    from samenloop.node.client import Disclosure

__all__ = ["disclosure_to_json", "register"]

#: ``--direction``: the values of ``DisclosureDirection`` (a test compares them).
_DIRECTIONS = {"in": "incoming", "out": "outgoing"}
#: ``--state``: the values of ``DisclosureState`` (a test compares them).
DISCLOSURE_STATES: Final = ("sent", "pending_approval", "granted", "refused")
#: After the help of an option whose text may name a subject.
_VISIBLE = "; as an argument other accounts on this host can read it: see --from"


def _hex(text: str, option: str, size: int = 16) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError("must be hex", field=option) from None
    if len(value) != size:
        raise ConfigurationError(f"must be {size} bytes ({2 * size} hex digits)", field=option)
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``disclosure request | list | show | pending | approve | deny``."""
    parser = subparsers.add_parser(
        "disclosure",
        help="ask for and answer details of a hit, under the covenant",
        description="Ask the owner of a signal in a hit for its details, and answer such "
        "requests (four eyes: a second officer approves or denies).",
    )
    commands = parser.add_subparsers(dest="disclosure_command", metavar="SUBCOMMAND", required=True)

    ask = commands.add_parser("request", help="ask the owner of a signal in a hit for details")
    ask.add_argument("hit", metavar="HIT", help="the hit group id (hex)")
    ask.add_argument("--owner", required=True, metavar="PARTY", help="the signal's owner")
    ask.add_argument("--ref", required=True, metavar="REF", help="the owner's signal ref (hex)")
    ask.add_argument("--purpose", required=True, metavar="P", help="a purpose of the covenant")
    ask.add_argument(
        "--field", action="append", required=True, metavar="F", help="a field wanted (repeat)"
    )
    ask.add_argument("--officer", required=True, metavar="ID", help="who asks")
    ask.add_argument("--justification", default="", metavar="TEXT", help=f"why{_VISIBLE}")
    add_from_option(ask, {"justification": "justification"}, example="justification TEXT")
    ask.add_argument("--json", action="store_true", help="print the request as JSON")
    add_node_options(ask)
    ask.set_defaults(func=_request)

    listing = commands.add_parser("list", help="list requests, newest first")
    listing.add_argument("--direction", choices=sorted(_DIRECTIONS), help="only these")
    listing.add_argument("--state", choices=DISCLOSURE_STATES, help="only these")
    listing.add_argument("--limit", type=int, help="at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_node_options(listing)
    listing.set_defaults(func=_list)

    show = commands.add_parser("show", help="one request, with what was released")
    show.add_argument("id", metavar="ID", help="the request id (hex)")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_node_options(show)
    show.set_defaults(func=_show)

    pending = commands.add_parser("pending", help="incoming requests waiting for an officer")
    pending.add_argument("--json", action="store_true", help="print JSON")
    add_node_options(pending)
    pending.set_defaults(func=_pending)

    approve = commands.add_parser("approve", help="approve a pending request (second officer)")
    approve.add_argument("id", metavar="ID", help="the request id (hex)")
    approve.add_argument("--officer", required=True, metavar="ID", help="who approves")
    approve.add_argument("--note", default="", metavar="TEXT", help=f"the officer's note{_VISIBLE}")
    add_from_option(approve, {"note": "note"}, example="note TEXT")
    approve.add_argument("--json", action="store_true", help="print the request as JSON")
    add_node_options(approve)
    approve.set_defaults(func=_approve)

    deny = commands.add_parser("deny", help="deny a pending request (second officer)")
    deny.add_argument("id", metavar="ID", help="the request id (hex)")
    deny.add_argument("--officer", required=True, metavar="ID", help="who denies")
    deny.add_argument(
        "--reason", metavar="TEXT", help=f"why; sent to the requester (required){_VISIBLE}"
    )
    add_from_option(deny, {"reason": "reason"}, example="reason TEXT")
    deny.add_argument("--json", action="store_true", help="print the request as JSON")
    add_node_options(deny)
    deny.set_defaults(func=_deny)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def disclosure_to_json(item: Disclosure) -> dict[str, Any]:
    """A disclosure request as a JSON object (bytes as hex)."""
    return {
        "request_id": item.request_hex,
        "direction": item.direction.value,
        "state": item.state.value,
        "requester": item.requester,
        "owner": item.owner,
        "hit_group_id": item.hit_group_id.hex(),
        "signal_ref": item.signal_ref.hex(),
        "signal_id": item.signal_id,
        "purpose": item.purpose,
        "requested_fields": list(item.requested_fields),
        "requester_officer": item.requester_officer,
        "justification": item.justification,
        "released_fields": dict(item.released_fields),
        "withheld_fields": list(item.withheld_fields),
        "refusal_reason": item.refusal_reason,
        "refusal_message": item.refusal_message or None,
        "decisions": [
            {
                "officer": d.officer,
                "approved": d.approved,
                "note": d.note,
                "decided_at": _iso(d.decided_at),
            }
            for d in item.decisions
        ],
        "requested_at": _iso(item.requested_at),
        "decided_at": _iso(item.decided_at),
        "person_score": item.person_score,
    }


def _summary(item: Disclosure) -> str:
    line = (
        f"{item.request_hex} {item.direction.value} {item.state.value}: "
        f"{printable(item.requester)} -> {printable(item.owner)}, {printable(item.purpose)}"
    )
    if item.refusal_reason is not None:
        line += f" ({item.refusal_reason}: {printable(item.refusal_message)})"
    return line


def _table(items: Sequence[Disclosure], title: str) -> Table:
    from rich.table import Table

    from samenloop.node.disclosure.models import DisclosureDirection

    table = Table(title=title)
    for name in ("id", "dir", "state", "requester", "owner", "purpose", "fields", "requested"):
        table.add_column(name, overflow="fold")
    for item in items:
        table.add_row(
            item.request_hex[:12],
            "in" if item.direction is DisclosureDirection.INCOMING else "out",
            item.state.value + (f" ({item.refusal_reason})" if item.refusal_reason else ""),
            printable(item.requester),
            printable(item.owner),
            printable(item.purpose),
            ", ".join(printable(f) for f in item.requested_fields),
            item.requested_at.strftime("%Y-%m-%d %H:%M") if item.requested_at else "",
        )
    return table


def _print_one(item: Disclosure, as_json: bool) -> None:
    from samenloop.node.disclosure.models import DisclosureState

    if as_json:
        print(terminal.dumps(disclosure_to_json(item), indent=2))
        return
    fields = ", ".join(printable(f) for f in item.requested_fields)
    print(_summary(item))
    print(f"  asked for: {fields} by {printable(item.requester_officer)}")
    if item.justification:
        print(f"  justification: {printable(item.justification)}")
    if item.person_score is not None:
        print(
            f"  on a probable person hit: {item.person_score:.1f} bits as the requester "
            "scores it (docs/linkage.md)"
        )
    for decision in item.decisions:
        verb = "approved" if decision.approved else "denied"
        print(f"  {verb} by {printable(decision.officer)}: {printable(decision.note)}")
    if item.state is DisclosureState.GRANTED:
        for name, value in sorted(item.released_fields.items()):
            shown = printable(value) if value else "(released)"
            print(f"  {printable(name)}: {shown}")
        if item.withheld_fields:
            print(f"  withheld: {', '.join(printable(f) for f in item.withheld_fields)}")


def _print_many(items: Sequence[Disclosure], as_json: bool, title: str) -> None:
    if as_json:
        print(terminal.dumps([disclosure_to_json(i) for i in items], indent=2))
    else:
        terminal.show_table(terminal.console(), _table(items, title))


def _request(args: argparse.Namespace) -> int:
    take_from(args)
    hit = _hex(args.hit, "HIT")
    ref = _hex(args.ref, "--ref")
    with open_client(args) as client:
        item = client.request_disclosure(
            hit,
            args.owner,
            ref,
            args.purpose,
            args.field,
            officer=args.officer,
            justification=args.justification,
        )
    _print_one(item, args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    from samenloop.node.disclosure.models import DisclosureDirection

    direction = None if args.direction is None else DisclosureDirection(_DIRECTIONS[args.direction])
    with open_client(args) as client:
        items = client.disclosures(direction, args.state, limit=args.limit)
    _print_many(items, args.json, f"{len(items)} disclosure request(s)")
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        item = client.disclosure(_hex(args.id, "ID"))
    _print_one(item, args.json)
    return 0


def _pending(args: argparse.Namespace) -> int:
    from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState

    with open_client(args) as client:
        items = client.disclosures(DisclosureDirection.INCOMING, DisclosureState.PENDING_APPROVAL)
    _print_many(items, args.json, f"{len(items)} request(s) waiting for a second officer")
    return 0


def _approve(args: argparse.Namespace) -> int:
    take_from(args)
    with open_client(args) as client:
        item = client.approve_disclosure(_hex(args.id, "ID"), officer=args.officer, note=args.note)
    _print_one(item, args.json)
    return 0


def _deny(args: argparse.Namespace) -> int:
    take_from(args)
    reason = require_option(args, "reason")
    with open_client(args) as client:
        item = client.deny_disclosure(_hex(args.id, "ID"), officer=args.officer, reason=reason)
    _print_one(item, args.json)
    return 0
