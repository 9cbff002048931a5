"""``samenloop case``: coordinate a case across partners after a hit (casusregie).

Talks to the partner's own node through its local API (the client library),
found with ``--node node.toml`` or ``--socket PATH`` as ``samenloop signal``
does. Case and action ids are shown in hex; a unique prefix of at least
:data:`MIN_PREFIX` hex digits is enough to name one.

* ``case open HIT --title T --officer ID [--invite PARTY ...]`` opens a case
  on a hit this node sees (coordinators only, usually the RIEC);
* ``case invite CASE PARTY ...`` invites further parties of the hit;
* ``case remove CASE PARTY ...`` removes members (coordinator): they receive
  the removal and nothing further;
* ``case list`` and ``case show CASE`` show the cases this node is a member of;
* ``case act CASE --owner PARTY --type T --measure TEXT --deadline YYYY-MM-DD``
  adds an action to the plan (coordinator);
* ``case update CASE ACTION --status S [--note TEXT]`` updates an action (its
  owner, or the coordinator);
* ``case close CASE --outcome TEXT`` closes the case (coordinator);
* ``case board`` is the coordinator's board: open actions, overdue first and
  highlighted.

A title, measure, description, note or outcome may name the subject: ``--from
FILE`` (or ``--from -``, standard input) reads it as a ``title TEXT`` (...)
line instead of an argument, which every account on the host can read while the
command runs (:func:`~samenloop.node.signals.commands.take_from`).

Titles, measures, notes, outcomes and officer names are other members' text:
they are shown as plain text (:mod:`samenloop.policies.terminal`), never as
markup or terminal controls; ``--json`` prints them exactly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Final

from samenloop.node.signals.commands import (
    add_from_option,
    add_node_options,
    open_client,
    require_option,
    take_from,
)
from samenloop.policies import terminal
from samenloop.policies.errors import ConfigurationError, InvalidInput, NotFound
from samenloop.policies.terminal import printable

if TYPE_CHECKING:
    from rich.table import Table

    from samenloop.node.client import Case, CaseAction, CaseBoardEntry, NodeClient

__all__ = ["case_to_json", "register"]

#: ``choices=`` of the options: the values of ``CaseState``, ``InterventionType`` and
#: ``ActionStatus``, written out so that registering imports no model (a test compares them).
CASE_STATES: Final = ("open", "closed")
INTERVENTION_TYPES: Final = ("bestuurlijk", "fiscaal", "strafrechtelijk", "zorg", "other")
ACTION_STATUSES: Final = ("planned", "in_progress", "done", "cancelled")

MIN_PREFIX = 6
#: After the help of an option whose text may name a subject.
_VISIBLE = "; as an argument other accounts on this host can read it: see --from"


def _hex_prefix(text: str, option: str) -> str:
    value = text.strip().lower()
    if len(value) < MIN_PREFIX or len(value) > 32:
        raise ConfigurationError(f"give the id in hex, at least {MIN_PREFIX} digits", field=option)
    try:
        int(value, 16)
    except ValueError:
        raise ConfigurationError("must be hex", field=option) from None
    return value


def _case_id(client: NodeClient, text: str, option: str = "CASE") -> bytes:
    prefix = _hex_prefix(text, option)
    if len(prefix) == 32:
        return bytes.fromhex(prefix)
    found = [c.case_id for c in client.cases() if c.case_hex.startswith(prefix)]
    if len(found) != 1:
        raise NotFound(
            "no case with this id" if not found else "several cases start with this id",
            field=option,
        )
    return found[0]


def _action_id(case: Case, text: str, option: str = "ACTION") -> bytes:
    prefix = _hex_prefix(text, option)
    found = [a.action_id for a in case.actions if a.action_id.hex().startswith(prefix)]
    if len(found) != 1:
        raise NotFound(
            "no action with this id" if not found else "several actions start with this id",
            field=option,
        )
    return found[0]


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a date is YYYY-MM-DD") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``case open | invite | remove | list | show | act | update | close | board``."""
    parser = subparsers.add_parser(
        "case",
        help="coordinate a case across partners after a hit (casusregie)",
        description="Open a case on a hit, invite the hit's partners, keep a plan of approach "
        "and watch its progress. Case messages are signed and sealed to the case's members.",
    )
    commands = parser.add_subparsers(dest="case_command", metavar="SUBCOMMAND", required=True)

    opening = commands.add_parser("open", help="open a case on a hit (coordinators only)")
    opening.add_argument("hit", metavar="HIT", nargs="?", help="the hit group id (hex)")
    opening.add_argument(
        "--component",
        metavar="N|G",
        help="instead of HIT: a component of the subject network, by its rank in "
        "`network components` or one of its group ids; without --invite, every partner "
        "of its hits is invited (but one whose role the covenant hides from another)",
    )
    opening.add_argument(
        "--title", help=f"the case's title, sealed to members (required){_VISIBLE}"
    )
    add_from_option(opening, {"title": "title"}, example="title TEXT")
    opening.add_argument("--officer", required=True, metavar="ID", help="who opens it")
    opening.add_argument(
        "--invite", action="append", default=[], metavar="PARTY", help="a party of the hit"
    )
    opening.set_defaults(func=_open)

    inviting = commands.add_parser("invite", help="invite further parties of the hit")
    inviting.add_argument("case", metavar="CASE", help="the case id (hex)")
    inviting.add_argument("parties", nargs="+", metavar="PARTY", help="parties of the hit")
    inviting.add_argument("--officer", required=True, metavar="ID", help="who invites")
    inviting.set_defaults(func=_invite)

    removing = commands.add_parser("remove", help="remove members from a case (coordinator)")
    removing.add_argument("case", metavar="CASE", help="the case id (hex)")
    removing.add_argument("parties", nargs="+", metavar="PARTY", help="members to remove")
    removing.add_argument("--officer", required=True, metavar="ID", help="who removes them")
    removing.set_defaults(func=_remove)

    listing = commands.add_parser("list", help="the cases this node is a member of")
    listing.add_argument("--state", choices=CASE_STATES, help="only these")
    listing.set_defaults(func=_list)

    show = commands.add_parser("show", help="one case: members, plan, history")
    show.add_argument("case", metavar="CASE", help="the case id (hex)")
    show.set_defaults(func=_show)

    act = commands.add_parser("act", help="add an action to the plan (coordinator)")
    act.add_argument("case", metavar="CASE", help="the case id (hex)")
    act.add_argument("--owner", required=True, metavar="PARTY", help="the member who acts")
    act.add_argument(
        "--type",
        required=True,
        choices=INTERVENTION_TYPES,
        help="the kind of intervention",
    )
    act.add_argument("--measure", metavar="TEXT", help=f"the measure, short (required){_VISIBLE}")
    act.add_argument(
        "--description", default="", metavar="TEXT", help=f"what is to be done{_VISIBLE}"
    )
    add_from_option(
        act, {"measure": "measure", "description": "description"}, example="description TEXT"
    )
    act.add_argument("--deadline", required=True, type=_date, metavar="YYYY-MM-DD")
    act.add_argument("--officer", required=True, metavar="ID", help="who adds it")
    act.set_defaults(func=_act)

    upd = commands.add_parser("update", help="update an action (its owner, or the coordinator)")
    upd.add_argument("case", metavar="CASE", help="the case id (hex)")
    upd.add_argument("action", metavar="ACTION", help="the action id (hex)")
    upd.add_argument("--status", choices=ACTION_STATUSES, help="the new status")
    upd.add_argument("--note", default="", metavar="TEXT", help=f"a progress note{_VISIBLE}")
    add_from_option(upd, {"note": "note"}, example="note TEXT")
    upd.add_argument(
        "--deadline", type=_date, metavar="YYYY-MM-DD", help="a new deadline (coordinator)"
    )
    upd.add_argument("--officer", required=True, metavar="ID", help="who updates it")
    upd.set_defaults(func=_update)

    closing = commands.add_parser("close", help="close the case (coordinator)")
    closing.add_argument("case", metavar="CASE", help="the case id (hex)")
    closing.add_argument("--outcome", metavar="TEXT", help=f"how it ended (required){_VISIBLE}")
    add_from_option(closing, {"outcome": "outcome"}, example="outcome TEXT")
    closing.add_argument("--officer", required=True, metavar="ID", help="who closes it")
    closing.set_defaults(func=_close)

    board = commands.add_parser("board", help="the coordinator's board, overdue first")
    board.add_argument("--overdue", action="store_true", help="only overdue actions")
    board.set_defaults(func=_board)

    for command in (opening, inviting, removing, listing, show, act, upd, closing, board):
        command.add_argument("--json", action="store_true", help="print JSON")
        add_node_options(command)


# --- output ----------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _action_to_json(action: CaseAction, now: datetime) -> dict[str, Any]:
    return {
        "action_id": action.action_id.hex(),
        "owner": action.owner,
        "intervention_type": action.intervention_type.value,
        "measure": action.measure,
        "description": action.description,
        "deadline": _iso(action.deadline),
        "status": action.status.value,
        "note": action.note,
        "overdue": action.overdue(now),
        "updated_at": _iso(action.updated_at),
        "updated_by": action.updated_by,
    }


def case_to_json(case: Case, now: datetime | None = None) -> dict[str, Any]:
    """A case as a JSON object (ids in hex)."""
    moment = now or datetime.now(UTC)
    return {
        "case_id": case.case_hex,
        "title": case.title,
        "coordinator": case.coordinator,
        "hit_group_id": case.hit_group_id.hex(),
        "state": case.state.value,
        "members": list(case.members),
        "actions": [_action_to_json(a, moment) for a in case.actions],
        "opened_at": _iso(case.opened_at),
        "closed_at": _iso(case.closed_at),
        "outcome": case.outcome or None,
        "history": [
            {
                "issued_at": _iso(h.issued_at),
                "author": h.author,
                "author_officer": h.author_officer,
                "kind": h.kind.value,
                "summary": h.summary,
            }
            for h in case.history
        ],
    }


def _day(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d")


def _actions_table(actions: Sequence[CaseAction], now: datetime) -> Table:
    from rich.table import Table

    table = Table(title="plan of approach")
    for name in ("action", "owner", "type", "measure", "deadline", "status", "note"):
        table.add_column(name, overflow="fold")
    for action in actions:
        late = action.overdue(now)
        table.add_row(
            action.action_id.hex()[:12],
            printable(action.owner),
            action.intervention_type.value,
            printable(action.measure),
            _day(action.deadline) + (" OVERDUE" if late else ""),
            action.status.value,
            printable(action.note),
            style="bold red" if late else None,
        )
    return table


def _print_case(case: Case, as_json: bool) -> None:
    from rich.text import Text

    now = datetime.now(UTC)
    if as_json:
        print(terminal.dumps(case_to_json(case, now), indent=2))
        return
    console = terminal.console()
    console.print(
        Text.assemble((case.case_hex, "bold"), f" {case.state.value}: {printable(case.title)}")
    )
    console.print(f"  coordinator: {printable(case.coordinator)}; hit {case.hit_group_id.hex()}")
    console.print(f"  members: {', '.join(printable(m) for m in case.members)}")
    console.print(f"  opened {_day(case.opened_at)}", end="")
    closed = f", closed {_day(case.closed_at)}: {printable(case.outcome)}"
    console.print(closed if case.closed_at else "")
    if case.actions:
        terminal.show_table(console, _actions_table(case.actions, now))
    for entry in case.history:
        console.print(
            f"  {_day(entry.issued_at)} {printable(entry.author)} "
            f"({printable(entry.author_officer)}): {printable(entry.summary)}"
        )


def _print_cases(items: Sequence[Case], as_json: bool) -> None:
    from rich.table import Table

    now = datetime.now(UTC)
    if as_json:
        print(terminal.dumps([case_to_json(c, now) for c in items], indent=2))
        return
    table = Table(title=f"{len(items)} case(s)")
    for name in ("case", "state", "title", "coordinator", "members", "actions", "overdue"):
        table.add_column(name, overflow="fold")
    for case in items:
        late = sum(a.overdue(now) for a in case.actions)
        table.add_row(
            case.case_hex[:12],
            case.state.value,
            printable(case.title),
            printable(case.coordinator),
            str(len(case.members)),
            str(len(case.actions)),
            str(late) if late else "",
            style="bold red" if late else None,
        )
    terminal.show_table(terminal.console(), table)


def _print_board(entries: Sequence[CaseBoardEntry], as_json: bool) -> None:
    from rich.table import Table

    now = datetime.now(UTC)
    if as_json:
        shown = [
            {
                "case_id": e.case_id.hex(),
                "case_title": e.case_title,
                "action": _action_to_json(e.action, now),
                "overdue": e.overdue,
            }
            for e in entries
        ]
        print(terminal.dumps(shown, indent=2))
        return
    late = sum(e.overdue for e in entries)
    table = Table(title=f"case board: {len(entries)} open action(s), {late} overdue")
    for name in ("case", "title", "action", "owner", "type", "measure", "deadline", "status"):
        table.add_column(name, overflow="fold")
    for entry in entries:
        action = entry.action
        table.add_row(
            entry.case_id.hex()[:12],
            printable(entry.case_title),
            action.action_id.hex()[:12],
            printable(action.owner),
            action.intervention_type.value,
            printable(action.measure),
            _day(action.deadline) + (" OVERDUE" if entry.overdue else ""),
            action.status.value,
            style="bold red" if entry.overdue else None,
        )
    terminal.show_table(terminal.console(), table)


# --- commands ---------------------------------------------------------------------------------


def _open_component(args: argparse.Namespace, title: str) -> Case:
    from samenloop.node.cases.machine import MAX_LINKED_NOTICES
    from samenloop.node.network.commands import component_of

    with open_client(args) as client:
        component = component_of(client, args.component)
        me = client.status().party
        # The case's own hit: the one with the most parties; the others are linked.
        ordered = sorted(component.vertices, key=lambda v: (-len(v.parties), v.group_id))
        if len(ordered) > MAX_LINKED_NOTICES + 1:
            raise ConfigurationError(
                f"a case names at most {MAX_LINKED_NOTICES + 1} hits; this component has "
                f"{len(ordered)}: open it on one of its groups",
                field="--component",
            )
        invite = list(args.invite) or sorted(
            p
            for p in component.partners
            if p != me
            and p
            and not p.startswith("role:")
            and any(p in v.parties for v in component.vertices)
        )
        while True:
            try:
                return client.open_case(
                    ordered[0].group_id,
                    title,
                    officer=args.officer,
                    invite=invite,
                    linked=[v.group_id for v in ordered[1:]],
                )
            except InvalidInput as error:
                index = _invitee(error.field)
                if args.invite or error.reason != "case.hidden_role" or index is None:
                    raise
                left_out = invite.pop(index)
                terminal.console(stderr=True).print(
                    f"not invited: {printable(left_out)} (the covenant hides its role "
                    "from another member)"
                )


def _invitee(field: str | None) -> int | None:
    if field is None or not field.startswith("invite[") or not field.endswith("]"):
        return None
    try:
        return int(field[len("invite[") : -1])
    except ValueError:
        return None


def _open(args: argparse.Namespace) -> int:
    take_from(args)
    title = require_option(args, "title")
    if (args.hit is None) == (args.component is None):
        raise ConfigurationError("give either HIT or --component", field="HIT")
    if args.component is not None:
        _print_case(_open_component(args, title), args.json)
        return 0
    hit = _hex_prefix(args.hit, "HIT")
    if len(hit) != 32:
        raise ConfigurationError("give the whole hit group id (32 hex digits)", field="HIT")
    with open_client(args) as client:
        case = client.open_case(bytes.fromhex(hit), title, officer=args.officer, invite=args.invite)
    _print_case(case, args.json)
    return 0


def _invite(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        case = client.invite_to_case(
            _case_id(client, args.case), args.parties, officer=args.officer
        )
    _print_case(case, args.json)
    return 0


def _remove(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        case = client.remove_from_case(
            _case_id(client, args.case), args.parties, officer=args.officer
        )
    _print_case(case, args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        items = client.cases(args.state)
    _print_cases(items, args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        case = client.case(_case_id(client, args.case))
    _print_case(case, args.json)
    return 0


def _act(args: argparse.Namespace) -> int:
    take_from(args)
    measure = require_option(args, "measure")
    with open_client(args) as client:
        case = client.add_action(
            _case_id(client, args.case),
            owner=args.owner,
            intervention_type=args.type,
            measure=measure,
            description=args.description,
            deadline=args.deadline,
            officer=args.officer,
        )
    _print_case(case, args.json)
    return 0


def _update(args: argparse.Namespace) -> int:
    take_from(args)
    with open_client(args) as client:
        case_id = _case_id(client, args.case)
        action_id = _action_id(client.case(case_id), args.action)
        case = client.update_action(
            case_id,
            action_id,
            officer=args.officer,
            status=args.status,
            deadline=args.deadline,
            note=args.note,
        )
    _print_case(case, args.json)
    return 0


def _close(args: argparse.Namespace) -> int:
    take_from(args)
    outcome = require_option(args, "outcome")
    with open_client(args) as client:
        case = client.close_case(_case_id(client, args.case), outcome=outcome, officer=args.officer)
    _print_case(case, args.json)
    return 0


def _board(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        entries = client.case_board(overdue_only=args.overdue)
    _print_board(entries, args.json)
    return 0
