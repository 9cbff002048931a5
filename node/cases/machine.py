"""Case coordination (casusregie) as a small state machine driven by signed case messages.

A party whose role the covenant lists as a case coordinator (usually the
RIEC) opens a case on a hit group it can see, invites parties of that hit and
keeps a plan of approach: actions with an owning party, an intervention type,
a deadline and a status (DESIGN flow 9, ``proto/samenloop/v1/case.proto``).
There is no central case database: every change is a :class:`CaseChange`
(a ``CaseMessage`` on the wire), signed by its author's node and sealed
separately to each member, and every member's node folds the changes into
its own copy of the case with :func:`apply` -- the author's node too, so all
copies follow one rule.

**Transitions.** The phase of a case at a node is ``none`` (not held),
``open``, ``closed`` or ``removed`` (this node was removed from it). The
whole machine is the table :data:`TRANSITIONS`: for each (phase, kind) the
authors that may make the change and the phase after it. Anything not in the
table is refused with the reason :data:`_NOT_IN_TABLE` gives for the phase.

=====================  ==============  ========================  ===========
phase                  kind            author                    next phase
=====================  ==============  ========================  ===========
none                   OPEN            coordinator               open
none, removed          INVITE          coordinator               open
open                   INVITE          coordinator               open
open                   ACTION_ADD      coordinator               open
open                   ACTION_UPDATE   coordinator, owner        open
open                   MEMBER_REMOVE   coordinator               open, removed
open                   CLOSE           coordinator               closed
=====================  ==============  ========================  ===========

Before the table, every change must be new: a message id seen before, or an
author sequence at or below the last one applied from that author, is a
``replay`` (refused, stored once). A sequence that skips numbers is applied
(every message carries the full state it changes: the whole action, the whole
member list) and its ``gap`` reported, except from an author never heard from
in the case, which is a late member's first contact. After the table: the
coordinator's role must coordinate under the covenant; the author must be a
member; OPEN and INVITE must list this node; a hit notice, when attached, must
be the broker's, addressed to the coordinator, for this group, not closed and
showing every member; an invited party must be a party of that hit and no
member may be one whose role another member's visibility rule hides (the case
would tip it off); an action's owner must be a member; an update keeps the
action's owner, type and texts, follows :data:`ACTION_STATUS_MOVES`, and only
the coordinator moves a deadline.

**Sealing.** :func:`seal` seals a change to every member other than the
author (and, for MEMBER_REMOVE, once more to the removed ones, so their nodes
know; nothing after). The coordinator's hit notice goes along only to a
recipient it tells nothing its own visibility rule withholds; others rely on
the coordinator's authority under the covenant. INVITE carries the plan only
to the new members.

Sans-IO: no network, database or clock; keys, time and ids come in. Nothing
here logs. Titles, measures, notes and outcomes are free text that may
identify a subject: they stay inside sealed messages and the members' stores.

Over 800 lines: one state machine: its transition table, its messages and their checks
belong together, and its tests drive it as one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

from google.protobuf.message import DecodeError

from samenloop.node.daemon.envelopes import Envelope
from samenloop.node.daemon.envelopes import seal as _seal
from samenloop.node.disclosure.protocol import _check_name, check_officer
from samenloop.node.signals.notices import verify_hit_notice
from samenloop.policies import rules
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    InvalidInput,
    MessageTooLarge,
    NotAllowed,
    NotFound,
    SamenloopError,
    UnknownType,
)
from samenloop.policies.policy import Level
from samenloop.policies.times import received_time
from samenloop.v1 import broker_pb2, case_pb2, common_pb2

__all__ = [
    "ACTION_STATUS_MOVES",
    "TRANSITIONS",
    "Access",
    "Action",
    "ActionStatus",
    "Applied",
    "BoardEntry",
    "Case",
    "CaseActivity",
    "CaseChange",
    "CaseRefusal",
    "CaseState",
    "ChangeKind",
    "HistoryEntry",
    "InterventionType",
    "Phase",
    "Refused",
    "Right",
    "add_action",
    "apply",
    "board",
    "close_case",
    "invite",
    "notice_fits",
    "open_case",
    "parse_change",
    "remove_members",
    "seal",
    "update_action",
]

ID_BYTES: Final[int] = common_pb2.LIMITS_ID_BYTES
MAX_TEXT_BYTES: Final[int] = common_pb2.LIMITS_MAX_TEXT_BYTES
MAX_CLOCK_SKEW: Final = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
MAX_TITLE_BYTES: Final = 256
MAX_MEASURE_BYTES: Final = 256
MAX_MEMBERS: Final = 32
MAX_ACTIONS: Final = 100
#: The most other hit groups a case on a component of the subject network names: each
#: notice is a few KB, and with them an OPEN must still fit one envelope.
MAX_LINKED_NOTICES: Final = 15


# --- vocabulary ----------------------------------------------------------------------------


class InterventionType(enum.StrEnum):
    """The kind of intervention an action is (``InterventionType`` without the prefix)."""

    BESTUURLIJK = "bestuurlijk"
    FISCAAL = "fiscaal"
    STRAFRECHTELIJK = "strafrechtelijk"
    ZORG = "zorg"
    OTHER = "other"


class ActionStatus(enum.StrEnum):
    """Where an action stands (``ActionStatus`` without the prefix)."""

    PLANNED = "planned"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


class CaseState(enum.StrEnum):
    """Whether a case is open (``CaseState`` without the prefix)."""

    OPEN = "open"
    CLOSED = "closed"


class Access(enum.StrEnum):
    """Whether this node is still a member of a case it holds.

    ``removed``: the coordinator removed it; it keeps what it had, read-only,
    and receives nothing further.
    """

    MEMBER = "member"
    REMOVED = "removed"


class ChangeKind(enum.StrEnum):
    """What a case message does (``CaseMessageKind`` without the prefix)."""

    OPEN = "open"
    INVITE = "invite"
    ACTION_ADD = "action_add"
    ACTION_UPDATE = "action_update"
    CLOSE = "close"
    MEMBER_REMOVE = "member_remove"


class Phase(enum.StrEnum):
    """A case as one node holds it: the rows of :data:`TRANSITIONS`."""

    NONE = "none"
    OPEN = "open"
    CLOSED = "closed"
    REMOVED = "removed"


class Right(enum.StrEnum):
    """Who may author a change: the case's coordinator, or the owner of the action changed."""

    COORDINATOR = "coordinator"
    OWNER = "owner"


class CaseRefusal(enum.StrEnum):
    """Why a change is not applied."""

    REPLAY = "replay"
    ISSUED_IN_FUTURE = "issued_in_future"
    UNKNOWN_CASE = "unknown_case"
    ALREADY_OPEN = "already_open"
    CASE_CLOSED = "case_closed"
    REMOVED = "removed"
    NOT_COORDINATOR = "not_coordinator"
    NOT_AUTHOR = "not_author"
    NOT_A_MEMBER = "not_a_member"
    INVALID_NOTICE = "invalid_notice"
    NOT_IN_HIT = "not_in_hit"
    HIDDEN_ROLE = "hidden_role"
    UNKNOWN_ACTION = "unknown_action"
    INVALID_CHANGE = "invalid_change"


@dataclass(frozen=True, slots=True)
class _Rule:
    authors: frozenset[Right]
    after: Phase


_C: Final = frozenset({Right.COORDINATOR})

#: The whole machine: (phase, kind) -> who may author it and the phase after it.
#: MEMBER_REMOVE leads to ``removed`` at a node that it removes.
TRANSITIONS: Final[Mapping[tuple[Phase, ChangeKind], _Rule]] = MappingProxyType(
    {
        (Phase.NONE, ChangeKind.OPEN): _Rule(_C, Phase.OPEN),
        (Phase.NONE, ChangeKind.INVITE): _Rule(_C, Phase.OPEN),
        (Phase.REMOVED, ChangeKind.INVITE): _Rule(_C, Phase.OPEN),
        (Phase.OPEN, ChangeKind.INVITE): _Rule(_C, Phase.OPEN),
        (Phase.OPEN, ChangeKind.ACTION_ADD): _Rule(_C, Phase.OPEN),
        (Phase.OPEN, ChangeKind.ACTION_UPDATE): _Rule(
            frozenset({Right.COORDINATOR, Right.OWNER}), Phase.OPEN
        ),
        (Phase.OPEN, ChangeKind.MEMBER_REMOVE): _Rule(_C, Phase.OPEN),
        (Phase.OPEN, ChangeKind.CLOSE): _Rule(_C, Phase.CLOSED),
    }
)

_NOT_IN_TABLE: Final[Mapping[Phase, CaseRefusal]] = MappingProxyType(
    {
        Phase.NONE: CaseRefusal.UNKNOWN_CASE,
        Phase.OPEN: CaseRefusal.ALREADY_OPEN,
        Phase.CLOSED: CaseRefusal.CASE_CLOSED,
        Phase.REMOVED: CaseRefusal.REMOVED,
    }
)

#: Status moves an update may make; DONE and CANCELLED are final (a note may still change).
ACTION_STATUS_MOVES: Final[Mapping[ActionStatus, frozenset[ActionStatus]]] = MappingProxyType(
    {
        ActionStatus.PLANNED: frozenset(ActionStatus),
        ActionStatus.IN_PROGRESS: frozenset(
            {ActionStatus.IN_PROGRESS, ActionStatus.DONE, ActionStatus.CANCELLED}
        ),
        ActionStatus.DONE: frozenset({ActionStatus.DONE}),
        ActionStatus.CANCELLED: frozenset({ActionStatus.CANCELLED}),
    }
)
_FINISHED: Final = frozenset({ActionStatus.DONE, ActionStatus.CANCELLED})

# Enum mappings: the names match the proto enums' without their prefixes.
INTERVENTION_TO_PROTO: Final = {
    t: case_pb2.InterventionType.Value(f"INTERVENTION_TYPE_{t.name}") for t in InterventionType
}
_PROTO_INTERVENTIONS: Final[dict[int, InterventionType]] = {
    v: t for t, v in INTERVENTION_TO_PROTO.items()
}
STATUS_TO_PROTO: Final = {
    s: case_pb2.ActionStatus.Value(f"ACTION_STATUS_{s.name}") for s in ActionStatus
}
PROTO_STATUSES: Final[dict[int, ActionStatus]] = {v: s for s, v in STATUS_TO_PROTO.items()}
STATE_TO_PROTO: Final = {s: case_pb2.CaseState.Value(f"CASE_STATE_{s.name}") for s in CaseState}
PROTO_STATES: Final[dict[int, CaseState]] = {v: s for s, v in STATE_TO_PROTO.items()}
KIND_TO_PROTO: Final = {
    k: case_pb2.CaseMessageKind.Value(f"CASE_MESSAGE_KIND_{k.name}") for k in ChangeKind
}
_PROTO_KINDS: Final[dict[int, ChangeKind]] = {v: k for k, v in KIND_TO_PROTO.items()}


def intervention_from_proto(value: int, field: str) -> InterventionType:
    try:
        return _PROTO_INTERVENTIONS[value]
    except KeyError:
        raise UnknownType("unknown intervention type", field=field) from None


def status_from_proto(value: int, field: str) -> ActionStatus:
    try:
        return PROTO_STATUSES[value]
    except KeyError:
        raise UnknownType("unknown action status", field=field) from None


# --- the case and its parts -------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True, repr=False)
class Action:
    """One action of a plan of approach. ``added_at``: when its ACTION_ADD was issued
    (for a late member, when it first saw it); not on the wire."""

    action_id: bytes
    owner: str
    intervention_type: InterventionType
    measure: str
    description: str
    deadline: datetime
    status: ActionStatus
    note: str
    updated_at: datetime
    updated_by: str
    added_at: datetime

    def __repr__(self) -> str:
        return (
            f"Action(id={self.action_id.hex()[:8]}, owner={self.owner!r}, "
            f"type={self.intervention_type.value}, status={self.status.value})"
        )

    def overdue(self, now: datetime) -> bool:
        """Past its deadline and neither done nor cancelled."""
        return self.status not in _FINISHED and _utc(now) > self.deadline

    def to_proto(self) -> case_pb2.CaseAction:
        message = case_pb2.CaseAction(
            action_id=self.action_id,
            owner=self.owner,
            intervention_type=INTERVENTION_TO_PROTO[self.intervention_type],
            measure=self.measure,
            description=self.description,
            status=STATUS_TO_PROTO[self.status],
            note=self.note,
            updated_by=self.updated_by,
        )
        message.deadline.FromDatetime(self.deadline)
        message.updated_at.FromDatetime(self.updated_at)
        return message


def _text(value: str, field: str, limit: int, *, empty_ok: bool = True) -> str:
    if not empty_ok and not value.strip():
        raise InvalidInput("must not be empty", field=field)
    if len(value.encode("utf-8")) > limit:
        raise MessageTooLarge(f"at most {limit} bytes of UTF-8", field=field)
    if any((ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F for c in value):
        raise InvalidInput("must not contain control characters", field=field)
    return value


def _id(value: bytes, field: str) -> bytes:
    if len(value) != ID_BYTES:
        raise InvalidInput(f"an id is {ID_BYTES} bytes", field=field)
    return bytes(value)


def action_from_proto(message: case_pb2.CaseAction, field: str, *, added_at: datetime) -> Action:
    """An action as a message carries it, checked for shape (naming ``field``.…)."""
    if not message.HasField("deadline"):
        raise InvalidInput("a deadline is required", field=f"{field}.deadline")
    return Action(
        action_id=_id(message.action_id, f"{field}.action_id"),
        owner=_check_name(message.owner, f"{field}.owner"),
        intervention_type=intervention_from_proto(
            message.intervention_type, f"{field}.intervention_type"
        ),
        measure=_text(message.measure, f"{field}.measure", MAX_MEASURE_BYTES, empty_ok=False),
        description=_text(message.description, f"{field}.description", MAX_TEXT_BYTES),
        deadline=received_time(message.deadline, field=f"{field}.deadline"),
        status=status_from_proto(message.status, f"{field}.status"),
        note=_text(message.note, f"{field}.note", MAX_TEXT_BYTES),
        updated_at=received_time(message.updated_at, field=f"{field}.updated_at"),
        updated_by=_check_name(message.updated_by, f"{field}.updated_by"),
        added_at=added_at,
    )


@dataclass(frozen=True, slots=True, repr=False)
class HistoryEntry:
    """One applied change, for people: who, when, what (a summary without free text)."""

    issued_at: datetime
    author: str
    author_officer: str
    kind: ChangeKind
    summary: str

    def __repr__(self) -> str:
        return f"HistoryEntry(kind={self.kind.value}, author={self.author!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Case:
    """A case as one node holds it. ``sequences``: the last author sequence applied per
    author; ``hit_notice``: the coordinator's signed notice, if this node has it."""

    case_id: bytes
    coordinator: str
    title: str
    hit_group_id: bytes
    state: CaseState
    access: Access
    members: tuple[str, ...]
    actions: tuple[Action, ...]
    opened_at: datetime
    closed_at: datetime | None = None
    outcome: str | None = None
    sequences: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    hit_notice: bytes | None = None
    history: tuple[HistoryEntry, ...] = ()
    #: A case on a component of the subject network: its other hit groups, whose
    #: partners may be members too (docs/network.md).
    linked_group_ids: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Case(id={self.case_id.hex()[:8]}, state={self.state.value}, "
            f"access={self.access.value}, members={len(self.members)}, "
            f"actions={len(self.actions)})"
        )

    @property
    def phase(self) -> Phase:
        if self.access is Access.REMOVED:
            return Phase.REMOVED
        return Phase.OPEN if self.state is CaseState.OPEN else Phase.CLOSED

    def action(self, action_id: bytes) -> Action | None:
        return next((a for a in self.actions if a.action_id == action_id), None)

    def next_sequence(self, party: str) -> int:
        return self.sequences.get(party, 0) + 1

    def overdue(self, now: datetime) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.overdue(now))


# --- the change -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class CaseChange:
    """One change to a case: a ``CaseMessage`` parsed and checked for shape."""

    case_id: bytes
    message_id: bytes
    author: str
    author_officer: str
    author_sequence: int
    issued_at: datetime
    kind: ChangeKind
    coordinator: str
    title: str = ""
    hit_group_id: bytes = b""
    hit_notice: common_pb2.Signed | None = None
    members: tuple[str, ...] = ()
    action: Action | None = None
    #: A case on a component: the coordinator's notices of its other hit groups.
    linked_notices: tuple[common_pb2.Signed, ...] = ()
    actions: tuple[Action, ...] = ()
    outcome: str = ""

    def __repr__(self) -> str:
        return (
            f"CaseChange(kind={self.kind.value}, author={self.author!r}, "
            f"sequence={self.author_sequence})"
        )

    def to_proto(
        self, *, with_notice: bool = True, with_actions: bool = True
    ) -> case_pb2.CaseMessage:
        message = case_pb2.CaseMessage(
            case_id=self.case_id,
            message_id=self.message_id,
            author=self.author,
            author_officer=self.author_officer,
            author_sequence=self.author_sequence,
            kind=KIND_TO_PROTO[self.kind],
            coordinator=self.coordinator,
            title=self.title,
            hit_group_id=self.hit_group_id,
            members=list(self.members),
            outcome=self.outcome,
        )
        message.issued_at.FromDatetime(self.issued_at)
        if with_notice and self.hit_notice is not None:
            message.hit_notice.CopyFrom(self.hit_notice)
            message.linked_notices.extend(self.linked_notices)
        if self.action is not None:
            message.action.CopyFrom(self.action.to_proto())
        if with_actions:
            message.actions.extend(a.to_proto() for a in self.actions)
        return message


def parse_change(body: bytes, *, sender: str) -> CaseChange:
    """A verified ``CaseMessage`` body as a :class:`CaseChange`; ``InvalidInput`` naming
    the field if it is malformed or its author is not the party that signed it."""
    message = case_pb2.CaseMessage()
    try:
        message.ParseFromString(body)
    except DecodeError as error:
        raise InvalidInput("not a CaseMessage", field="body") from error
    if message.author != sender:
        raise InvalidInput("the author is not the signer", field="author")
    try:
        kind = _PROTO_KINDS[message.kind]
    except KeyError:
        raise UnknownType("unknown case message kind", field="kind") from None
    if message.author_sequence < 1:
        raise InvalidInput("author sequences start at 1", field="author_sequence")
    if not message.HasField("issued_at"):
        raise InvalidInput("issued_at is required", field="issued_at")
    if len(message.members) > MAX_MEMBERS:
        raise MessageTooLarge(f"at most {MAX_MEMBERS} members", field="members")
    if len(message.actions) > MAX_ACTIONS:
        raise MessageTooLarge(f"at most {MAX_ACTIONS} actions", field="actions")
    if len(message.linked_notices) > MAX_LINKED_NOTICES:
        raise MessageTooLarge(
            f"at most {MAX_LINKED_NOTICES} linked notices", field="linked_notices"
        )
    issued_at = received_time(message.issued_at, field="issued_at")
    members = tuple(_check_name(m, f"members[{i}]") for i, m in enumerate(message.members))
    return CaseChange(
        case_id=_id(message.case_id, "case_id"),
        message_id=_id(message.message_id, "message_id"),
        author=message.author,
        author_officer=check_officer(message.author_officer, "author_officer"),
        author_sequence=message.author_sequence,
        issued_at=issued_at,
        kind=kind,
        coordinator=_check_name(message.coordinator, "coordinator"),
        title=_text(message.title, "title", MAX_TITLE_BYTES),
        hit_group_id=bytes(message.hit_group_id),
        hit_notice=message.hit_notice if message.HasField("hit_notice") else None,
        linked_notices=tuple(message.linked_notices),
        members=members,
        action=action_from_proto(message.action, "action", added_at=issued_at)
        if message.HasField("action")
        else None,
        actions=tuple(
            action_from_proto(a, f"actions[{i}]", added_at=issued_at)
            for i, a in enumerate(message.actions)
        ),
        outcome=_text(message.outcome, "outcome", MAX_TEXT_BYTES),
    )


# --- applying a change -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """The case after a change; ``gap``: author sequence numbers skipped (0: none)."""

    case: Case
    change: CaseChange
    gap: int
    summary: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A change not applied, and why."""

    reason: CaseRefusal
    message: str


class _Refusal(Exception):
    def __init__(self, reason: CaseRefusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def apply(
    covenant: Covenant,
    me: str,
    case: Case | None,
    change: CaseChange,
    *,
    now: datetime,
    seen: bool = False,
) -> Applied | Refused:
    """Fold ``change`` into ``case`` as held by ``me`` (None: not held); ``seen``: its
    message id is already stored. The rules are in the module's docstring, in order."""
    try:
        return _apply(covenant, me, case, change, _utc(now), seen)
    except _Refusal as refusal:
        return Refused(refusal.reason, refusal.message)


def _apply(
    covenant: Covenant, me: str, case: Case | None, change: CaseChange, now: datetime, seen: bool
) -> Applied:
    last = 0 if case is None else case.sequences.get(change.author, 0)
    if seen or change.author_sequence <= last:
        raise _Refusal(CaseRefusal.REPLAY, "this change was applied before")
    if change.issued_at > now + MAX_CLOCK_SKEW:
        raise _Refusal(CaseRefusal.ISSUED_IN_FUTURE, "the change is issued in the future")
    phase = Phase.NONE if case is None else case.phase
    rule = TRANSITIONS.get((phase, change.kind))
    if rule is None:
        reason = _NOT_IN_TABLE[phase]
        raise _Refusal(reason, f"a case that is {phase.value} takes no {change.kind.value}")
    coordinator = change.coordinator if case is None else case.coordinator
    if change.coordinator != coordinator:
        raise _Refusal(CaseRefusal.NOT_AUTHOR, "the change names another coordinator")
    if not rules.may_coordinate(covenant, coordinator):
        raise _Refusal(CaseRefusal.NOT_COORDINATOR, "the covenant does not let it coordinate")
    rights = {Right.COORDINATOR} if change.author == coordinator else set()
    if case is not None and change.action is not None:
        current = case.action(change.action.action_id)
        if current is not None and current.owner == change.author:
            rights.add(Right.OWNER)
    if not rights & rule.authors:
        raise _Refusal(CaseRefusal.NOT_AUTHOR, f"{change.kind.value} is not the author's to make")
    if case is not None and case.phase is Phase.OPEN and change.author not in case.members:
        raise _Refusal(CaseRefusal.NOT_A_MEMBER, "the author is not a member of the case")
    after, summary = _HANDLERS[change.kind](covenant, me, case, change)
    sequences = dict(after.sequences)
    sequences[change.author] = change.author_sequence
    gap = change.author_sequence - last - 1 if last else 0
    entry = HistoryEntry(
        change.issued_at, change.author, change.author_officer, change.kind, summary
    )
    after = replace(after, sequences=MappingProxyType(sequences), history=(*after.history, entry))
    return Applied(after, change, gap, summary)


def _invalid(message: str) -> _Refusal:
    return _Refusal(CaseRefusal.INVALID_CHANGE, message)


def _check_members(
    covenant: Covenant, me: str, change: CaseChange, notices: Sequence[broker_pb2.HitNotice]
) -> None:
    members = change.members
    if len(set(members)) != len(members) or change.coordinator not in members:
        raise _invalid("the member list repeats a party or leaves out the coordinator")
    if me not in members:
        raise _Refusal(CaseRefusal.NOT_A_MEMBER, "this node is not among the members")
    if not all(covenant.is_party(m) for m in members):
        raise _Refusal(CaseRefusal.NOT_A_MEMBER, "a member is not a party of the covenant")
    for a in members:
        for b in members:
            if rules.hides(covenant, a, b):
                raise _Refusal(
                    CaseRefusal.HIDDEN_ROLE, "a member's role is hidden from another member"
                )
    if notices:
        shown = {m.party for notice in notices for m in notice.members if m.HasField("party")}
        if any(m not in shown for m in members if m != change.coordinator):
            raise _Refusal(CaseRefusal.NOT_IN_HIT, "a member is not a party of the hit")


def _notice(covenant: Covenant, me: str, change: CaseChange) -> list[broker_pb2.HitNotice]:
    """The attached notices (the case's hit's, then a component's other hits'), verified;
    empty if none is attached. Only the coordinator itself must have one."""
    if len(change.hit_group_id) != ID_BYTES:
        raise _invalid("a hit group id is 16 bytes")
    if change.hit_notice is None:
        if me == change.coordinator:
            raise _Refusal(CaseRefusal.INVALID_NOTICE, "the coordinator's notice is missing")
        if change.linked_notices:
            raise _Refusal(CaseRefusal.INVALID_NOTICE, "linked notices without the hit's")
        return []
    notices = []
    for signed in (change.hit_notice, *change.linked_notices):
        try:
            notice = verify_hit_notice(covenant, change.coordinator, signed)
        except SamenloopError:
            raise _Refusal(
                CaseRefusal.INVALID_NOTICE,
                "the notice is not the broker's, or not the coordinator's",
            ) from None
        if notice.kind == broker_pb2.HIT_NOTICE_KIND_CLOSED:
            raise _Refusal(CaseRefusal.INVALID_NOTICE, "the hit is closed")
        notices.append(notice)
    if notices[0].hit_group_id != change.hit_group_id:
        raise _Refusal(CaseRefusal.INVALID_NOTICE, "the notice is of another hit group")
    if len({n.hit_group_id for n in notices}) != len(notices):
        raise _Refusal(CaseRefusal.INVALID_NOTICE, "a hit group's notice is attached twice")
    return notices


def _on_open(
    covenant: Covenant, me: str, case: Case | None, change: CaseChange
) -> tuple[Case, str]:
    notices = _notice(covenant, me, change)
    _check_members(covenant, me, change, notices)
    if not change.title.strip():
        raise _invalid("a case needs a title")
    if change.actions or change.action is not None:
        raise _invalid("a case opens without actions")
    opened = Case(
        case_id=change.case_id,
        coordinator=change.coordinator,
        title=change.title,
        hit_group_id=change.hit_group_id,
        state=CaseState.OPEN,
        access=Access.MEMBER,
        members=change.members,
        actions=(),
        opened_at=change.issued_at,
        hit_notice=None if change.hit_notice is None else change.hit_notice.SerializeToString(),
        linked_group_ids=tuple(n.hit_group_id for n in notices[1:]),
    )
    return opened, f"opened with {len(change.members)} members"


def _on_invite(
    covenant: Covenant, me: str, case: Case | None, change: CaseChange
) -> tuple[Case, str]:
    notices = _notice(covenant, me, change)
    _check_members(covenant, me, change, notices)
    linked = tuple(n.hit_group_id for n in notices[1:])
    if case is None or case.access is Access.REMOVED:
        # A late member (or one invited back) catches up from the snapshot.
        if not change.title.strip():
            raise _invalid("an invitation carries the title")
        if len({a.action_id for a in change.actions}) != len(change.actions):
            raise _invalid("the plan repeats an action")
        if case is not None and case.hit_group_id != change.hit_group_id:
            raise _invalid("the invitation names another hit group")
        base = case or Case(
            case_id=change.case_id,
            coordinator=change.coordinator,
            title=change.title,
            hit_group_id=change.hit_group_id,
            state=CaseState.OPEN,
            access=Access.MEMBER,
            members=(),
            actions=(),
            opened_at=change.issued_at,
        )
        joined = replace(
            base,
            title=change.title,
            access=Access.MEMBER,
            members=change.members,
            actions=change.actions,
            hit_notice=base.hit_notice
            if change.hit_notice is None
            else change.hit_notice.SerializeToString(),
            linked_group_ids=linked or base.linked_group_ids,
        )
        return joined, f"joined with {len(change.members)} members"
    if change.hit_group_id != case.hit_group_id:
        raise _invalid("the invitation names another hit group")
    added = [m for m in change.members if m not in case.members]
    if not added or any(m not in change.members for m in case.members):
        raise _invalid("an invitation adds members and removes none")
    return (
        replace(case, members=change.members, linked_group_ids=linked or case.linked_group_ids),
        f"invited {', '.join(added)}",
    )


def _on_action_add(
    covenant: Covenant, me: str, case: Case | None, change: CaseChange
) -> tuple[Case, str]:
    assert case is not None
    action = change.action
    if action is None:
        raise _invalid("ACTION_ADD carries the action")
    if case.action(action.action_id) is not None:
        raise _invalid("an action with this id exists")
    if len(case.actions) >= MAX_ACTIONS:
        raise _invalid(f"a plan has at most {MAX_ACTIONS} actions")
    if action.owner not in case.members:
        raise _Refusal(CaseRefusal.NOT_A_MEMBER, "the action's owner is not a member")
    if action.status is not ActionStatus.PLANNED or action.updated_by != change.author:
        raise _invalid("a new action is planned, by its author")
    action = replace(action, added_at=change.issued_at, updated_at=change.issued_at)
    summary = (
        f"added action {action.action_id.hex()[:8]} "
        f"({action.intervention_type.value}) for {action.owner}"
    )
    return replace(case, actions=(*case.actions, action)), summary


def _on_action_update(
    covenant: Covenant, me: str, case: Case | None, change: CaseChange
) -> tuple[Case, str]:
    assert case is not None
    new = change.action
    if new is None:
        raise _invalid("ACTION_UPDATE carries the action")
    old = case.action(new.action_id)
    if old is None:
        raise _Refusal(CaseRefusal.UNKNOWN_ACTION, "no action with this id")
    if (old.owner, old.intervention_type, old.measure, old.description) != (
        new.owner,
        new.intervention_type,
        new.measure,
        new.description,
    ):
        raise _invalid("an update changes only status, deadline and note")
    if new.status not in ACTION_STATUS_MOVES[old.status]:
        raise _invalid(f"an action cannot go from {old.status.value} to {new.status.value}")
    if new.deadline != old.deadline and change.author != case.coordinator:
        raise _Refusal(CaseRefusal.NOT_AUTHOR, "only the coordinator moves a deadline")
    if new.updated_by != change.author:
        raise _invalid("the action names another party as its updater")
    if (new.status, new.deadline, new.note) == (old.status, old.deadline, old.note):
        raise _invalid("the update changes nothing")
    updated = replace(new, added_at=old.added_at, updated_at=change.issued_at)
    parts = [f"action {new.action_id.hex()[:8]}"]
    if new.status is not old.status:
        parts.append(f"{old.status.value} -> {new.status.value}")
    if new.deadline != old.deadline:
        parts.append("deadline moved")
    if new.note != old.note:
        parts.append("note")
    actions = tuple(updated if a.action_id == new.action_id else a for a in case.actions)
    return replace(case, actions=actions), f"{parts[0]}: {', '.join(parts[1:])}"


def _on_remove(
    covenant: Covenant, me: str, case: Case | None, change: CaseChange
) -> tuple[Case, str]:
    assert case is not None
    removed = [m for m in case.members if m not in change.members]
    if not removed or any(m not in case.members for m in change.members):
        raise _invalid("a removal removes members and adds none")
    if case.coordinator not in change.members:
        raise _invalid("the coordinator stays a member")
    access = Access.REMOVED if me in removed else Access.MEMBER
    return replace(case, members=change.members, access=access), f"removed {', '.join(removed)}"


def _on_close(
    covenant: Covenant, me: str, case: Case | None, change: CaseChange
) -> tuple[Case, str]:
    assert case is not None
    if not change.outcome.strip():
        raise _invalid("closing needs an outcome")
    closed = replace(
        case, state=CaseState.CLOSED, closed_at=change.issued_at, outcome=change.outcome
    )
    return closed, "closed"


_Handler = Callable[[Covenant, str, "Case | None", CaseChange], tuple[Case, str]]
_HANDLERS: Final[Mapping[ChangeKind, _Handler]] = MappingProxyType(
    {
        ChangeKind.OPEN: _on_open,
        ChangeKind.INVITE: _on_invite,
        ChangeKind.ACTION_ADD: _on_action_add,
        ChangeKind.ACTION_UPDATE: _on_action_update,
        ChangeKind.MEMBER_REMOVE: _on_remove,
        ChangeKind.CLOSE: _on_close,
    }
)


# --- composing a change at the author's node ----------------------------------------------------
#
# Each checks the caller's input, naming the field, and builds the change; the author's
# node then applies it with :func:`apply` like any other, which refuses what the author
# may not do.


def _member_case(case: Case | None, me: str) -> Case:
    if case is None:
        raise NotFound("no case with this id", field="case_id")
    if case.access is Access.REMOVED:
        raise NotAllowed(
            "this node was removed from the case: it is read-only here",
            field="case_id",
            reason="case.removed",
        )
    if case.state is CaseState.CLOSED:
        raise NotAllowed("the case is closed", field="case_id", reason="case.closed")
    return case


def _coordinating(case: Case | None, me: str) -> Case:
    case = _member_case(case, me)
    if case.coordinator != me:
        raise NotAllowed(
            "only the case's coordinator may do this",
            field="case_id",
            reason="case.not_coordinator",
        )
    return case


def _check_invitees(
    covenant: Covenant,
    me: str,
    notices: Sequence[broker_pb2.HitNotice],
    parties: Sequence[str],
    members: Sequence[str],
    field: str,
) -> tuple[str, ...]:
    shown = {m.party for notice in notices for m in notice.members if m.HasField("party")}
    for i, party in enumerate(parties):
        name = f"{field}[{i}]"
        _check_name(party, name)
        if party == me or party in members:
            raise InvalidInput("already a member", field=name, reason="case.already_member")
        if not covenant.is_party(party):
            raise InvalidInput("not a party of the covenant", field=name, reason="case.unknown")
        if party not in shown:
            raise InvalidInput(
                "a party outside the hit cannot be invited", field=name, reason="case.not_in_hit"
            )
    if len(set(parties)) != len(parties):
        raise InvalidInput("a party is listed twice", field=field, reason="case.duplicate")
    everyone = (*members, *parties)
    if len(everyone) > MAX_MEMBERS:
        raise MessageTooLarge(f"a case has at most {MAX_MEMBERS} members", field=field)
    for i, party in enumerate(parties):
        earlier = (*members, *parties[:i])
        if any(rules.hides(covenant, a, party) or rules.hides(covenant, party, a) for a in earlier):
            raise InvalidInput(
                "the covenant hides this party's role from another member: "
                "a case with both would tip it off",
                field=f"{field}[{i}]",
                reason="case.hidden_role",
            )
    return tuple(parties)


def _held_notice(covenant: Covenant, me: str, signed: common_pb2.Signed) -> broker_pb2.HitNotice:
    notice = verify_hit_notice(covenant, me, signed)
    if notice.kind == broker_pb2.HIT_NOTICE_KIND_CLOSED:
        raise InvalidInput("the hit is closed", field="hit_group_id", reason="case.hit_closed")
    return notice


def _linked(
    covenant: Covenant,
    me: str,
    notice: broker_pb2.HitNotice,
    signed: Sequence[common_pb2.Signed],
) -> list[broker_pb2.HitNotice]:
    if len(signed) > MAX_LINKED_NOTICES:
        raise MessageTooLarge(
            f"at most {MAX_LINKED_NOTICES} linked notices", field="linked_hit_group_ids"
        )
    linked = [_held_notice(covenant, me, s) for s in signed]
    if len({n.hit_group_id for n in (notice, *linked)}) != len(linked) + 1:
        raise InvalidInput("a hit group is named twice", field="linked_hit_group_ids")
    return linked


def _may_coordinate(covenant: Covenant, me: str) -> None:
    if not rules.may_coordinate(covenant, me):
        raise NotAllowed(
            "the covenant does not list this party's role as a case coordinator",
            reason="case.not_coordinator",
        )


def open_case(
    covenant: Covenant,
    me: str,
    signed_notice: common_pb2.Signed,
    *,
    case_id: bytes,
    message_id: bytes,
    title: str,
    invite: Sequence[str],
    officer: str,
    now: datetime,
    linked_notices: Sequence[common_pb2.Signed] = (),
) -> CaseChange:
    """OPEN a case on the hit of ``signed_notice`` (this node's own, as stored); with
    ``linked_notices`` (this node's notices of the other hits of a component of the
    subject network), on the component: parties of any of its hits may be invited."""
    _may_coordinate(covenant, me)
    notice = _held_notice(covenant, me, signed_notice)
    linked = _linked(covenant, me, notice, linked_notices)
    _text(title, "title", MAX_TITLE_BYTES, empty_ok=False)
    check_officer(officer)
    parties = _check_invitees(covenant, me, [notice, *linked], invite, (me,), "invite")
    return CaseChange(
        case_id=_id(case_id, "case_id"),
        message_id=_id(message_id, "message_id"),
        author=me,
        author_officer=officer,
        author_sequence=1,
        issued_at=_utc(now),
        kind=ChangeKind.OPEN,
        coordinator=me,
        title=title,
        hit_group_id=notice.hit_group_id,
        hit_notice=signed_notice,
        linked_notices=tuple(linked_notices),
        members=(me, *parties),
    )


def invite(
    covenant: Covenant,
    me: str,
    case: Case | None,
    parties: Sequence[str],
    *,
    message_id: bytes,
    officer: str,
    now: datetime,
    signed_notice: common_pb2.Signed,
    linked_notices: Sequence[common_pb2.Signed] = (),
) -> CaseChange:
    """INVITE further parties of the hit (``signed_notice``: this node's latest notice;
    ``linked_notices``: of a component case's other hits)."""
    case = _coordinating(case, me)
    _may_coordinate(covenant, me)
    check_officer(officer)
    if not parties:
        raise InvalidInput("name at least one party", field="parties")
    notice = _held_notice(covenant, me, signed_notice)
    linked = _linked(covenant, me, notice, linked_notices)
    added = _check_invitees(covenant, me, [notice, *linked], parties, case.members, "parties")
    return CaseChange(
        case_id=case.case_id,
        message_id=_id(message_id, "message_id"),
        author=me,
        author_officer=officer,
        author_sequence=case.next_sequence(me),
        issued_at=_utc(now),
        kind=ChangeKind.INVITE,
        coordinator=me,
        title=case.title,
        hit_group_id=case.hit_group_id,
        hit_notice=signed_notice,
        linked_notices=tuple(linked_notices),
        members=(*case.members, *added),
        actions=case.actions,
    )


def add_action(
    covenant: Covenant,
    me: str,
    case: Case | None,
    *,
    message_id: bytes,
    action_id: bytes,
    owner: str,
    intervention_type: InterventionType,
    measure: str,
    description: str,
    deadline: datetime,
    officer: str,
    now: datetime,
) -> CaseChange:
    """ACTION_ADD: a planned action owned by a member."""
    case = _coordinating(case, me)
    check_officer(officer)
    _check_name(owner, "action.owner")
    if owner not in case.members:
        raise InvalidInput(
            "the owner must be a member of the case", field="action.owner", reason="case.owner"
        )
    _text(measure, "action.measure", MAX_MEASURE_BYTES, empty_ok=False)
    _text(description, "action.description", MAX_TEXT_BYTES)
    if deadline.tzinfo is None:
        raise InvalidInput("a deadline has a time zone", field="action.deadline")
    now = _utc(now)
    action = Action(
        action_id=_id(action_id, "action.action_id"),
        owner=owner,
        intervention_type=InterventionType(intervention_type),
        measure=measure,
        description=description,
        deadline=_utc(deadline),
        status=ActionStatus.PLANNED,
        note="",
        updated_at=now,
        updated_by=me,
        added_at=now,
    )
    return CaseChange(
        case_id=case.case_id,
        message_id=_id(message_id, "message_id"),
        author=me,
        author_officer=officer,
        author_sequence=case.next_sequence(me),
        issued_at=now,
        kind=ChangeKind.ACTION_ADD,
        coordinator=case.coordinator,
        action=action,
    )


def update_action(
    covenant: Covenant,
    me: str,
    case: Case | None,
    action_id: bytes,
    *,
    message_id: bytes,
    status: ActionStatus | None,
    deadline: datetime | None,
    note: str,
    officer: str,
    now: datetime,
) -> CaseChange:
    """ACTION_UPDATE by the action's owner or the coordinator: ``None``/empty keeps a value."""
    case = _member_case(case, me)
    check_officer(officer)
    old = case.action(_id(action_id, "action_id"))
    if old is None:
        raise NotFound("no action with this id in the case", field="action_id")
    if me not in (old.owner, case.coordinator):
        raise NotAllowed(
            "only the action's owner or the coordinator updates it",
            field="action_id",
            reason="case.not_owner",
        )
    _text(note, "note", MAX_TEXT_BYTES)
    new_status = old.status if status is None else ActionStatus(status)
    if new_status not in ACTION_STATUS_MOVES[old.status]:
        raise InvalidInput(
            f"an action cannot go from {old.status.value} to {new_status.value}",
            field="status",
            reason="case.status_move",
        )
    new_deadline = old.deadline
    if deadline is not None:
        if deadline.tzinfo is None:
            raise InvalidInput("a deadline has a time zone", field="deadline")
        new_deadline = _utc(deadline)
        if new_deadline != old.deadline and me != case.coordinator:
            raise NotAllowed(
                "only the coordinator moves a deadline", field="deadline", reason="case.deadline"
            )
    new_note = note or old.note
    if (new_status, new_deadline, new_note) == (old.status, old.deadline, old.note):
        raise InvalidInput("the update changes nothing", field="status", reason="case.no_change")
    now = _utc(now)
    action = replace(
        old, status=new_status, deadline=new_deadline, note=new_note, updated_at=now, updated_by=me
    )
    return CaseChange(
        case_id=case.case_id,
        message_id=_id(message_id, "message_id"),
        author=me,
        author_officer=officer,
        author_sequence=case.next_sequence(me),
        issued_at=now,
        kind=ChangeKind.ACTION_UPDATE,
        coordinator=case.coordinator,
        action=action,
    )


def remove_members(
    covenant: Covenant,
    me: str,
    case: Case | None,
    parties: Sequence[str],
    *,
    message_id: bytes,
    officer: str,
    now: datetime,
) -> CaseChange:
    """MEMBER_REMOVE: the removed parties receive this and nothing further."""
    case = _coordinating(case, me)
    check_officer(officer)
    if not parties:
        raise InvalidInput("name at least one party", field="parties")
    for i, party in enumerate(parties):
        name = f"parties[{i}]"
        _check_name(party, name)
        if party == me:
            raise InvalidInput(
                "the coordinator stays a member", field=name, reason="case.coordinator"
            )
        if party not in case.members:
            raise InvalidInput("not a member of the case", field=name, reason="case.not_member")
    if len(set(parties)) != len(parties):
        raise InvalidInput("a party is listed twice", field="parties", reason="case.duplicate")
    return CaseChange(
        case_id=case.case_id,
        message_id=_id(message_id, "message_id"),
        author=me,
        author_officer=officer,
        author_sequence=case.next_sequence(me),
        issued_at=_utc(now),
        kind=ChangeKind.MEMBER_REMOVE,
        coordinator=me,
        members=tuple(m for m in case.members if m not in parties),
    )


def close_case(
    covenant: Covenant,
    me: str,
    case: Case | None,
    *,
    outcome: str,
    message_id: bytes,
    officer: str,
    now: datetime,
) -> CaseChange:
    """CLOSE the case with an outcome; it is read-only everywhere afterwards."""
    case = _coordinating(case, me)
    check_officer(officer)
    _text(outcome, "outcome", MAX_TEXT_BYTES, empty_ok=False)
    return CaseChange(
        case_id=case.case_id,
        message_id=_id(message_id, "message_id"),
        author=me,
        author_officer=officer,
        author_sequence=case.next_sequence(me),
        issued_at=_utc(now),
        kind=ChangeKind.CLOSE,
        coordinator=case.coordinator,
        outcome=outcome,
    )


# --- sealing --------------------------------------------------------------------------------------


def notice_fits(covenant: Covenant, recipient: str, signed: common_pb2.Signed) -> bool:
    """Whether the coordinator's notice tells ``recipient`` nothing its own visibility rule
    withholds: no member whose role it hides, no more than its level shows, and no hit it
    is not a party of unless its role coordinates (a component case's other hits: a
    partner learns of a hit only if it holds a signal in it)."""
    if not covenant.is_party(recipient):
        return False
    rule = covenant.policy.visibility_for(covenant.role_of(recipient))
    if rule is None:
        return False
    try:
        notice = broker_pb2.HitNotice.FromString(signed.body)
    except DecodeError:
        return False
    shown = notice.visibility
    needs = (
        Level.CATEGORIES
        if shown.categories
        else Level.PARTIES
        if shown.parties
        else Level.ROLES
        if shown.roles
        else Level.COUNT
    )
    if not rule.level.at_least(needs):
        return False
    if not rule.coordinator and not any(
        m.HasField("party") and m.party == recipient for m in notice.members
    ):
        return False
    hidden = set(rule.hidden_roles)
    return not any(m.HasField("role") and m.role in hidden for m in notice.members) and not any(
        m.HasField("party") and rules.hides(covenant, recipient, m.party) for m in notice.members
    )


def recipients(before: Case | None, after: Case, me: str) -> tuple[str, ...]:
    """Who a change goes to: the members after it, and for a removal the removed ones too."""
    everyone = list(after.members)
    if before is not None:
        everyone += [m for m in before.members if m not in after.members]
    return tuple(m for m in everyone if m != me)


def seal(
    keys: PartyKeys,
    covenant: Covenant,
    before: Case | None,
    applied: Applied,
    envelope_id: Callable[[], bytes],
) -> list[Envelope]:
    """The change signed (context ``case-message``) and sealed to each recipient, one
    envelope each; parties no longer in the covenant are skipped (they are cut off)."""
    change = applied.change
    old_members = () if before is None else before.members
    envelopes = []
    for recipient in recipients(before, applied.case, keys.party):
        if not covenant.is_party(recipient):
            continue
        with_notice = change.hit_notice is not None and all(
            notice_fits(covenant, recipient, n) for n in (change.hit_notice, *change.linked_notices)
        )
        message = change.to_proto(
            with_notice=with_notice,
            with_actions=change.kind is ChangeKind.INVITE and recipient not in old_members,
        )
        envelopes.append(
            _seal(
                keys,
                covenant,
                recipient,
                SignatureContext.CASE_MESSAGE,
                message.SerializeToString(),
                envelope_id(),
            )
        )
    return envelopes


# --- the coordinator's board and accountability ------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoardEntry:
    """One open action of an open case the node coordinates."""

    case: Case
    action: Action
    overdue: bool


def board(
    cases: Iterable[Case], me: str, now: datetime, *, overdue_only: bool = False
) -> list[BoardEntry]:
    """Open actions of open cases ``me`` coordinates: overdue first, then by deadline."""
    entries = [
        BoardEntry(case, action, action.overdue(now))
        for case in cases
        if case.coordinator == me and case.phase is Phase.OPEN
        for action in case.actions
        if action.status not in _FINISHED
    ]
    if overdue_only:
        entries = [e for e in entries if e.overdue]
    return sorted(entries, key=lambda e: (not e.overdue, e.action.deadline, e.case.case_id))


@dataclass(frozen=True, slots=True)
class CaseActivity:
    """One fact for the picture's accountability: a case opened or closed, or an action
    (an intervention of a type) added, in a month ``YYYY-MM``. Carries no subject."""

    kind: str  # "opened" | "closed" | "intervention"
    intervention_type: str | None
    month: str
