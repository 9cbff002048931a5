"""The ``samenloop.v1.NodeApi`` servicer: the node's local API for its partner's applications.

A thin adapter. Requests are parsed where they enter (:func:`parse_signal`
turns a protobuf ``Signal`` into a :class:`~samenloop.node.signals.store.NewSignal`,
normalising every identifier with :mod:`samenloop.node.identifiers.normalise`); the
store does the work in one transaction per call; responses are built from the
store's records. Errors are raised as ``SamenloopError``s naming the offending
field and mapped to gRPC statuses by the one interceptor in
:mod:`samenloop.policies.rpc` -- except in ``ImportSignals``, which reports
per row so that one bad row does not fail the others.

Signals are checked against the covenant held at the moment of the call:
their category must be one of its categories, their identifier types among
its types, and their expiry within its retention rule for the category (the
rule's expiry when the request sets none). Disclosure requests go through the
:class:`~samenloop.node.disclosure.desk.DisclosureDesk`, which refuses bad
input naming the field before anything is stored or sent.

A hit as the API shows it is the latest verified hit notice of its group
(stored as the broker signed it), resolved against the node's own signals,
with the other members' categories decrypted under the attribute key version
each box names (the node's ``AttributeKeyRing`` holds every version it was
dealt, so boxes sealed before a key change stay readable) and checked against
the covenant's list: any member can seal any text under the shared key, so one
that is not a category is counted (``unknown_categories``), never shown.

Nothing here logs an identifier, a detail or a category: log lines carry
counts and codes only.

Over 800 lines: the servicer answers every call of ``NodeApi`` (the case and picture calls
are delegated to their own modules); each method is a few lines of parsing and a store call.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import grpc
import structlog
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from samenloop.node.cases.api import CaseApi
from samenloop.node.cases.desk import CaseDesk
from samenloop.node.daemon.repositories import Repositories
from samenloop.node.daemon.uplink import SOFTWARE, UplinkStatus
from samenloop.node.disclosure import protocol as disclosure
from samenloop.node.disclosure.desk import DisclosureDesk
from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
from samenloop.node.disclosure.store import DisclosureRecord
from samenloop.node.identifiers import person_hits
from samenloop.node.identifiers.attributes import check_branch
from samenloop.node.identifiers.normalise import Identifier, IdentifierType, parse
from samenloop.node.network import api as network_api
from samenloop.node.picture import api as picture_api
from samenloop.node.picture.desk import PictureDesk
from samenloop.node.signals import models
from samenloop.node.signals.models import AreaKind, HitKind, HitState, SignalState
from samenloop.node.signals.store import CoarseAttributes, HitRecord, NewSignal, SignalRecord
from samenloop.policies import covenant as covenant_model
from samenloop.policies import rules
from samenloop.policies.covenant import AttributeKeyRing, Covenant
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    MessageTooLarge,
    NotFound,
    Replay,
    SamenloopError,
    UnknownType,
)
from samenloop.policies.freshness import Freshness
from samenloop.policies.rules import Refusal
from samenloop.policies.times import received_time
from samenloop.v1 import broker_pb2, common_pb2, node_pb2, node_pb2_grpc

__all__ = [
    "HitBell",
    "NodeApiContext",
    "NodeApiService",
    "disclosure_to_proto",
    "hit_to_proto",
    "parse_signal",
    "signal_to_proto",
]

log = structlog.get_logger(__name__)

ID_BYTES: Final[int] = common_pb2.LIMITS_ID_BYTES
MAX_IDENTIFIERS: Final[int] = common_pb2.LIMITS_MAX_IDENTIFIERS_PER_SIGNAL
MAX_DETAIL_FIELDS: Final[int] = common_pb2.LIMITS_MAX_DETAIL_FIELDS
MAX_TEXT_BYTES: Final[int] = common_pb2.LIMITS_MAX_TEXT_BYTES
MAX_NAME_BYTES: Final[int] = common_pb2.LIMITS_MAX_PARTY_ID_BYTES
MAX_IMPORT_ROWS: Final[int] = common_pb2.LIMITS_MAX_SIGNALS_PER_IMPORT_CALL
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
#: Hits per store read while streaming ``WatchHits``.
WATCH_PAGE: Final = 500
#: How often a waiting ``WatchHits`` checks that its client is still there.
WATCH_POLL_SECONDS: Final = 5.0


_AREA_FORMATS: Final = {
    AreaKind.POSTCODE4: (re.compile(r"[1-9][0-9]{3}"), "four digits, not starting with 0"),
    AreaKind.CBS_WIJK: (re.compile(r"WK[0-9]{6}"), "WK and six digits"),
    AreaKind.CBS_BUURT: (re.compile(r"BU[0-9]{8}"), "BU and eight digits"),
}
_MONTH: Final = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_ROW_FIELD: Final = re.compile(r"signals\[(\d+)\]\.?")

# --- enum mappings (the names match, with the proto enum's prefix) -------------------

_TYPE_TO_PROTO: Final = {
    t: common_pb2.IdentifierType.Value(f"IDENTIFIER_TYPE_{t.name}") for t in IdentifierType
}
_PROTO_TYPES: Final[dict[int, IdentifierType]] = {v: t for t, v in _TYPE_TO_PROTO.items()}
_AREA_TO_PROTO: Final = {k: node_pb2.AreaKind.Value(f"AREA_KIND_{k.name}") for k in AreaKind}
_AREA_KINDS: Final[dict[int, AreaKind]] = {v: k for k, v in _AREA_TO_PROTO.items()}
_SIGNAL_STATES: Final = {
    s: node_pb2.SignalState.Value(f"SIGNAL_STATE_{s.name}") for s in SignalState
}
_HIT_STATES: Final = {s: node_pb2.HitState.Value(f"HIT_STATE_{s.name}") for s in HitState}
_PROTO_HIT_STATES: Final[dict[int, HitState]] = {v: s for s, v in _HIT_STATES.items()}
_HIT_KINDS: Final = {
    k: broker_pb2.HitNoticeKind.Value(f"HIT_NOTICE_KIND_{k.name}") for k in HitKind
}
_DIRECTIONS: Final = {
    d: node_pb2.DisclosureDirection.Value(f"DISCLOSURE_DIRECTION_{d.name}")
    for d in DisclosureDirection
}
_PROTO_DIRECTIONS: Final[dict[int, DisclosureDirection]] = {v: d for d, v in _DIRECTIONS.items()}
_DISCLOSURE_STATES: Final = {
    s: node_pb2.DisclosureState.Value(f"DISCLOSURE_STATE_{s.name}") for s in DisclosureState
}
_PROTO_DISCLOSURE_STATES: Final[dict[int, DisclosureState]] = {
    v: s for s, v in _DISCLOSURE_STATES.items()
}


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


# --- the bell ----------------------------------------------------------------------


class HitBell:
    """Wakes ``WatchHits`` streams when the node accepts a hit notice.

    The daemon passes :meth:`ring` to the uplink as its ``on_hit``; a stream
    reads :meth:`count` *before* it reads the store and then waits for the count
    to move, so a notice accepted in between is never missed.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._rings = 0

    def ring(self) -> None:
        """A hit notice was accepted (call after its transaction committed)."""
        with self._condition:
            self._rings += 1
            self._condition.notify_all()

    def count(self) -> int:
        with self._condition:
            return self._rings

    def nudge(self) -> None:
        """Wake every waiter without a ring, so each checks whether it should stop."""
        with self._condition:
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float, *, stop: Callable[[], bool] = lambda: False) -> int:
        """Wait until the count differs from ``seen``, ``stop()`` is true, or ``timeout``
        seconds pass; returns the count."""
        with self._condition:
            self._condition.wait_for(lambda: self._rings != seen or stop(), timeout)
            return self._rings


# --- parsing requests ------------------------------------------------------------------


def _text_bytes(value: str) -> int:
    return len(value.encode("utf-8"))


def parse_signal(
    message: node_pb2.Signal,
    *,
    now: datetime,
    covenant: Covenant,
    prefix: str = "",
) -> tuple[NewSignal | None, list[SamenloopError]]:
    """Turn a protobuf ``Signal`` into a :class:`NewSignal`, or the list of what is wrong.

    Every problem is collected (so an import reports all of a row's faults at
    once), each naming its field as ``prefix`` + the path within the signal
    (``identifiers[1].value``). The category and identifier types must be the
    covenant's; identifiers are normalised; the expiry defaults to the
    covenant's retention for the category and may not lie beyond it; unset coarse
    attributes are derived (postcode-4 from an address identifier, the month
    from ``now``). Output-only fields (id, state, created_at) are ignored.
    """
    errors: list[SamenloopError] = []

    reference = message.reference
    if not reference.strip():
        errors.append(
            InvalidInput(
                "a signal needs the partner's reference",
                field=f"{prefix}reference",
                reason="signal.reference_missing",
            )
        )
    elif len(reference) > models.MAX_REFERENCE_CHARS:
        errors.append(
            InvalidInput(
                f"a reference has at most {models.MAX_REFERENCE_CHARS} characters",
                field=f"{prefix}reference",
                reason="signal.reference_too_long",
            )
        )

    category = message.category
    if not category.strip():
        errors.append(
            InvalidInput(
                "a signal needs a category",
                field=f"{prefix}category",
                reason="signal.category_missing",
            )
        )
    elif _text_bytes(category) > MAX_NAME_BYTES or len(category) > models.MAX_CATEGORY_CHARS:
        errors.append(
            InvalidInput(
                f"a category has at most {MAX_NAME_BYTES} bytes of UTF-8",
                field=f"{prefix}category",
                reason="signal.category_too_long",
            )
        )
    else:
        try:
            rules.check_category(covenant, category, field=f"{prefix}category")
        except SamenloopError as error:
            errors.append(error)

    identifiers = _parse_identifiers(message, now, covenant, prefix, errors)
    person_keys = _derive_person_keys(message, now, covenant) if not errors else ()
    details = _parse_details(message, prefix, errors)
    expires_at = _parse_expiry(message, now, covenant, prefix, errors)
    attributes = _parse_attributes(message, identifiers, now, prefix, errors)

    if errors:
        return None, errors
    assert expires_at is not None
    assert attributes is not None
    return (
        NewSignal(
            reference=reference,
            category=category,
            identifiers=tuple(identifiers),
            expires_at=expires_at,
            details=details,
            attributes=attributes,
            person_keys=person_keys,
        ),
        [],
    )


def _derive_person_keys(
    message: node_pb2.Signal, now: datetime, covenant: Covenant
) -> tuple[person_hits.PersonKey, ...]:
    """The person keys of the covenant's ``[person_matching] kinds`` for each ``person``
    identifier (parsed already). A name the keys cannot read (no surname core, say) keeps
    only its exact key: the signal is as valid as it was without person keys."""
    rules_ = covenant.policy.person_matching
    if rules_ is None or not rules_.kinds or not rules.counts_for_matching(covenant, "person"):
        return ()
    keys: dict[tuple[str, str], person_hits.PersonKey] = {}
    for item in message.identifiers:
        if _PROTO_TYPES.get(item.type) is not IdentifierType.PERSON:
            continue
        try:
            parts = person_hits.parts_of_person(
                item.value, today=now.date(), given=_given_parts(item)
            )
        except SamenloopError:
            continue
        for key in person_hits.derived_keys(parts, rules_.kinds):
            keys.setdefault((key.type.value, key.canonical), key)
    return tuple(keys.values())


def _parse_identifiers(
    message: node_pb2.Signal,
    now: datetime,
    covenant: Covenant,
    prefix: str,
    errors: list[SamenloopError],
) -> list[Identifier]:
    count = len(message.identifiers)
    if count == 0:
        errors.append(
            InvalidInput(
                "a signal needs at least one identifier",
                field=f"{prefix}identifiers",
                reason="signal.identifiers_missing",
            )
        )
        return []
    if count > MAX_IDENTIFIERS:
        errors.append(
            MessageTooLarge(
                f"at most {MAX_IDENTIFIERS} identifiers per signal",
                field=f"{prefix}identifiers",
                reason="signal.too_many_identifiers",
            )
        )
        return []
    parsed: list[Identifier] = []
    seen: dict[tuple[IdentifierType, str], int] = {}
    for j, item in enumerate(message.identifiers):
        where = f"{prefix}identifiers[{j}]"
        kind = _PROTO_TYPES.get(item.type)
        if kind is None:
            known = ", ".join(t.value for t in IdentifierType)
            errors.append(
                UnknownType(
                    f"unknown identifier type; known types: {known}",
                    field=f"{where}.type",
                    reason="identifier.unknown_type",
                )
            )
            continue
        try:
            _check_person_parts(item, kind, f"{where}.person_parts")
        except SamenloopError as error:
            errors.append(error)  # and the value is checked too: every fault at once
        try:
            rules.check_identifier_type(covenant, kind.value, field=f"{where}.type")
            identifier = parse(kind, item.value, field=f"{where}.value", today=now.date())
        except SamenloopError as error:
            errors.append(error)
            continue
        key = (identifier.type, identifier.canonical)
        if key in seen:
            errors.append(
                InvalidInput(
                    f"the same identifier as identifiers[{seen[key]}]",
                    field=where,
                    reason="identifier.duplicate",
                )
            )
            continue
        seen[key] = j
        parsed.append(identifier)
    return parsed


def _given_parts(item: node_pb2.Identifier) -> person_hits.GivenParts | None:
    """The person parts an identifier carries beside its value (``None``: none)."""
    if not item.HasField("person_parts"):
        return None
    given = item.person_parts
    return person_hits.GivenParts(
        postcode=given.postcode, house_number=given.house_number, gender=given.gender
    )


def _check_person_parts(item: node_pb2.Identifier, kind: IdentifierType, where: str) -> None:
    """Person parts go on a ``person`` identifier only and are checked here, each naming
    its field (``identifiers[0].person_parts.postcode``), whether or not the covenant
    turns on a kind that uses them."""
    given = _given_parts(item)
    if given is None or given.empty:
        return
    if kind is not IdentifierType.PERSON:
        raise InvalidInput(
            "person parts (postcode, house number, gender) go with a person identifier",
            field=where,
            reason="person.parts_without_person",
        )
    person_hits.check_given_parts(
        given, fields={name: f"{where}.{name}" for name in person_hits.GIVEN_PARTS}
    )


def _parse_details(
    message: node_pb2.Signal, prefix: str, errors: list[SamenloopError]
) -> dict[str, str]:
    if len(message.details) > MAX_DETAIL_FIELDS:
        errors.append(
            MessageTooLarge(
                f"at most {MAX_DETAIL_FIELDS} detail fields per signal",
                field=f"{prefix}details",
                reason="signal.too_many_details",
            )
        )
        return {}
    details: dict[str, str] = {}
    for name in sorted(message.details):
        value = message.details[name]
        if not name.strip() or _text_bytes(name) > MAX_NAME_BYTES:
            errors.append(
                InvalidInput(
                    f"a detail field's name has 1 to {MAX_NAME_BYTES} bytes",
                    field=f"{prefix}details",
                    reason="detail.name",
                )
            )
            continue
        if _text_bytes(value) > MAX_TEXT_BYTES:
            errors.append(
                InvalidInput(
                    f"a detail value has at most {MAX_TEXT_BYTES} bytes of UTF-8",
                    field=f"{prefix}details[{name}]",
                    reason="detail.too_long",
                )
            )
            continue
        details[name] = value
    return details


def _parse_expiry(
    message: node_pb2.Signal,
    now: datetime,
    covenant: Covenant,
    prefix: str,
    errors: list[SamenloopError],
) -> datetime | None:
    if message.category not in covenant.policy.categories:
        return None  # the category's own error says why; there is no rule to apply
    latest = rules.retention(covenant, message.category, created_at=now)
    if not message.HasField("expires_at"):
        return latest
    try:
        expires_at = received_time(
            message.expires_at, field=f"{prefix}expires_at", reason="signal.expiry"
        )
    except InvalidInput as error:
        errors.append(error)
        return None
    if expires_at <= now:
        errors.append(
            InvalidInput(
                "the expiry must lie in the future",
                field=f"{prefix}expires_at",
                reason="signal.expired",
            )
        )
        return None
    if expires_at > latest:
        errors.append(
            InvalidInput(
                f"the expiry lies beyond the covenant's retention for this category "
                f"({(latest - now).days} days)",
                field=f"{prefix}expires_at",
                reason="retention.exceeded",
            )
        )
        return None
    return expires_at


def _parse_attributes(
    message: node_pb2.Signal,
    identifiers: Sequence[Identifier],
    now: datetime,
    prefix: str,
    errors: list[SamenloopError],
) -> CoarseAttributes | None:
    given = message.attributes
    where = f"{prefix}attributes"
    failed = False
    area_kind: AreaKind | None = None
    area_code: str | None = None
    if given.area.kind != node_pb2.AREA_KIND_UNSPECIFIED or given.area.code:
        area_kind = _AREA_KINDS.get(given.area.kind)
        if area_kind is None:
            errors.append(
                UnknownType("unknown area kind", field=f"{where}.area.kind", reason="area.kind")
            )
            failed = True
        else:
            pattern, shape = _AREA_FORMATS[area_kind]
            if not pattern.fullmatch(given.area.code):
                errors.append(
                    InvalidInput(
                        f"a {area_kind.value} code is {shape}",
                        field=f"{where}.area.code",
                        reason="area.code",
                    )
                )
                failed = True
            area_code = given.area.code
    else:
        address = next((i for i in identifiers if i.type is IdentifierType.ADDRESS), None)
        if address is not None:
            area_kind, area_code = AreaKind.POSTCODE4, address.canonical[:4]
    branch = given.branch or None
    if branch is not None:
        try:
            check_branch(branch, field=f"{where}.branch")
        except InvalidInput as error:
            errors.append(error)
            failed = True
    month = given.month or now.strftime("%Y-%m")
    if not _MONTH.fullmatch(month):
        errors.append(
            InvalidInput(
                "a month is written YYYY-MM", field=f"{where}.month", reason="month.format"
            )
        )
        failed = True
    if failed:
        return None
    return CoarseAttributes(area_kind=area_kind, area_code=area_code, branch=branch, month=month)


def _content(
    category: str, identifiers: Iterable[Identifier], details: Mapping[str, str]
) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    """What makes two signals with one reference the same, as the store decides it."""
    return category, sorted((i.type.value, i.canonical) for i in identifiers), dict(details)


def _signal_id(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise InvalidInput("a signal id is a number", field=name, reason="signal.id")
    return int(text)


def _rename_row(error: SamenloopError, prefix: str) -> SamenloopError:
    """The same error with ``signals[0].`` (the store's name for the one row) as ``prefix``."""
    if error.field is not None:
        error.field = _ROW_FIELD.sub(prefix, error.field, count=1).rstrip(".") or None
    return error


# --- building responses -------------------------------------------------------------------


def signal_to_proto(record: SignalRecord) -> node_pb2.Signal:
    """A stored signal as the API shows it: canonical identifiers, expiry, state."""
    message = node_pb2.Signal(
        signal_id=str(record.id),
        reference=record.reference,
        category=record.category,
        identifiers=[
            node_pb2.Identifier(
                type=_TYPE_TO_PROTO[item.identifier.type], value=item.identifier.canonical
            )
            for item in record.identifiers
        ],
        details=dict(record.details),
        expires_at=timestamp(record.expires_at),
        state=_SIGNAL_STATES[record.state],
        created_at=timestamp(record.created_at),
    )
    attributes = record.attributes
    if attributes.area_kind is not None and attributes.area_code is not None:
        message.attributes.area.kind = _AREA_TO_PROTO[attributes.area_kind]
        message.attributes.area.code = attributes.area_code
    if attributes.branch is not None:
        message.attributes.branch = attributes.branch
    if attributes.month is not None:
        message.attributes.month = attributes.month
    return message


def _categories(
    attribute_keys: AttributeKeyRing, sealed: Sequence[common_pb2.SecretBox]
) -> list[str]:
    """The categories in a member's sealed attributes, as they opened (unchecked).

    Each box opens with the key version it names. A box under a version this
    party was not dealt, or one that does not open, is left out: the notice's
    signature already vouches for the rest of the hit.
    """
    found: list[str] = []
    failed = 0
    for box in sealed:
        key = attribute_keys.get(box.key_version)
        if key is None:
            failed += 1
            continue
        try:
            plaintext = covenant_model.open_attributes(key, box.nonce, box.ciphertext)
            found.append(common_pb2.MemberAttributes.FromString(plaintext).category)
        except (SamenloopError, DecodeError):
            failed += 1
    if failed:
        log.warning("sealed member attributes not readable", count=failed)
    return found


def probable_hits(record: HitRecord, covenant: Covenant) -> list[person_hits.ProbableHit]:
    """The probable person hits ``record`` is part of, scored under ``covenant``."""
    if not record.person_agreements:
        return []
    found = person_hits.combine_under(
        record.person_agreements, record.person_own_kinds, covenant.policy.person_matching
    )
    return list(found.values())


def is_listed(record: HitRecord, covenant: Covenant) -> bool:
    """Whether ``hits list`` and ``hits watch`` show the hit: every hit but one on
    person keys only that is part of no probable hit reaching the covenant's
    ``shown_score``."""
    if not record.own_signals or any(o.person_kind is None for o in record.own_signals):
        return True
    return any(p.shown for p in probable_hits(record, covenant))


def hit_to_proto(
    record: HitRecord, attribute_keys: AttributeKeyRing, *, covenant: Covenant
) -> node_pb2.Hit:
    """A stored hit as the API shows it: its latest signed notice, decoded (it was
    verified when it was stored), with the node's own signals resolved and the
    other members' categories decrypted and checked against ``covenant``'s list
    (:func:`rules.received_categories`): another party's text that is not a
    category is counted, never shown or logged."""
    signed = common_pb2.Signed.FromString(record.notice)
    notice = broker_pb2.HitNotice.FromString(signed.body)
    hit = node_pb2.Hit(
        hit_group_id=record.group_id,
        revision=record.revision,
        state=_HIT_STATES[record.state],
        last_kind=_HIT_KINDS[record.kind],
        visibility=notice.visibility,
        first_seen=timestamp(record.first_seen),
        last_seen=timestamp(record.last_seen),
        received_at=timestamp(record.received_at),
        notice=signed,
    )
    for own in record.own_signals:
        view = hit.own_signals.add(signal_ref=own.signal_ref)
        if own.signal_id is not None:
            view.signal_id = str(own.signal_id)
        if own.reference is not None:
            view.reference = own.reference
        if own.category is not None:
            view.category = own.category
        if own.identifier_type is not None:
            view.identifier_type = _TYPE_TO_PROTO[own.identifier_type]
        if own.person_kind is not None:
            view.person_kind = own.person_kind.value
    for probable in probable_hits(record, covenant):
        if probable.shown:
            hit.probable_hits.add(
                signal_id=str(probable.signal_id),
                party=probable.party,
                agreeing_kinds=[kind.value for kind in probable.kinds],
                score=probable.score,
                disclosable=probable.disclosable,
            )
    if notice.HasField("party_count"):
        hit.party_count = notice.party_count
    unknown = 0
    for member in notice.members:
        opened = _categories(attribute_keys, member.sealed_attributes)
        checked = rules.received_categories(covenant, opened)
        unknown += checked.unknown
        shown = hit.members.add(
            signal_refs=list(member.signal_refs),
            categories=checked.known,
            unknown_categories=checked.unknown,
        )
        if member.HasField("party"):
            shown.party = member.party
        if member.HasField("role"):
            shown.role = member.role
    if unknown:
        log.warning("sealed member categories not in the covenant", count=unknown)
    return hit


def disclosure_to_proto(record: DisclosureRecord) -> node_pb2.Disclosure:
    """A stored disclosure request as the API shows it."""
    message = node_pb2.Disclosure(
        request_id=record.request_id,
        direction=_DIRECTIONS[record.direction],
        state=_DISCLOSURE_STATES[record.state],
        requester=record.requester,
        owner=record.owner,
        hit_group_id=record.hit_group_id or b"",
        signal_ref=record.signal_ref,
        signal_id="" if record.signal_id is None else str(record.signal_id),
        purpose=record.purpose,
        requested_fields=list(record.requested_fields),
        requester_officer=record.requester_officer,
        justification=record.justification,
        released_fields=dict(record.released),
        withheld_fields=list(record.withheld),
        requested_at=timestamp(record.requested_at),
    )
    if record.refusal_reason is not None:
        reason = Refusal(record.refusal_reason)
        message.refusal_reason = disclosure.refusal_to_proto(reason)
        message.refusal_message = record.refusal_message or ""
    if record.decided_by is not None and record.decided_at is not None:
        message.decisions.add(
            officer=record.decided_by,
            approved=bool(record.decision_approved),
            note=record.decision_note or "",
            decided_at=timestamp(record.decided_at),
        )
    if record.finished_at is not None:
        message.decided_at.CopyFrom(timestamp(record.finished_at))
    if record.person_score is not None:
        message.person_score = record.person_score
    return message


# --- the servicer -------------------------------------------------------------------------


@dataclass
class NodeApiContext:
    """What the servicer works with, passed in so that tests can build one directly."""

    party: str
    repositories: Repositories
    #: The covenant held now (a ``HeldCovenant``): read on every call, so updates count.
    covenant: Callable[[], Covenant]
    #: Every attribute key version this party was dealt (the uplink adds new ones).
    attribute_keys: AttributeKeyRing
    #: The uplink's live status; None when no uplink runs (tests, offline tools).
    uplink_status: Callable[[], UplinkStatus | None] = lambda: None
    #: Tells the uplink there is work (new signals, withdrawals).
    wake_uplink: Callable[[], None] = lambda: None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    bell: HitBell = field(default_factory=HitBell)
    #: Asks, approves and denies disclosures; None on a node without its keys (tests).
    disclosures: DisclosureDesk | None = None
    #: Opens and changes cases; None on a node without its keys (tests).
    cases: CaseDesk | None = None
    #: Collects and shows the regional picture; None on a node without its keys (tests).
    pictures: PictureDesk | None = None
    #: The broker address to report; the covenant's when empty.
    broker_address: str = ""
    #: Whether the node is fresh (an unexpired covenant timestamp vouches for the version
    #: held); None when no uplink keeps the covenant (tests, offline tools).
    freshness: Callable[[], Freshness] | None = None


class NodeApiService(node_pb2_grpc.NodeApiServicer):
    """The node's local gRPC face."""

    def __init__(self, context: NodeApiContext) -> None:
        self._ctx = context
        self._signals = context.repositories.signals
        self._disclosures = context.repositories.disclosures
        self._tokens = context.repositories.tokens
        self._case_api = CaseApi(self._case_desk)

    def _now(self) -> datetime:
        now = self._ctx.clock()
        if now.tzinfo is None:
            raise ValueError("the clock must give aware datetimes")
        return now.astimezone(UTC)

    # --- signals ------------------------------------------------------------------------

    def AddSignal(
        self, request: node_pb2.AddSignalRequest, context: grpc.ServicerContext
    ) -> node_pb2.AddSignalResponse:
        now = self._now()
        new, errors = parse_signal(
            request.signal,
            now=now,
            covenant=self._ctx.covenant(),
            prefix="signal.",
        )
        if errors:
            raise errors[0]
        assert new is not None
        try:
            (record,) = self._signals.add_signals([new], now=now)
        except SamenloopError as error:
            raise _rename_row(error, "signal.") from None
        if not record.unchanged:
            self._ctx.wake_uplink()
            log.info("signal added", signal_id=record.id, identifiers=len(record.identifiers))
        return node_pb2.AddSignalResponse(signal=signal_to_proto(record))

    def ImportSignals(
        self, request: node_pb2.ImportSignalsRequest, context: grpc.ServicerContext
    ) -> node_pb2.ImportSignalsResponse:
        rows = request.signals
        if not rows:
            raise InvalidInput("send at least one signal", field="signals")
        if len(rows) > MAX_IMPORT_ROWS:
            raise MessageTooLarge(
                f"at most {MAX_IMPORT_ROWS} signals per call; send larger files in parts",
                field="signals",
            )
        now = self._now()
        covenant = self._ctx.covenant()
        results = [node_pb2.ImportRowResult(index=i) for i in range(len(rows))]
        valid: dict[int, NewSignal] = {}
        for i, row in enumerate(rows):
            new, errors = parse_signal(row, now=now, covenant=covenant)
            if errors:
                results[i].errors.extend(_field_error(e) for e in errors)
            else:
                assert new is not None
                valid[i] = new
        if valid and not request.validate_only:
            self._store_rows(valid, results, now)
        imported = sum(1 for r in results if r.signal_id and not r.unchanged)
        unchanged = sum(1 for r in results if r.unchanged)
        rejected = sum(1 for r in results if r.errors)
        if imported:
            self._ctx.wake_uplink()
        log.info(
            "signals imported",
            rows=len(rows),
            imported=imported,
            unchanged=unchanged,
            rejected=rejected,
            validate_only=request.validate_only,
        )
        return node_pb2.ImportSignalsResponse(
            results=results, imported=imported, unchanged=unchanged, rejected=rejected
        )

    def _store_rows(
        self,
        valid: dict[int, NewSignal],
        results: list[node_pb2.ImportRowResult],
        now: datetime,
    ) -> None:
        """Store the valid rows in one transaction. A row the store refuses (a reference
        that an active signal has with other content) is reported and left out, and the
        rest tried again: the call stores every acceptable row whole, or nothing."""
        batch = f"import:{now:%Y%m%dT%H%M%SZ}:{secrets.token_hex(4)}"
        pending = dict(valid)
        checked = False
        while pending:
            indices = list(pending)
            try:
                records = self._signals.add_signals(
                    [pending[i] for i in indices], now=now, import_batch=batch
                )
            except SamenloopError as error:
                match = _ROW_FIELD.match(error.field or "")
                if match is None or int(match.group(1)) >= len(indices):
                    raise
                row = indices[int(match.group(1))]
                results[row].errors.append(_field_error(_rename_row(error, "")))
                del pending[row]
                if not checked:
                    # One conflict often comes with many (a file re-imported after its
                    # categories changed): find them all at once rather than one per try.
                    for row, error in self._conflicts(pending).items():
                        results[row].errors.append(_field_error(error))
                        del pending[row]
                    checked = True
                continue
            for row, record in zip(indices, records, strict=True):
                results[row].signal_id = str(record.id)
                results[row].unchanged = record.unchanged
            return

    def _conflicts(self, rows: dict[int, NewSignal]) -> dict[int, SamenloopError]:
        """Rows whose reference an active signal (or an earlier row) has with other content:
        the rows the store would refuse, by the store's rule (category, identifiers and
        details make the content; expiry and coarse attributes are derived)."""
        found: dict[int, SamenloopError] = {}
        first: dict[str, tuple[str, list[tuple[str, str]], dict[str, str]]] = {}
        for row, signal in rows.items():
            content = _content(signal.category, signal.identifiers, signal.details)
            if signal.reference not in first:
                existing = self._signals.signal(signal.reference)
                if existing is not None and existing.state is SignalState.ACTIVE:
                    first[signal.reference] = _content(
                        existing.category,
                        (i.identifier for i in existing.identifiers),
                        existing.details,
                    )
                else:
                    first[signal.reference] = content
            if first[signal.reference] != content:
                found[row] = Replay(
                    "an active signal with this reference exists, with other content",
                    field="reference",
                    reason="signal.exists",
                )
        return found

    def GetSignal(
        self, request: node_pb2.GetSignalRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetSignalResponse:
        key = request.WhichOneof("key")
        record: SignalRecord | None
        if key == "signal_id":
            record = self._signals.signal_by_id(_signal_id(request.signal_id, "signal_id"))
        elif key == "reference":
            record = self._signals.signal(request.reference)
        else:
            raise InvalidInput("give a signal id or a reference", field="key")
        if record is None:
            raise NotFound(f"no signal with this {key.replace('_', ' ')}", field=key)
        return node_pb2.GetSignalResponse(signal=signal_to_proto(record))

    def WithdrawSignal(
        self, request: node_pb2.WithdrawSignalRequest, context: grpc.ServicerContext
    ) -> node_pb2.WithdrawSignalResponse:
        key = request.WhichOneof("key")
        now = self._now()
        # The officer, if the call names one, is the audit entry's actor (else the party).
        officer = disclosure.check_officer(request.officer) if request.officer else None
        if key == "signal_id":
            record = self._signals.withdraw_signal(
                now=now, signal_id=_signal_id(request.signal_id, "signal_id"), officer=officer
            )
        elif key == "reference":
            if not request.reference:
                raise InvalidInput("give a reference", field="reference")
            record = self._signals.withdraw_signal(request.reference, now=now, officer=officer)
        else:
            raise InvalidInput("give a signal id or a reference", field="key")
        self._ctx.wake_uplink()
        log.info("signal withdrawn", signal_id=record.id)
        return node_pb2.WithdrawSignalResponse(signal=signal_to_proto(record))

    # --- hits ------------------------------------------------------------------------------

    def ListHits(
        self, request: node_pb2.ListHitsRequest, context: grpc.ServicerContext
    ) -> node_pb2.ListHitsResponse:
        state: HitState | None = None
        if request.state != node_pb2.HIT_STATE_UNSPECIFIED:
            state = _PROTO_HIT_STATES.get(request.state)
            if state is None:
                raise UnknownType("unknown hit state", field="state")
        size, before = _page(request.page_size, request.page_token)
        records = self._signals.hits(state, limit=size, newest_first=True, before_feed_seq=before)
        covenant = self._ctx.covenant()
        response = node_pb2.ListHitsResponse(
            hits=[
                hit_to_proto(r, self._ctx.attribute_keys, covenant=covenant)
                for r in records
                if is_listed(r, covenant)
            ]
        )
        if len(records) == size:
            response.next_page_token = str(records[-1].feed_seq)
        return response

    def GetHit(
        self, request: node_pb2.GetHitRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetHitResponse:
        if len(request.hit_group_id) != ID_BYTES:
            raise InvalidInput(f"a hit group id is {ID_BYTES} bytes", field="hit_group_id")
        record = self._signals.hit(request.hit_group_id)
        covenant = self._ctx.covenant()
        if record is None or not is_listed(record, covenant):
            raise NotFound("no hit with this group id", field="hit_group_id")
        shown = hit_to_proto(record, self._ctx.attribute_keys, covenant=covenant)
        return node_pb2.GetHitResponse(hit=shown)

    def WatchHits(
        self, request: node_pb2.WatchHitsRequest, context: grpc.ServicerContext
    ) -> Iterator[node_pb2.WatchHitsResponse]:
        """The backlog after ``after_sequence``, then each change as the bell rings, until
        the client cancels. A hit that changed several times while the stream was behind
        comes once, as it is now, with the sequence number of its latest change. Asked
        (``mark_caught_up``), one ``caught_up`` message follows the backlog.

        A position in an older feed epoch (the node was restored from a backup since) is
        mapped onto the current feed (:meth:`FeedState.position`) and announced with a
        ``FeedRestored`` first; changes that may repeat what the application processed
        before the restore carry ``restated``."""
        bell = self._ctx.bell
        feed = self._signals.feed_state()
        after, restated_after = feed.position(request.feed_epoch, request.after_sequence)
        context.add_callback(bell.nudge)
        if request.feed_epoch not in (0, feed.epoch):
            yield node_pb2.WatchHitsResponse(
                feed_epoch=feed.epoch,
                feed_restored=node_pb2.FeedRestored(feed_epoch=feed.epoch, resumed_after=after),
            )

        def gone() -> bool:
            return not context.is_active()

        caught_up = not request.mark_caught_up  # nothing to tell, or told
        while context.is_active():
            rings = bell.count()
            if feed.catching_up:
                feed = self._signals.feed_state()
            records = self._signals.hits(after_feed_seq=after, limit=WATCH_PAGE)
            covenant = self._ctx.covenant()
            for record in records:
                if not is_listed(record, covenant):
                    after = record.feed_seq
                    continue
                yield node_pb2.WatchHitsResponse(
                    sequence=record.feed_seq,
                    hit=hit_to_proto(record, self._ctx.attribute_keys, covenant=covenant),
                    feed_epoch=feed.epoch,
                    restated=feed.restated(record.feed_seq, restated_after),
                )
                after = record.feed_seq
            if len(records) < WATCH_PAGE:  # the backlog is out
                if not caught_up:
                    caught_up = True
                    yield node_pb2.WatchHitsResponse(
                        sequence=after, feed_epoch=feed.epoch, caught_up=True
                    )
                bell.wait(rings, WATCH_POLL_SECONDS, stop=gone)

    # --- disclosures ---------------------------------------------------------------------------

    def _desk(self) -> DisclosureDesk:
        if self._ctx.disclosures is None:
            raise ConfigurationError(
                "this node runs without its party keys: it cannot ask or answer disclosures",
                field="disclosures",
            )
        return self._ctx.disclosures

    def _case_desk(self) -> CaseDesk:
        if self._ctx.cases is None:
            raise ConfigurationError(
                "this node runs without its party keys: it cannot take part in cases",
                field="cases",
            )
        return self._ctx.cases

    def RequestDisclosure(
        self, request: node_pb2.RequestDisclosureRequest, context: grpc.ServicerContext
    ) -> node_pb2.RequestDisclosureResponse:
        record = self._desk().ask(
            hit_group_id=request.hit_group_id,
            owner=request.owner,
            signal_ref=request.signal_ref,
            purpose=request.purpose,
            fields=list(request.fields),
            officer=disclosure.check_officer(request.officer),
            justification=request.justification,
        )
        return node_pb2.RequestDisclosureResponse(disclosure=disclosure_to_proto(record))

    def ListDisclosures(
        self, request: node_pb2.ListDisclosuresRequest, context: grpc.ServicerContext
    ) -> node_pb2.ListDisclosuresResponse:
        direction: DisclosureDirection | None = None
        if request.direction != node_pb2.DISCLOSURE_DIRECTION_UNSPECIFIED:
            direction = _PROTO_DIRECTIONS.get(request.direction)
            if direction is None:
                raise UnknownType("unknown disclosure direction", field="direction")
        state: DisclosureState | None = None
        if request.state != node_pb2.DISCLOSURE_STATE_UNSPECIFIED:
            state = _PROTO_DISCLOSURE_STATES.get(request.state)
            if state is None:
                raise UnknownType("unknown disclosure state", field="state")
        size, before = _page(request.page_size, request.page_token)
        records = self._disclosures.disclosures(direction, state, limit=size, before_id=before)
        response = node_pb2.ListDisclosuresResponse(
            disclosures=[disclosure_to_proto(r) for r in records]
        )
        if len(records) == size:
            response.next_page_token = str(records[-1].id)
        return response

    def GetDisclosure(
        self, request: node_pb2.GetDisclosureRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetDisclosureResponse:
        if len(request.request_id) != ID_BYTES:
            raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
        record = self._disclosures.disclosure(request.request_id)
        if record is None:
            raise NotFound("no disclosure request with this id", field="request_id")
        return node_pb2.GetDisclosureResponse(disclosure=disclosure_to_proto(record))

    def ApproveDisclosure(
        self, request: node_pb2.ApproveDisclosureRequest, context: grpc.ServicerContext
    ) -> node_pb2.ApproveDisclosureResponse:
        record = self._desk().approve(
            request.request_id, officer=disclosure.check_officer(request.officer), note=request.note
        )
        return node_pb2.ApproveDisclosureResponse(disclosure=disclosure_to_proto(record))

    def DenyDisclosure(
        self, request: node_pb2.DenyDisclosureRequest, context: grpc.ServicerContext
    ) -> node_pb2.DenyDisclosureResponse:
        record = self._desk().deny(
            request.request_id,
            officer=disclosure.check_officer(request.officer),
            reason=request.reason,
        )
        return node_pb2.DenyDisclosureResponse(disclosure=disclosure_to_proto(record))

    # --- not in this version -----------------------------------------------------------------

    def _picture_desk(self) -> PictureDesk:
        if self._ctx.pictures is None:
            raise ConfigurationError(
                "this node runs without its party keys: it cannot take part in the picture",
                field="pictures",
            )
        return self._ctx.pictures

    def PictureCollect(
        self, request: node_pb2.PictureCollectRequest, context: grpc.ServicerContext
    ) -> node_pb2.PictureCollectResponse:
        return picture_api.collect(self._picture_desk(), request)

    def PictureShow(
        self, request: node_pb2.PictureShowRequest, context: grpc.ServicerContext
    ) -> node_pb2.PictureShowResponse:
        return picture_api.show(self._picture_desk(), request)

    # --- the subject network (read from the store) -------------------------------------------

    def NetworkShow(
        self, request: node_pb2.NetworkShowRequest, context: grpc.ServicerContext
    ) -> node_pb2.NetworkShowResponse:
        return network_api.show(self._ctx.repositories.network, request)

    def NetworkComponents(
        self, request: node_pb2.NetworkComponentsRequest, context: grpc.ServicerContext
    ) -> node_pb2.NetworkComponentsResponse:
        return network_api.components_response(self._ctx.repositories.network, request)

    # --- cases (through the case desk) ------------------------------------------------------

    def CaseOpen(
        self, request: node_pb2.CaseOpenRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseOpenResponse:
        return self._case_api.open(request)

    def CaseInvite(
        self, request: node_pb2.CaseInviteRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseInviteResponse:
        return self._case_api.invite(request)

    def CaseList(
        self, request: node_pb2.CaseListRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseListResponse:
        return self._case_api.list(request)

    def CaseShow(
        self, request: node_pb2.CaseShowRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseShowResponse:
        return self._case_api.show(request)

    def CaseAct(
        self, request: node_pb2.CaseActRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseActResponse:
        return self._case_api.act(request)

    def CaseUpdate(
        self, request: node_pb2.CaseUpdateRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseUpdateResponse:
        return self._case_api.update(request)

    def CaseClose(
        self, request: node_pb2.CaseCloseRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseCloseResponse:
        return self._case_api.close(request)

    def CaseRemove(
        self, request: node_pb2.CaseRemoveRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseRemoveResponse:
        return self._case_api.remove(request)

    def CaseBoard(
        self, request: node_pb2.CaseBoardRequest, context: grpc.ServicerContext
    ) -> node_pb2.CaseBoardResponse:
        return self._case_api.board(request)

    # --- status --------------------------------------------------------------------------------

    def GetStatus(
        self, request: node_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> node_pb2.GetStatusResponse:
        covenant = self._ctx.covenant()
        counts = self._signals.status_counts()
        response = node_pb2.GetStatusResponse(
            party=self._ctx.party,
            software_version=SOFTWARE,
            broker_address=self._ctx.broker_address or covenant.broker.address,
            covenant_id=covenant.id,
            covenant_version=covenant.version,
            key_epoch=covenant.key_epoch.epoch,
            active_signals=counts.signals[SignalState.ACTIVE],
            outbox_pending=counts.outbox_entries,
            open_hits=counts.open_hits,
            mailbox_acked_cursor=counts.mailbox_cursor,
            pending_approvals=self._disclosures.pending_approvals(),
            covenant_valid_until=timestamp(covenant.valid_until),
            picture_classification=covenant.policy.picture.classification,
            categories=list(covenant.policy.categories),
        )
        if covenant.next_key_epoch is not None:
            staged = covenant.next_key_epoch.epoch
            done, live = self._signals.rotation_progress(covenant.key_epoch.epoch, staged)
            response.staged_key_epoch = staged
            response.rotation_restated = done
            response.rotation_live = live
        if not covenant.is_party(self._ctx.party):
            response.last_error = (
                f"covenant version {covenant.version} no longer lists {self._ctx.party}: "
                "nothing is submitted"
            )
        if self._ctx.freshness is not None:
            freshness = self._ctx.freshness()
            shown = response.covenant_freshness
            shown.fresh = freshness.fresh
            shown.stale_reason = freshness.reason
            if freshness.until is not None:
                shown.fresh_until.CopyFrom(timestamp(freshness.until))
        status = self._ctx.uplink_status()
        holder_channel_open = False
        if status is None:
            response.broker_connection = node_pb2.BROKER_CONNECTION_DISCONNECTED
        else:
            with status.lock:
                connected, last_error = status.connected, status.last_error
                last_contact, holder_channel_open = status.last_contact, status.holder_channel_open
                dialled = status.broker_address
            response.broker_connection = (
                node_pb2.BROKER_CONNECTION_CONNECTED
                if connected
                else node_pb2.BROKER_CONNECTION_CONNECTING
            )
            response.last_error = last_error or response.last_error
            if dialled:  # the address the uplink dials now, of those configured
                response.broker_address = dialled
            if last_contact is not None:
                response.last_connected.CopyFrom(timestamp(last_contact))
        seats = (
            covenant.seats_in_live_epochs(self._ctx.party)
            if covenant.is_party(self._ctx.party)
            else ()
        )
        if seats:
            totals = self._tokens.holder_totals()
            response.key_holder.CopyFrom(
                node_pb2.KeyHolderStatus(
                    seats=[
                        broker_pb2.HolderSeat(key_epoch=epoch, holder_index=seat.index)
                        for epoch, seat in seats
                    ],
                    channel_open=holder_channel_open,
                    requests_served=totals.requests_served,
                    elements_evaluated=totals.elements_evaluated,
                    requests_refused=totals.requests_refused,
                )
            )
        return response


def _field_error(error: SamenloopError) -> node_pb2.FieldError:
    return node_pb2.FieldError(field=error.field or "", reason=error.reason, message=error.message)


def _page(page_size: int, page_token: str) -> tuple[int, int | None]:
    """A list call's page size (default applied, maximum checked) and the position its
    page token names (None for the first page); ``InvalidInput`` naming the field."""
    size = page_size or DEFAULT_PAGE_SIZE
    if size > MAX_PAGE_SIZE:
        raise InvalidInput(f"at most {MAX_PAGE_SIZE} per page", field="page_size")
    if not page_token:
        return size, None
    if not page_token.isascii() or not page_token.isdigit() or len(page_token) > 19:
        raise InvalidInput("not a page token of this API", field="page_token")
    return size, int(page_token)
