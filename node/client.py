"""The client library for partners' own applications: talk to your node's local API.

A node serves its local API on a Unix socket (or on ``127.0.0.1:PORT``) of the
machine it runs on; this library connects there, sends the partner's signals
and reads the hits the node received. It returns frozen dataclasses, never
protobuf messages, and raises the typed errors of
:mod:`samenloop.policies.errors` (``InvalidInput`` with ``field`` and
``reason``, ``NotFound``, ``Replay``, ``Unavailable`` when the node cannot be
reached, ...)::

    from samenloop.node.client import NodeClient, SignalInput

    with NodeClient.from_config("/etc/samenloop/node.toml") as node:
        node.add_signal(
            "DOSSIER-2024-0173",
            "vastgoedmisbruik",
            [("kvk", "0123 4567"), ("address", "1234 AB 12-a")],
            details={"toelichting": "leegstand, veel wisselende huurders"},
        )
        report = node.import_signals(rows)          # rows: SignalInput, per-row report
        for hit in node.watch_hits(after_feed_seq=last_seen):
            ...                                     # resume with hit.sequence
        asked = node.request_disclosure(hit.group_id, "politie", ref, "bibob",
                                        ["naam"], officer="j.jansen@gemeente.nl")
        node.disclosure(asked.request_id).released_fields   # once granted

The node takes only calls that carry its API token (a 0600 file in its data
directory, ``api_token`` in ``node.toml``; see :mod:`samenloop.node.daemon.api_token`):
:meth:`NodeClient.from_config` reads it where the configuration says, or give
it yourself, ``NodeClient("unix:/var/lib/samenloop/api.sock", token=...)``.
Either way the application runs as the node's account, or is handed the token
by it.

Disclosures follow the covenant: the owner's node answers with exactly the
fields its release rule allows, a refusal with its reason, or -- where the
rule needs four eyes -- first a pending state until a second officer of the
owner approves (:meth:`NodeClient.approve_disclosure`).

Raw identifiers travel only over this local connection; the node turns them
into tokens before anything leaves it. Nothing here logs an identifier.

Over 800 lines: the public client library, one class mirroring the local API call for
call with its result types, so that partners import one module.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from samenloop.node.cases.machine import (
    INTERVENTION_TO_PROTO,
    KIND_TO_PROTO,
    PROTO_STATES,
    STATE_TO_PROTO,
    STATUS_TO_PROTO,
    ActionStatus,
    CaseState,
    ChangeKind,
    InterventionType,
    intervention_from_proto,
    status_from_proto,
)
from samenloop.node.daemon.api_token import bearer, read_token
from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
from samenloop.node.identifiers.attributes import area_kind_of
from samenloop.node.identifiers.normalise import Identifier, IdentifierType, identifier_type, parse
from samenloop.node.identifiers.person_hits import GIVEN_PARTS, GivenParts
from samenloop.node.network.graph import Component, Edge, Vertex
from samenloop.node.picture.arithmetic import Dimension, Measure, Period, ReleasedTable
from samenloop.node.picture.protocol import released_from_proto
from samenloop.node.signals.models import AreaKind, HitKind, HitState, SignalState
from samenloop.policies.config import load_node_config
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    SamenloopError,
    UnknownType,
)
from samenloop.policies.rpc import error_from_rpc
from samenloop.v1 import (
    broker_pb2,
    case_pb2,
    common_pb2,
    disclosure_pb2,
    node_pb2,
    node_pb2_grpc,
    picture_pb2,
)

__all__ = [
    "RESTORABLE_TYPES",
    "Case",
    "CaseAction",
    "CaseBoardEntry",
    "CaseHistoryEntry",
    "Disclosure",
    "FeedRestored",
    "GivenParts",
    "Hit",
    "HitMember",
    "HitVisibility",
    "ImportReport",
    "KeyHolderStatus",
    "NodeClient",
    "NodeStatus",
    "OfficerDecision",
    "OwnSignal",
    "Picture",
    "PictureCollection",
    "PictureRefusalNote",
    "ProbablePersonHit",
    "RowError",
    "RowResult",
    "Signal",
    "SignalInput",
    "normalise_target",
]

#: Identifier types whose dropped leading zero can be restored (``leading_zero_dropped``).
RESTORABLE_TYPES: Final = frozenset(
    {IdentifierType.BSN, IdentifierType.RSIN, IdentifierType.KVK, IdentifierType.BAG}
)
MAX_IMPORT_ROWS: Final[int] = common_pb2.LIMITS_MAX_SIGNALS_PER_IMPORT_CALL
MAX_MESSAGE_BYTES: Final[int] = common_pb2.LIMITS_MAX_MESSAGE_BYTES
DEFAULT_TIMEOUT: Final = 30.0
IMPORT_TIMEOUT: Final = 300.0
DEFAULT_CHUNK: Final = 1000
_LOOPBACK_NAMES: Final = frozenset({"localhost"})

_CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

_TYPE_TO_PROTO: Final = {
    t: common_pb2.IdentifierType.Value(f"IDENTIFIER_TYPE_{t.name}") for t in IdentifierType
}
_PROTO_TYPES: Final[dict[int, IdentifierType]] = {v: t for t, v in _TYPE_TO_PROTO.items()}
_SIGNAL_STATES: Final[dict[int, SignalState]] = {
    node_pb2.SignalState.Value(f"SIGNAL_STATE_{s.name}"): s for s in SignalState
}
_HIT_STATE_TO_PROTO: Final = {s: node_pb2.HitState.Value(f"HIT_STATE_{s.name}") for s in HitState}
_HIT_STATES: Final[dict[int, HitState]] = {v: s for s, v in _HIT_STATE_TO_PROTO.items()}
_HIT_KINDS: Final[dict[int, HitKind]] = {
    broker_pb2.HitNoticeKind.Value(f"HIT_NOTICE_KIND_{k.name}"): k for k in HitKind
}
_AREA_TO_PROTO: Final = {k: node_pb2.AreaKind.Value(f"AREA_KIND_{k.name}") for k in AreaKind}
_AREA_KINDS: Final[dict[int, AreaKind]] = {v: k for k, v in _AREA_TO_PROTO.items()}
_DIRECTION_TO_PROTO: Final = {
    d: node_pb2.DisclosureDirection.Value(f"DISCLOSURE_DIRECTION_{d.name}")
    for d in DisclosureDirection
}
_DIRECTIONS: Final[dict[int, DisclosureDirection]] = {v: d for d, v in _DIRECTION_TO_PROTO.items()}
_DISCLOSURE_STATE_TO_PROTO: Final = {
    s: node_pb2.DisclosureState.Value(f"DISCLOSURE_STATE_{s.name}") for s in DisclosureState
}
_DISCLOSURE_STATES: Final[dict[int, DisclosureState]] = {
    v: s for s, v in _DISCLOSURE_STATE_TO_PROTO.items()
}
_PREFIX: Final = "DISCLOSURE_REFUSAL_REASON_"
_CONNECTIONS: Final = {
    node_pb2.BROKER_CONNECTION_CONNECTED: "connected",
    node_pb2.BROKER_CONNECTION_CONNECTING: "connecting",
    node_pb2.BROKER_CONNECTION_DISCONNECTED: "disconnected",
}

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


# --- what goes in ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class SignalInput:
    """One signal to add or import, as the partner has it (the node normalises it).

    ``identifiers`` are ``(type, value)`` pairs; the type is an
    :class:`~samenloop.node.identifiers.normalise.IdentifierType` or its name (``"bsn"``).
    ``leading_zero_dropped`` says the source (typically a spreadsheet column of
    numbers) dropped leading zeros: ``True`` for every type where that can be
    restored (:data:`RESTORABLE_TYPES`), or the set of types it applies to. It
    is applied here, before sending: the wire format carries no such flag.
    ``expires_at`` must carry a time zone; unset, the node's retention decides.
    The coarse attributes for the regional picture are optional: ``area_code``
    (with ``area_kind``, or the kind the code's shape says), ``branch`` (an SBI
    code) and ``month`` (``YYYY-MM``); unset, the node derives the area from an
    address identifier and the month from the day the signal is added.
    ``person_parts`` are the postcode, house number and gender of the signal's one
    ``person`` identifier, as a register keeps them beside the name and birth date: the
    node derives person keys from them and stores none of them as written. Given without
    a person identifier, or with several, they are refused (field ``person_parts``).
    """

    reference: str
    category: str
    identifiers: Sequence[tuple[IdentifierType | str, str]]
    details: Mapping[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None
    leading_zero_dropped: bool | frozenset[IdentifierType] = False
    area_kind: AreaKind | str | None = None
    area_code: str | None = None
    branch: str | None = None
    month: str | None = None
    person_parts: GivenParts | None = None

    def __repr__(self) -> str:
        return (
            f"SignalInput(reference={self.reference!r}, identifiers={len(self.identifiers)}, "
            f"details={len(self.details)})"
        )

    def restores(self, kind: IdentifierType) -> bool:
        """Whether a dropped leading zero of an identifier of ``kind`` is put back."""
        if kind not in RESTORABLE_TYPES:
            return False
        if isinstance(self.leading_zero_dropped, bool):
            return self.leading_zero_dropped
        return kind in self.leading_zero_dropped


# --- what comes out ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Signal:
    """A signal as the node holds it: identifiers in canonical form, expiry, state."""

    signal_id: str
    reference: str
    category: str
    identifiers: tuple[Identifier, ...]
    details: Mapping[str, str]
    expires_at: datetime | None
    state: SignalState
    created_at: datetime | None
    area_kind: AreaKind | None = None
    area_code: str | None = None
    branch: str | None = None
    month: str | None = None

    def __repr__(self) -> str:
        return (
            f"Signal(signal_id={self.signal_id!r}, reference={self.reference!r}, "
            f"state={self.state.value}, identifiers={len(self.identifiers)})"
        )


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one field of an imported row."""

    #: Index of the row in the rows given to :meth:`NodeClient.import_signals` (0-based).
    row: int
    #: Path of the field within the row: ``reference``, ``identifiers[1].value``, ...
    field: str
    #: Machine-readable rule that failed (``bsn.check_digit``).
    reason: str
    #: For people; never repeats the value.
    message: str


@dataclass(frozen=True, slots=True)
class RowResult:
    """What became of one imported row."""

    row: int
    #: The stored signal's id; None if the row was refused or only validated.
    signal_id: str | None
    #: True if a signal with this reference and content already existed.
    unchanged: bool
    errors: tuple[RowError, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The outcome of :meth:`NodeClient.import_signals`: one result per row, in order."""

    results: tuple[RowResult, ...]
    imported: int
    unchanged: int
    rejected: int

    @property
    def errors(self) -> tuple[RowError, ...]:
        return tuple(e for r in self.results for e in r.errors)


@dataclass(frozen=True, slots=True)
class OwnSignal:
    """One of this node's own signals in a hit (None where the node no longer knows it)."""

    signal_ref: bytes
    signal_id: str | None
    reference: str | None
    category: str | None
    identifier_type: IdentifierType | None
    #: For a person key (``identifier_type`` is then ``person``): its kind's wire name.
    person_kind: str | None = None


@dataclass(frozen=True, slots=True)
class ProbablePersonHit:
    """A probable person hit (``docs/linkage.md``): one own signal and one other party,
    the person key kinds on which they share an open hit, and its score in bits."""

    signal_id: str
    #: The party id; ``role:<role>`` where only its role is visible; empty where neither is.
    party: str
    agreeing_kinds: tuple[str, ...]
    score: float
    #: At least the covenant's ``disclosure_score``.
    disclosable: bool


@dataclass(frozen=True, slots=True)
class HitMember:
    """Another member of a hit, as far as this node may see it."""

    party: str | None
    role: str | None
    signal_refs: tuple[bytes, ...]
    #: Only categories the covenant lists.
    categories: tuple[str, ...]
    #: How many other texts the member sealed as categories (not shown: not the covenant's).
    unknown_categories: int = 0


@dataclass(frozen=True, slots=True)
class HitVisibility:
    """What the covenant lets this node see of a hit."""

    party_count: bool
    roles: bool
    parties: bool
    categories: bool


@dataclass(frozen=True, slots=True)
class Hit:
    """A hit as the node knows it: the latest verified notice of its group."""

    group_id: bytes
    revision: int
    state: HitState
    last_kind: HitKind
    visibility: HitVisibility
    own_signals: tuple[OwnSignal, ...]
    party_count: int | None
    members: tuple[HitMember, ...]
    first_seen: datetime | None
    last_seen: datetime | None
    received_at: datetime | None
    #: The notice as the broker signed it (a serialized ``samenloop.v1.Signed``): the
    #: proof to attach to disclosure requests and cases.
    notice: bytes
    #: From :meth:`NodeClient.watch_hits`: the node's sequence number of this change;
    #: resume after it. None in lists.
    sequence: int | None = None
    #: From :meth:`NodeClient.watch_hits`: the feed epoch of ``sequence``; keep it with the
    #: sequence and resume with both. None in lists.
    feed_epoch: int | None = None
    #: From :meth:`NodeClient.watch_hits`: the node was restored from a backup and this
    #: change may repeat one the application processed before; apply it only if its
    #: ``revision`` is higher than the one the application holds for the group.
    restated: bool = False
    #: For a hit on person keys: the probable person hits it is part of (shown ones only).
    probable_hits: tuple[ProbablePersonHit, ...] = ()

    @property
    def group_hex(self) -> str:
        return self.group_id.hex()


@dataclass(frozen=True, slots=True)
class KeyHolderStatus:
    """The node's key-holder role: its seats (epoch, index) and counters."""

    seats: tuple[tuple[int, int], ...]
    channel_open: bool
    requests_served: int
    elements_evaluated: int
    requests_refused: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """The node's health, as ``samenloop node status`` shows it."""

    party: str
    software_version: str
    #: "connected", "connecting", "disconnected" or "unknown".
    broker_connection: str
    broker_address: str
    last_connected: datetime | None
    last_error: str
    covenant_id: str
    covenant_version: int
    key_epoch: int
    active_signals: int
    outbox_pending: int
    open_hits: int
    mailbox_acked_cursor: int
    pending_approvals: int
    key_holder: KeyHolderStatus | None
    #: Whether an unexpired covenant timestamp vouches for the covenant version held
    #: (None: the node does not say). While it does not, the node is stale: it seals and
    #: releases nothing new, and ``covenant_stale_reason`` says why.
    covenant_fresh: bool | None = None
    #: When the newest covenant timestamp for that version expires (None if none held).
    covenant_fresh_until: datetime | None = None
    covenant_stale_reason: str = ""
    #: The covenant's ``[picture] classification`` ("" for none), for the report's pages.
    picture_classification: str = ""
    #: The covenant's signal categories, in its order.
    categories: tuple[str, ...] = ()
    #: While a rotation of the OPRF key is staged: the staged epoch (else 0), and of
    #: this node's live identifiers how many are re-tokenised under it.
    staged_key_epoch: int = 0
    rotation_restated: int = 0
    rotation_live: int = 0


@dataclass(frozen=True, slots=True)
class OfficerDecision:
    """A second officer's decision on a pending incoming request (four eyes)."""

    officer: str
    approved: bool
    note: str
    decided_at: datetime | None


@dataclass(frozen=True, slots=True, repr=False)
class Disclosure:
    """A disclosure request as this node knows it, outgoing (asked) or incoming (answered).

    ``released_fields``: for an outgoing request that was granted, the details
    received; for an incoming one, the names of the fields released (values
    empty: the node keeps no copy). ``refusal_reason`` is the covenant's
    reason in lower case (``not_allowed``, ``replay``, ...), or None.
    """

    request_id: bytes
    direction: DisclosureDirection
    state: DisclosureState
    requester: str
    owner: str
    hit_group_id: bytes
    signal_ref: bytes
    signal_id: str | None
    purpose: str
    requested_fields: tuple[str, ...]
    requester_officer: str
    justification: str
    released_fields: Mapping[str, str]
    withheld_fields: tuple[str, ...]
    refusal_reason: str | None
    refusal_message: str
    decisions: tuple[OfficerDecision, ...]
    requested_at: datetime | None
    decided_at: datetime | None
    #: On a probable person hit: the requester's score of it in bits, as it said.
    person_score: float | None = None

    def __repr__(self) -> str:
        return (
            f"Disclosure(request_id={self.request_id.hex()!r}, "
            f"direction={self.direction.value}, state={self.state.value})"
        )

    @property
    def request_hex(self) -> str:
        return self.request_id.hex()


@dataclass(frozen=True, slots=True)
class PictureCollection:
    """A picture collection the node started (its request id and the parties asked; both
    empty for a dry run), and what it costs of the privacy budget: ``epsilon_needed`` on
    each month of the period for the planned requests, against ``epsilon_remaining``,
    what the node had left before them (both 0 in exact mode, ``noisy`` False)."""

    request_id: bytes
    asked: tuple[str, ...]
    noisy: bool = False
    epsilon_needed: float = 0.0
    epsilon_remaining: float = 0.0


@dataclass(frozen=True, slots=True)
class PictureRefusalNote:
    """A party that refused to contribute: the reason in lower case (``not_allowed``,
    ``budget_exhausted``, ``invalid_request``, ``replay``) and its message."""

    contributor: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Picture:
    """A combined picture table after disclosure control, as the node shows it.

    ``table`` is a :class:`~samenloop.node.picture.arithmetic.ReleasedTable`: each cell is
    exact, noisy (with its noise scale) or suppressed (no count); value
    ``"totaal"`` marks totals. ``contributors`` answered with counts,
    ``refusals`` refused, ``missing`` have not answered yet.
    """

    table: ReleasedTable
    contributors: tuple[str, ...]
    missing: tuple[str, ...]
    refusals: tuple[PictureRefusalNote, ...]


# --- conversions ------------------------------------------------------------------------------


def _disclosure(message: node_pb2.Disclosure) -> Disclosure:
    reason_name = disclosure_pb2.DisclosureRefusalReason.Name(message.refusal_reason)
    return Disclosure(
        request_id=message.request_id,
        direction=_DIRECTIONS.get(message.direction, DisclosureDirection.OUTGOING),
        state=_DISCLOSURE_STATES.get(message.state, DisclosureState.SENT),
        requester=message.requester,
        owner=message.owner,
        hit_group_id=message.hit_group_id,
        signal_ref=message.signal_ref,
        signal_id=message.signal_id or None,
        purpose=message.purpose,
        requested_fields=tuple(message.requested_fields),
        requester_officer=message.requester_officer,
        justification=message.justification,
        released_fields=MappingProxyType(dict(message.released_fields)),
        withheld_fields=tuple(message.withheld_fields),
        refusal_reason=None
        if message.refusal_reason == disclosure_pb2.DISCLOSURE_REFUSAL_REASON_UNSPECIFIED
        else reason_name.removeprefix(_PREFIX).lower(),
        refusal_message=message.refusal_message,
        decisions=tuple(
            OfficerDecision(d.officer, d.approved, d.note, _time(d.decided_at))
            for d in message.decisions
        ),
        requested_at=_time(message.requested_at),
        decided_at=_time(message.decided_at),
        person_score=message.person_score if message.HasField("person_score") else None,
    )


def _period(period: str | Period) -> Period:
    return period if isinstance(period, Period) else Period.parse(period)


def _measure(measure: Measure | str, field: str) -> Measure:
    return measure if isinstance(measure, Measure) else Measure.parse(measure, field=field)


def _dimension(dimension: Dimension | str, field: str) -> Dimension:
    if isinstance(dimension, Dimension):
        return dimension
    return Dimension.parse(dimension, field=field)


def _vertex(message: node_pb2.NetworkVertex) -> Vertex:
    return Vertex(
        group_id=message.hit_group_id,
        identifier_type=message.identifier_type,
        parties=frozenset(message.parties),
        first_seen=message.first_seen.ToDatetime(tzinfo=UTC),
        last_seen=message.last_seen.ToDatetime(tzinfo=UTC),
        score=message.person_score if message.HasField("person_score") else None,
    )


def _edge(message: node_pb2.NetworkEdge) -> Edge:
    return Edge(
        a=message.a,
        b=message.b,
        reporter=message.reporter,
        count=message.count,
        first_reported=_time(message.first_reported),
        last_reported=_time(message.last_reported),
    )


def _time(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def _signal_message(row: SignalInput, field_prefix: str = "") -> node_pb2.Signal:
    """The protobuf ``Signal`` for a row; applies leading-zero restoration locally."""
    message = node_pb2.Signal(
        reference=row.reference, category=row.category, details=dict(row.details)
    )
    for j, (kind_name, value) in enumerate(row.identifiers):
        try:
            kind = identifier_type(kind_name)
        except SamenloopError as error:
            raise UnknownType(
                error.message, field=f"{field_prefix}identifiers[{j}].type", reason=error.reason
            ) from None
        if row.restores(kind):
            value = parse(
                kind,
                value,
                field=f"{field_prefix}identifiers[{j}].value",
                leading_zero_dropped=True,
            ).canonical
        message.identifiers.add(type=_TYPE_TO_PROTO[kind], value=value)
    if row.person_parts is not None and not row.person_parts.empty:
        _add_person_parts(message, row.person_parts, f"{field_prefix}person_parts")
    if row.expires_at is not None:
        if row.expires_at.tzinfo is None:
            raise InvalidInput(
                "expires_at must carry a time zone", field=f"{field_prefix}expires_at"
            )
        message.expires_at.FromDatetime(row.expires_at.astimezone(UTC))
    if row.area_code:
        try:
            area_kind = None if row.area_kind is None else AreaKind(row.area_kind)
        except ValueError:
            raise UnknownType(
                "an area kind is postcode4, cbs_wijk or cbs_buurt",
                field=f"{field_prefix}attributes.area.kind",
            ) from None
        area_kind = area_kind or area_kind_of(row.area_code)
        if area_kind is None:
            raise InvalidInput(
                "give the area's kind (postcode4, cbs_wijk, cbs_buurt)",
                field=f"{field_prefix}attributes.area.kind",
            )
        message.attributes.area.kind = _AREA_TO_PROTO[area_kind]
        message.attributes.area.code = row.area_code
    if row.branch:
        message.attributes.branch = row.branch
    if row.month:
        message.attributes.month = row.month
    return message


def _add_person_parts(message: node_pb2.Signal, given: GivenParts, where: str) -> None:
    """Put ``given`` on the message's one ``person`` identifier (the node checks them)."""
    person = _TYPE_TO_PROTO[IdentifierType.PERSON]
    persons = [item for item in message.identifiers if item.type == person]
    if len(persons) != 1:
        raise InvalidInput(
            "person parts (postcode, house number, gender) go with a person identifier"
            if not persons
            else f"person parts go with one person identifier; the signal has {len(persons)}",
            field=where,
            reason="person.parts_without_person" if not persons else "person.parts_ambiguous",
        )
    for name in GIVEN_PARTS:
        value = getattr(given, name)
        if value is not None:
            setattr(persons[0].person_parts, name, value)


def _signal(message: node_pb2.Signal) -> Signal:
    attributes = message.attributes
    area_kind = _AREA_KINDS.get(attributes.area.kind)
    return Signal(
        signal_id=message.signal_id,
        reference=message.reference,
        category=message.category,
        identifiers=tuple(
            Identifier(_PROTO_TYPES[i.type], i.value)
            for i in message.identifiers
            if i.type in _PROTO_TYPES
        ),
        details=MappingProxyType(dict(message.details)),
        expires_at=_time(message.expires_at),
        state=_SIGNAL_STATES.get(message.state, SignalState.ACTIVE),
        created_at=_time(message.created_at),
        area_kind=area_kind,
        area_code=attributes.area.code if area_kind is not None else None,
        branch=attributes.branch or None,
        month=attributes.month or None,
    )


def _hit(
    message: node_pb2.Hit,
    sequence: int | None = None,
    feed_epoch: int | None = None,
    restated: bool = False,
) -> Hit:
    visibility = message.visibility
    return Hit(
        feed_epoch=feed_epoch,
        restated=restated,
        group_id=message.hit_group_id,
        revision=message.revision,
        state=_HIT_STATES.get(message.state, HitState.OPEN),
        last_kind=_HIT_KINDS.get(message.last_kind, HitKind.UPDATED),
        visibility=HitVisibility(
            party_count=visibility.party_count,
            roles=visibility.roles,
            parties=visibility.parties,
            categories=visibility.categories,
        ),
        own_signals=tuple(
            OwnSignal(
                signal_ref=own.signal_ref,
                signal_id=own.signal_id or None,
                reference=own.reference or None,
                category=own.category or None,
                identifier_type=_PROTO_TYPES.get(own.identifier_type),
                person_kind=own.person_kind or None,
            )
            for own in message.own_signals
        ),
        probable_hits=tuple(
            ProbablePersonHit(
                signal_id=p.signal_id,
                party=p.party,
                agreeing_kinds=tuple(p.agreeing_kinds),
                score=p.score,
                disclosable=p.disclosable,
            )
            for p in message.probable_hits
        ),
        party_count=message.party_count if message.HasField("party_count") else None,
        members=tuple(
            HitMember(
                party=member.party if member.HasField("party") else None,
                role=member.role if member.HasField("role") else None,
                signal_refs=tuple(member.signal_refs),
                categories=tuple(member.categories),
                unknown_categories=member.unknown_categories,
            )
            for member in message.members
        ),
        first_seen=_time(message.first_seen),
        last_seen=_time(message.last_seen),
        received_at=_time(message.received_at),
        notice=message.notice.SerializeToString(),
        sequence=sequence,
    )


def _status(message: node_pb2.GetStatusResponse) -> NodeStatus:
    holder: KeyHolderStatus | None = None
    if message.HasField("key_holder"):
        kh = message.key_holder
        holder = KeyHolderStatus(
            seats=tuple((s.key_epoch, s.holder_index) for s in kh.seats),
            channel_open=kh.channel_open,
            requests_served=kh.requests_served,
            elements_evaluated=kh.elements_evaluated,
            requests_refused=kh.requests_refused,
        )
    return NodeStatus(
        party=message.party,
        software_version=message.software_version,
        broker_connection=_CONNECTIONS.get(message.broker_connection, "unknown"),
        broker_address=message.broker_address,
        last_connected=_time(message.last_connected),
        last_error=message.last_error,
        covenant_id=message.covenant_id,
        covenant_version=message.covenant_version,
        key_epoch=message.key_epoch,
        active_signals=message.active_signals,
        outbox_pending=message.outbox_pending,
        open_hits=message.open_hits,
        mailbox_acked_cursor=message.mailbox_acked_cursor,
        pending_approvals=message.pending_approvals,
        key_holder=holder,
        covenant_fresh=(
            message.covenant_freshness.fresh if message.HasField("covenant_freshness") else None
        ),
        covenant_fresh_until=_time(message.covenant_freshness.fresh_until),
        covenant_stale_reason=message.covenant_freshness.stale_reason,
        picture_classification=message.picture_classification,
        categories=tuple(message.categories),
        staged_key_epoch=message.staged_key_epoch,
        rotation_restated=message.rotation_restated,
        rotation_live=message.rotation_live,
    )


def normalise_target(target: str | Path) -> str:
    """The gRPC target for a node's local API: ``unix:PATH`` for a socket, or a loopback
    ``HOST:PORT``. A bare path (or :class:`~pathlib.Path`) is a Unix socket; any other
    host is refused, since the local API is never served beyond the machine."""
    if isinstance(target, Path):
        return f"unix:{target}"
    if not isinstance(target, str) or not target:
        raise ConfigurationError("give a Unix socket path or 127.0.0.1:PORT", field="target")
    if target.startswith("unix:"):
        return target
    host, sep, port = target.rpartition(":")
    if not sep or "/" in target:
        return f"unix:{target}"
    host = host.strip("[]")
    if host not in _LOOPBACK_NAMES:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigurationError(
                "the node's local API is reached on a Unix socket or a loopback address only",
                field="target",
            )
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError("not a port number", field="target")
    return target


@dataclass(frozen=True, slots=True)
class FeedRestored:
    """The node said that it was restored from a backup since the feed epoch the watch
    resumed in: the watch goes on after ``resumed_after`` of ``feed_epoch``, and changes
    that may repeat what the application processed before come with ``restated``."""

    feed_epoch: int
    resumed_after: int


class HitWatch(Iterator[Hit]):
    """The stream of :meth:`NodeClient.watch_hits`: iterate it; :meth:`cancel` (from any
    thread) ends it, and so does leaving its ``with`` block. :attr:`restored` is set
    (before the first hit) when the node was restored from a backup since the epoch
    the watch resumed in."""

    def __init__(
        self,
        call: Iterator[node_pb2.WatchHitsResponse],
        cancel: Callable[[], None],
        *,
        until_caught_up: bool = False,
    ):
        self._call = call
        self._cancel = cancel
        self._cancelled = False
        self._until_caught_up = until_caught_up
        self.restored: FeedRestored | None = None
        #: Set when the node said the backlog was sent (a watch ``until_caught_up``).
        self.caught_up = False

    def __iter__(self) -> HitWatch:
        return self

    def __next__(self) -> Hit:
        while True:
            try:
                response = next(self._call)
            except grpc.RpcError as error:
                if self._cancelled:
                    raise StopIteration from None
                raise error_from_rpc(error) from None
            if response.HasField("feed_restored"):
                told = response.feed_restored
                self.restored = FeedRestored(told.feed_epoch, told.resumed_after)
                continue
            if response.caught_up:
                self.caught_up = True
                if self._until_caught_up:
                    self.cancel()
                    raise StopIteration
                continue
            return _hit(
                response.hit,
                response.sequence,
                feed_epoch=response.feed_epoch or None,
                restated=response.restated,
            )

    def cancel(self) -> None:
        self._cancelled = True
        self._cancel()

    def __enter__(self) -> HitWatch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()


# --- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class CaseAction:
    """One action of a case's plan; ``overdue`` as of when it was read."""

    action_id: bytes
    owner: str
    intervention_type: InterventionType
    measure: str
    description: str
    deadline: datetime
    status: ActionStatus
    note: str
    updated_at: datetime | None
    updated_by: str

    def __repr__(self) -> str:
        return (
            f"CaseAction(id={self.action_id.hex()[:8]}, owner={self.owner!r}, "
            f"status={self.status.value})"
        )

    def overdue(self, now: datetime | None = None) -> bool:
        """Past its deadline and neither done nor cancelled."""
        moment = now or datetime.now(UTC)
        finished = (ActionStatus.DONE, ActionStatus.CANCELLED)
        return self.status not in finished and moment > self.deadline


@dataclass(frozen=True, slots=True)
class CaseHistoryEntry:
    """One change of a case: when, by which party and officer, what."""

    issued_at: datetime | None
    author: str
    author_officer: str
    kind: ChangeKind
    summary: str


@dataclass(frozen=True, slots=True, repr=False)
class Case:
    """A case as the node holds it (``history`` only from :meth:`NodeClient.case`)."""

    case_id: bytes
    title: str
    coordinator: str
    hit_group_id: bytes
    state: CaseState
    members: tuple[str, ...]
    actions: tuple[CaseAction, ...]
    opened_at: datetime | None
    closed_at: datetime | None
    outcome: str
    history: tuple[CaseHistoryEntry, ...]
    #: A case on a component of the subject network: its other hit groups.
    linked_hit_group_ids: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return f"Case(id={self.case_id.hex()[:8]}, state={self.state.value})"

    @property
    def case_hex(self) -> str:
        return self.case_id.hex()

    def action(self, action_id: bytes) -> CaseAction:
        """The action with this id; ``KeyError`` if the plan has none."""
        for action in self.actions:
            if action.action_id == action_id:
                return action
        raise KeyError(action_id.hex())


@dataclass(frozen=True, slots=True)
class CaseBoardEntry:
    """One line of the coordinator's board."""

    case_id: bytes
    case_title: str
    action: CaseAction
    overdue: bool


def deadline_of(value: date | datetime) -> datetime:
    """A deadline as the node takes it: a date means the end of that day (UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput("a deadline has a time zone", field="deadline")
        return value.astimezone(UTC)
    return datetime.combine(value, time(23, 59, 59), tzinfo=UTC)


def _case_action(message: case_pb2.CaseAction) -> CaseAction:
    return CaseAction(
        action_id=message.action_id,
        owner=message.owner,
        intervention_type=intervention_from_proto(message.intervention_type, "intervention_type"),
        measure=message.measure,
        description=message.description,
        deadline=message.deadline.ToDatetime(tzinfo=UTC),
        status=status_from_proto(message.status, "status"),
        note=message.note,
        updated_at=_time(message.updated_at),
        updated_by=message.updated_by,
    )


def _case(message: node_pb2.Case) -> Case:
    return Case(
        case_id=message.case_id,
        title=message.title,
        coordinator=message.coordinator,
        hit_group_id=message.hit_group_id,
        state=PROTO_STATES[message.state],
        members=tuple(message.members),
        actions=tuple(_case_action(a) for a in message.actions),
        opened_at=_time(message.opened_at),
        closed_at=_time(message.closed_at) if message.HasField("closed_at") else None,
        outcome=message.outcome,
        history=tuple(
            CaseHistoryEntry(
                issued_at=_time(h.issued_at),
                author=h.author,
                author_officer=h.author_officer,
                kind=_CHANGE_KINDS[h.kind],
                summary=h.summary,
            )
            for h in message.history
        ),
        linked_hit_group_ids=tuple(message.linked_hit_group_ids),
    )


_CHANGE_KINDS: Final = {v: k for k, v in KIND_TO_PROTO.items()}


# --- the client ----------------------------------------------------------------------------------


class NodeClient:
    """A connection to the node's local API. Use it as a context manager, or call
    :meth:`close`. Safe to share between threads (gRPC channels are)."""

    def __init__(
        self,
        target: str | Path,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Connect to the node's local API at ``target`` (a Unix socket path, ``unix:PATH``
        or ``127.0.0.1:PORT``), sending its API token with every call: ``token`` itself, or
        read from ``token_file`` at the first call (the node makes that file as it first
        starts). Without either, the node refuses every call but the health check."""
        self.target = normalise_target(target)
        self._timeout = timeout
        self._metadata = None if token is None else bearer(token)
        self._token_file = token_file
        self._channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        self._stub = node_pb2_grpc.NodeApiStub(self._channel)
        self._watches: weakref.WeakSet[HitWatch] = weakref.WeakSet()

    @classmethod
    def from_config(cls, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> NodeClient:
        """Connect where ``node.toml`` says the node serves its local API, with the token
        from the file it names (``api_token``)."""
        config = load_node_config(path)
        target = config.api_listen if config.api_listen is not None else config.api_socket
        assert target is not None
        return cls(target, token_file=config.api_token, timeout=timeout)

    def _auth(self) -> tuple[tuple[str, str], ...] | None:
        """The call metadata with the token; read from the token file once it is there."""
        if self._metadata is None and self._token_file is not None:
            self._metadata = bearer(read_token(self._token_file))
        return self._metadata

    def close(self) -> None:
        for watch in list(self._watches):
            watch.cancel()
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: float | None = None,
    ) -> _Resp:
        try:
            return method(request, timeout=timeout or self._timeout, metadata=self._auth())
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    # --- signals ------------------------------------------------------------------------

    def add_signal(
        self,
        reference: str,
        category: str,
        identifiers: Sequence[tuple[IdentifierType | str, str]],
        *,
        details: Mapping[str, str] | None = None,
        expires_at: datetime | None = None,
        leading_zero_dropped: bool | frozenset[IdentifierType] = False,
        area_code: str | None = None,
        area_kind: AreaKind | str | None = None,
        branch: str | None = None,
        month: str | None = None,
        person_parts: GivenParts | None = None,
    ) -> Signal:
        """Add one signal; returns it as stored (canonical identifiers, expiry, id).

        Adding the same reference with the same content again returns the
        existing signal; with other content it raises ``Replay`` (field
        ``signal.reference``). An invalid identifier raises ``InvalidInput``
        naming it (``signal.identifiers[0].value``) and the rule it breaks.
        """
        row = SignalInput(
            reference=reference,
            category=category,
            identifiers=list(identifiers),
            details=dict(details or {}),
            expires_at=expires_at,
            leading_zero_dropped=leading_zero_dropped,
            area_kind=area_kind,
            area_code=area_code,
            branch=branch,
            month=month,
            person_parts=person_parts,
        )
        message = _signal_message(row, "signal.")
        response = self._call(self._stub.AddSignal, node_pb2.AddSignalRequest(signal=message))
        return _signal(response.signal)

    def import_signals(
        self,
        rows: Iterable[SignalInput],
        *,
        validate_only: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        on_progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Import many signals, reporting per row; valid rows are stored, invalid ones not.

        Rows are sent in calls of at most ``chunk_size`` rows (and under the
        message size limit); each call stores its valid rows in one
        transaction, every row whole or not at all. ``on_progress`` is called
        with the number of rows each call handled. With ``validate_only``
        nothing is stored.
        """
        if not 1 <= chunk_size <= MAX_IMPORT_ROWS:
            raise ConfigurationError(f"chunk size is 1 to {MAX_IMPORT_ROWS}", field="chunk_size")
        results: list[RowResult] = []
        chunk: list[tuple[int, node_pb2.Signal]] = []
        size = 0
        count = 0
        for index, row in enumerate(rows):
            count += 1
            try:
                message = _signal_message(row)
            except SamenloopError as error:
                results.append(
                    RowResult(
                        row=index,
                        signal_id=None,
                        unchanged=False,
                        errors=(RowError(index, error.field or "", error.reason, error.message),),
                    )
                )
                continue
            message_size = message.ByteSize() + 16
            if chunk and (len(chunk) >= chunk_size or size + message_size > MAX_MESSAGE_BYTES // 2):
                results += self._import_chunk(chunk, validate_only, on_progress)
                chunk, size = [], 0
            chunk.append((index, message))
            size += message_size
        if chunk:
            results += self._import_chunk(chunk, validate_only, on_progress)
        results.sort(key=lambda r: r.row)
        assert len(results) == count
        return ImportReport(
            results=tuple(results),
            imported=sum(1 for r in results if r.signal_id and not r.unchanged),
            unchanged=sum(1 for r in results if r.unchanged),
            rejected=sum(1 for r in results if r.errors),
        )

    def _import_chunk(
        self,
        chunk: Sequence[tuple[int, node_pb2.Signal]],
        validate_only: bool,
        on_progress: Callable[[int], None] | None,
    ) -> list[RowResult]:
        response = self._call(
            self._stub.ImportSignals,
            node_pb2.ImportSignalsRequest(
                signals=[m for _, m in chunk], validate_only=validate_only
            ),
            timeout=max(self._timeout, IMPORT_TIMEOUT),
        )
        results = []
        for result in response.results:
            row = chunk[result.index][0]
            results.append(
                RowResult(
                    row=row,
                    signal_id=result.signal_id or None,
                    unchanged=result.unchanged,
                    errors=tuple(
                        RowError(row, e.field, e.reason, e.message) for e in result.errors
                    ),
                )
            )
        if on_progress is not None:
            on_progress(len(chunk))
        return results

    def withdraw_signal(self, reference: str, *, reason: str = "", officer: str = "") -> Signal:
        """Withdraw the signal with this reference; its tokens are withdrawn at the broker.
        Idempotent; ``NotFound`` if no signal ever had the reference."""
        response = self._call(
            self._stub.WithdrawSignal,
            node_pb2.WithdrawSignalRequest(reference=reference, reason=reason, officer=officer),
        )
        return _signal(response.signal)

    def signal(self, reference: str) -> Signal:
        """The active signal with this reference (else the latest that had it);
        ``NotFound`` if none."""
        response = self._call(self._stub.GetSignal, node_pb2.GetSignalRequest(reference=reference))
        return _signal(response.signal)

    # --- hits -----------------------------------------------------------------------------

    def hits(self, state: HitState | str | None = None, *, limit: int | None = None) -> list[Hit]:
        """The node's hits, newest change first; only those in ``state`` if given."""
        wanted = (
            node_pb2.HIT_STATE_UNSPECIFIED
            if state is None
            else _HIT_STATE_TO_PROTO[HitState(state)]
        )
        found: list[Hit] = []
        token = ""
        while limit is None or len(found) < limit:
            page = 1000 if limit is None else min(1000, limit - len(found))
            response = self._call(
                self._stub.ListHits,
                node_pb2.ListHitsRequest(state=wanted, page_size=page, page_token=token),
            )
            found += [_hit(h) for h in response.hits]
            token = response.next_page_token
            if not token:
                break
        return found

    def hit(self, group_id: bytes) -> Hit:
        """One hit by its group id; ``NotFound`` if the node has none."""
        response = self._call(self._stub.GetHit, node_pb2.GetHitRequest(hit_group_id=group_id))
        return _hit(response.hit)

    def watch_hits(
        self, after_feed_seq: int = 0, feed_epoch: int = 0, *, until_caught_up: bool = False
    ) -> HitWatch:
        """Every hit change after ``after_feed_seq``: the backlog first, then each new
        change as the node accepts it, until cancelled. Each yielded hit carries its
        ``sequence`` and ``feed_epoch``; store both for the last one processed and resume
        after them. After the node was restored from a backup, a position in the older
        epoch is mapped onto the new feed (:attr:`HitWatch.restored` says so), and a hit
        with ``restated`` may repeat one processed before: apply it only if its revision
        is higher than the one held for its group. With ``until_caught_up`` the iteration
        ends once the node has sent the backlog (every change it held when asked)."""
        call = self._stub.WatchHits(
            node_pb2.WatchHitsRequest(
                after_sequence=after_feed_seq,
                feed_epoch=feed_epoch,
                mark_caught_up=until_caught_up,
            ),
            metadata=self._auth(),
        )
        watch = HitWatch(iter(call), call.cancel, until_caught_up=until_caught_up)
        self._watches.add(watch)
        return watch

    # --- disclosures -------------------------------------------------------------------------

    def request_disclosure(
        self,
        hit_group_id: bytes,
        owner: str,
        signal_ref: bytes,
        purpose: str,
        fields: Sequence[str],
        *,
        officer: str,
        justification: str = "",
    ) -> Disclosure:
        """Ask ``owner`` for the ``fields`` of its signal ``signal_ref`` in a hit this node
        holds, for ``purpose`` (one of the covenant's). Returns the request as sent
        (state ``sent``); the answer arrives later (see :meth:`disclosure`).

        Refused locally, naming the field, before anything is sent: an unknown hit
        (``NotFound``, ``hit_group_id``), an owner or ref the hit does not show, an
        unknown purpose, no fields or too many (``InvalidInput``).
        """
        response = self._call(
            self._stub.RequestDisclosure,
            node_pb2.RequestDisclosureRequest(
                hit_group_id=hit_group_id,
                owner=owner,
                signal_ref=signal_ref,
                purpose=purpose,
                fields=list(fields),
                officer=officer,
                justification=justification,
            ),
        )
        return _disclosure(response.disclosure)

    def disclosures(
        self,
        direction: DisclosureDirection | str | None = None,
        state: DisclosureState | str | None = None,
        *,
        limit: int | None = None,
    ) -> list[Disclosure]:
        """Disclosure requests, newest first; only one direction or state if given
        (``state="pending_approval", direction="incoming"``: what waits for an officer)."""
        request = node_pb2.ListDisclosuresRequest(
            direction=node_pb2.DISCLOSURE_DIRECTION_UNSPECIFIED
            if direction is None
            else _DIRECTION_TO_PROTO[DisclosureDirection(direction)],
            state=node_pb2.DISCLOSURE_STATE_UNSPECIFIED
            if state is None
            else _DISCLOSURE_STATE_TO_PROTO[DisclosureState(state)],
        )
        found: list[Disclosure] = []
        while limit is None or len(found) < limit:
            request.page_size = 1000 if limit is None else min(1000, limit - len(found))
            response = self._call(self._stub.ListDisclosures, request)
            found += [_disclosure(d) for d in response.disclosures]
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        return found

    def disclosure(self, request_id: bytes) -> Disclosure:
        """One disclosure request by its id; ``NotFound`` if the node has none."""
        response = self._call(
            self._stub.GetDisclosure, node_pb2.GetDisclosureRequest(request_id=request_id)
        )
        return _disclosure(response.disclosure)

    def approve_disclosure(self, request_id: bytes, *, officer: str, note: str = "") -> Disclosure:
        """As a second officer of this node, approve a pending incoming request (four eyes):
        the node decides again under the covenant of now and answers the requester.
        ``NotAllowed`` (field ``officer``) for the officer who asked or one who already
        decided; ``NotAllowed`` (field ``request_id``) if it is not pending."""
        response = self._call(
            self._stub.ApproveDisclosure,
            node_pb2.ApproveDisclosureRequest(request_id=request_id, officer=officer, note=note),
        )
        return _disclosure(response.disclosure)

    def deny_disclosure(self, request_id: bytes, *, officer: str, reason: str) -> Disclosure:
        """As a second officer of this node, deny a pending incoming request; ``reason`` is
        sent to the requester with the refusal (``denied_by_officer``)."""
        response = self._call(
            self._stub.DenyDisclosure,
            node_pb2.DenyDisclosureRequest(request_id=request_id, officer=officer, reason=reason),
        )
        return _disclosure(response.disclosure)

    # --- the regional picture -------------------------------------------------------------

    def picture_collect(
        self,
        period: str | Period,
        measures: Sequence[Measure | str] = (Measure.ACTIVE_SIGNALS, Measure.HIT_GROUPS),
        dimensions: Sequence[Dimension | str] = (),
        *,
        officer: str,
        planned_requests: int = 1,
        dry_run: bool = False,
    ) -> PictureCollection:
        """Ask every party of the covenant for its counts of ``measures`` by ``dimensions``
        over ``period`` (``"2026-10"`` or ``"2026-07..2026-12"``). Only a party the covenant
        lets see the picture may ask (``NotAllowed``); a bad period, measure or dimension
        is ``InvalidInput`` naming it. Under a privacy budget, ``QuotaExceeded`` (reason
        ``picture.budget_exhausted``, saying what it needs and what is left) unless the
        node's budget covers ``planned_requests`` such requests; nothing is spent then.
        ``dry_run``: only say what it would cost. The answers arrive later: see
        :meth:`picture_show`."""
        request = node_pb2.PictureCollectRequest(
            period=_period(period).to_proto(),
            measures=[_measure(m, f"measures[{i}]").to_proto() for i, m in enumerate(measures)],
            dimensions=[
                _dimension(d, f"dimensions[{i}]").to_proto() for i, d in enumerate(dimensions)
            ],
            officer=officer,
            planned_requests=planned_requests,
            dry_run=dry_run,
        )
        response = self._call(self._stub.PictureCollect, request)
        return PictureCollection(
            response.request_id,
            tuple(response.asked),
            response.noisy,
            response.epsilon_needed,
            response.epsilon_remaining,
        )

    def picture_show(
        self,
        period: str | Period | None = None,
        measure: Measure | str = Measure.ACTIVE_SIGNALS,
        dimensions: Sequence[Dimension | str] = (),
        *,
        request_id: bytes | None = None,
    ) -> Picture:
        """The combined, disclosure-controlled table of a collection: the one with
        ``request_id``, else the latest of ``period`` by these ``dimensions`` that counted
        ``measure``. ``NotFound`` (field ``period``) if there is none yet."""
        request = node_pb2.PictureShowRequest(
            request_id=request_id or b"",
            measure=_measure(measure, "measure").to_proto(),
            dimensions=[
                _dimension(d, f"dimensions[{i}]").to_proto() for i, d in enumerate(dimensions)
            ],
        )
        if period is not None:
            request.period.CopyFrom(_period(period).to_proto())
        response = self._call(self._stub.PictureShow, request)
        return Picture(
            table=released_from_proto(response.table, min_count=response.min_cell_count),
            contributors=tuple(response.contributors),
            missing=tuple(response.missing),
            refusals=tuple(
                PictureRefusalNote(
                    note.contributor,
                    picture_pb2.PictureRefusalReason.Name(note.refusal.reason)
                    .removeprefix("PICTURE_REFUSAL_REASON_")
                    .lower(),
                    note.refusal.message,
                )
                for note in response.refusals
            ),
        )

    # --- status ----------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        """The node's health: broker connection, covenant, counts, key-holder role."""
        return _status(self._call(self._stub.GetStatus, node_pb2.GetStatusRequest()))

    # --- cases -----------------------------------------------------------------------------

    def open_case(
        self,
        hit_group_id: bytes,
        title: str,
        *,
        officer: str,
        invite: Sequence[str] = (),
        linked: Sequence[bytes] = (),
    ) -> Case:
        """Open a case on a hit this node holds (coordinators only) and invite parties of
        that hit; with ``linked`` (the other hit groups of a component of the subject
        network), on the component, inviting parties of any of its hits. Refused naming
        the field: an unknown hit (``NotFound``), a party no hit shows or whose role the
        covenant hides from another member (``InvalidInput``, ``invite[i]``);
        ``NotAllowed`` if this party does not coordinate."""
        response = self._call(
            self._stub.CaseOpen,
            node_pb2.CaseOpenRequest(
                hit_group_id=hit_group_id,
                title=title,
                invite=list(invite),
                officer=officer,
                linked_hit_group_ids=list(linked),
            ),
        )
        return _case(response.case)

    def invite_to_case(self, case_id: bytes, parties: Sequence[str], *, officer: str) -> Case:
        """Invite further parties of the case's hit (coordinator only)."""
        response = self._call(
            self._stub.CaseInvite,
            node_pb2.CaseInviteRequest(case_id=case_id, parties=list(parties), officer=officer),
        )
        return _case(response.case)

    def remove_from_case(self, case_id: bytes, parties: Sequence[str], *, officer: str) -> Case:
        """Remove members from a case (coordinator only): they receive the removal and
        nothing further; their nodes keep what they had, read-only."""
        response = self._call(
            self._stub.CaseRemove,
            node_pb2.CaseRemoveRequest(case_id=case_id, parties=list(parties), officer=officer),
        )
        return _case(response.case)

    def cases(self, state: CaseState | str | None = None) -> list[Case]:
        """The cases this node is (or was) a member of, newest first, without history."""
        request = node_pb2.CaseListRequest(
            state=case_pb2.CASE_STATE_UNSPECIFIED
            if state is None
            else STATE_TO_PROTO[CaseState(state)]
        )
        return [_case(c) for c in self._call(self._stub.CaseList, request).cases]

    def case(self, case_id: bytes) -> Case:
        """One case with its plan and history; ``NotFound`` if the node holds none."""
        response = self._call(self._stub.CaseShow, node_pb2.CaseShowRequest(case_id=case_id))
        return _case(response.case)

    def add_action(
        self,
        case_id: bytes,
        *,
        owner: str,
        intervention_type: InterventionType | str,
        measure: str,
        deadline: date | datetime,
        officer: str,
        description: str = "",
    ) -> Case:
        """Add a planned action owned by a member to the plan (coordinator only); a date as
        deadline means the end of that day (UTC)."""
        try:
            kind = InterventionType(intervention_type)
        except ValueError:
            raise InvalidInput(
                f"one of: {', '.join(t.value for t in InterventionType)}",
                field="action.intervention_type",
            ) from None
        action = case_pb2.CaseAction(
            owner=owner,
            intervention_type=INTERVENTION_TO_PROTO[kind],
            measure=measure,
            description=description,
        )
        action.deadline.FromDatetime(deadline_of(deadline))
        response = self._call(
            self._stub.CaseAct,
            node_pb2.CaseActRequest(case_id=case_id, action=action, officer=officer),
        )
        return _case(response.case)

    def update_action(
        self,
        case_id: bytes,
        action_id: bytes,
        *,
        officer: str,
        status: ActionStatus | str | None = None,
        deadline: date | datetime | None = None,
        note: str = "",
    ) -> Case:
        """Update an action: its owner or the coordinator sets the status and a note; only
        the coordinator moves the deadline. ``None``/empty keeps a value."""
        request = node_pb2.CaseUpdateRequest(
            case_id=case_id, action_id=action_id, note=note, officer=officer
        )
        if status is not None:
            try:
                request.status = STATUS_TO_PROTO[ActionStatus(status)]
            except ValueError:
                raise InvalidInput(
                    f"one of: {', '.join(s.value for s in ActionStatus)}", field="status"
                ) from None
        if deadline is not None:
            request.deadline.FromDatetime(deadline_of(deadline))
        return _case(self._call(self._stub.CaseUpdate, request).case)

    def close_case(self, case_id: bytes, *, outcome: str, officer: str) -> Case:
        """Close a case with its outcome (coordinator only); read-only afterwards."""
        response = self._call(
            self._stub.CaseClose,
            node_pb2.CaseCloseRequest(case_id=case_id, outcome=outcome, officer=officer),
        )
        return _case(response.case)

    # --- the subject network ---------------------------------------------------------------

    def network(self, group_id: bytes | None = None) -> tuple[list[Vertex], list[Edge]]:
        """The subject network this node holds: its open hit groups and the links partners
        reported between them; with ``group_id``, only that group's component."""
        response = self._call(
            self._stub.NetworkShow, node_pb2.NetworkShowRequest(hit_group_id=group_id or b"")
        )
        return (
            [_vertex(v) for v in response.vertices],
            [_edge(e) for e in response.edges],
        )

    def network_components(
        self, *, limit: int = 0, with_singletons: bool = False
    ) -> list[Component]:
        """The network's connected components, largest first; a single group without
        links only ``with_singletons``."""
        response = self._call(
            self._stub.NetworkComponents,
            node_pb2.NetworkComponentsRequest(limit=limit, with_singletons=with_singletons),
        )
        return [
            Component(tuple(_vertex(v) for v in c.vertices), tuple(_edge(e) for e in c.edges))
            for c in response.components
        ]

    def case_board(self, *, overdue_only: bool = False) -> list[CaseBoardEntry]:
        """The coordinator's board: open actions of its open cases, overdue first."""
        response = self._call(
            self._stub.CaseBoard, node_pb2.CaseBoardRequest(overdue_only=overdue_only)
        )
        return [
            CaseBoardEntry(e.case_id, e.case_title, _case_action(e.action), e.overdue)
            for e in response.entries
        ]
