"""The node's durable store: signals, the token outbox, the hit inbox and its feed.

A thin repository: it persists what the node's core decided and holds no
protocol logic. Identifiers arrive already parsed (:mod:`samenloop.node.identifiers.normalise`);
the store only checks the shapes and limits that its tables need, naming the
offending field as every other input check does.

Every public method is one database transaction and returns only after it
committed, so a crash at any point loses nothing acknowledged and duplicates
nothing:

* **Outbox.** Tokens are stored in the transaction that creates their submit
  batches; a withdrawal marks its identifiers in the transaction that creates
  its withdraw batch. A batch is frozen when it is created (random
  ``client_batch_id``, entries, sealed attributes) and :meth:`NodeStore.outbox`
  returns it unchanged, oldest first, until :meth:`NodeStore.mark_acked`: the
  broker recognises a resent batch by its id and content and stores nothing
  twice.
* **Inbox.** :meth:`NodeStore.accept_notice` keeps the latest revision of each
  hit group and, in the same transaction, the mailbox cursor of the item that
  delivered it; an older or repeated revision changes nothing but the cursor.
  Each accepted notice gets the next ``feed_seq``, assigned under a lock of the
  inbox row, so sequence numbers become visible in commit order: an
  application that resumes after the last ``feed_seq`` it processed never
  misses a change and never sees one twice.

Randomness (signal refs, batch ids) is injectable, time is always an argument.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any, Final, TypeVar, cast

from google.protobuf.message import DecodeError
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    String,
    any_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from samenloop.node.cases import machine as case_core
from samenloop.node.daemon import models
from samenloop.node.daemon.envelopes import Envelope
from samenloop.node.daemon.models import (
    AreaKind,
    BatchKind,
    DisclosureDirection,
    DisclosureState,
    HitKind,
    HitState,
    IdentifierState,
    PicturePartKind,
    SignalState,
)
from samenloop.node.disclosure.protocol import Outcome, ResponseUpdate, SignalFacts, Verdict
from samenloop.node.identifiers.normalise import Identifier, IdentifierType
from samenloop.node.picture import arithmetic as picture
from samenloop.node.picture.shares import Part
from samenloop.node.tokens.derive import HIT_PROOF_KEY_BYTES
from samenloop.node.tokens.holder import ANSWERED_AGAIN, AnsweredRequest, HolderEvent
from samenloop.policies import audit_store, crypto
from samenloop.policies.audit import AuditKind, DetailValue
from samenloop.policies.database import READ_ONLY
from samenloop.policies.errors import (
    InvalidInput,
    MessageTooLarge,
    NotAllowed,
    NotFound,
    Replay,
    UnknownType,
)
from samenloop.policies.rules import Refusal
from samenloop.v1 import broker_pb2, common_pb2

__all__ = [
    "MIGRATIONS",
    "CoarseAttributes",
    "DisclosureRecord",
    "HitRecord",
    "HolderTotals",
    "IdentifierRecord",
    "NewDisclosure",
    "NewPictureAnswer",
    "NewPictureCollection",
    "NewPictureContribution",
    "NewSignal",
    "NodeStore",
    "OutboxBatch",
    "OutboxEntry",
    "OwnSignal",
    "PendingEnvelope",
    "PendingIdentifier",
    "PictureCollectionRecord",
    "PictureContributionRecord",
    "SealedEnvelope",
    "SignalRecord",
    "StatusCounts",
]

MIGRATIONS: Final = "samenloop.node.daemon.migrations"
"""The package of the node's Alembic migrations, for ``policies.database.upgrade``."""

ID_BYTES: Final[int] = common_pb2.LIMITS_ID_BYTES
TOKEN_BYTES: Final[int] = common_pb2.LIMITS_TOKEN_BYTES
MAX_IDENTIFIERS: Final[int] = common_pb2.LIMITS_MAX_IDENTIFIERS_PER_SIGNAL
MAX_DETAIL_FIELDS: Final[int] = common_pb2.LIMITS_MAX_DETAIL_FIELDS
MAX_TEXT_BYTES: Final[int] = common_pb2.LIMITS_MAX_TEXT_BYTES
MAX_TOKENS_PER_BATCH: Final[int] = common_pb2.LIMITS_MAX_TOKENS_PER_BATCH
MAX_REFS_PER_WITHDRAWAL: Final[int] = common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL
MAX_KEY_EPOCH: Final = 2**32 - 1
DEFAULT_PAGE: Final = 100

# Key of the PostgreSQL advisory lock that serializes outbox writes ("smlpnode"), so
# that batches commit in the order of their ids, the order they are sent in.
_OUTBOX_LOCK: Final = 0x736D6C706E6F6465
# Values per "IN (...)": well under SQLite's bound-parameter limit.
_CHUNK: Final = 1000
_INBOX_ROW: Final = 1
# Refs an add_signals entry lists by name; beyond this only their digest.
_AUDIT_REFS: Final = 64
# Element types of the PostgreSQL arrays that ``_among`` binds, by column type.
_ARRAY_TYPES: Final[dict[type[Any], Any]] = {
    BigInteger: BigInteger(),
    Integer: BigInteger(),
    String: String(),
    LargeBinary: LargeBinary(),
}
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_BRANCH = re.compile(r"\d{2,5}")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Taken:
    """An identifier that gets its token now, with what its outbox entry needs."""

    id: int
    signal_ref: bytes
    category: str
    expires_at: datetime


# --- values in ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoarseAttributes:
    """A signal's coarse attributes for the regional picture; each may be unknown."""

    area_kind: AreaKind | None = None
    area_code: str | None = None
    branch: str | None = None
    month: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class NewSignal:
    """A signal to store: identifiers parsed, expiry decided. Its repr hides the content."""

    reference: str
    category: str
    identifiers: Sequence[Identifier]
    expires_at: datetime
    details: Mapping[str, str] = field(default_factory=dict)
    attributes: CoarseAttributes = CoarseAttributes()

    def __repr__(self) -> str:
        return (
            f"NewSignal(reference={self.reference!r}, category={self.category!r}, "
            f"identifiers={len(self.identifiers)}, details={len(self.details)})"
        )


# --- values out ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class IdentifierRecord:
    """One stored identifier of a signal, with its ref, state and (once made) token."""

    id: int
    identifier: Identifier
    signal_ref: bytes
    state: IdentifierState
    key_epoch: int | None
    token: bytes | None

    def __repr__(self) -> str:
        return f"IdentifierRecord(id={self.id}, type={self.identifier.type}, state={self.state})"


@dataclass(frozen=True, slots=True, repr=False)
class SignalRecord:
    """A stored signal. ``unchanged`` is set by :meth:`NodeStore.add_signals` when the
    signal already existed with the same content and nothing was stored."""

    id: int
    reference: str
    category: str
    details: Mapping[str, str]
    created_at: datetime
    expires_at: datetime
    state: SignalState
    ended_at: datetime | None
    attributes: CoarseAttributes
    import_batch: str | None
    identifiers: tuple[IdentifierRecord, ...]
    unchanged: bool = False

    def __repr__(self) -> str:
        return f"SignalRecord(id={self.id}, reference={self.reference!r}, state={self.state})"


@dataclass(frozen=True, slots=True, repr=False)
class PendingIdentifier:
    """An identifier waiting for its token: what the tokeniser needs."""

    id: int
    signal_id: int
    identifier: Identifier
    category: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"PendingIdentifier(id={self.id}, type={self.identifier.type})"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One entry of an outbox batch, as sent: a ``TokenEntry``, or a ref to withdraw.

    ``token``, ``expires_at`` and ``sealed_attributes`` are set in submit batches
    only. Send ``sealed_attributes`` as stored: sealing again would change the
    batch, which the broker refuses under the same id. ``category`` is for the
    node's own use; it is never sent in clear.
    """

    signal_ref: bytes
    token: bytes | None
    expires_at: datetime | None
    category: str
    sealed_attributes: bytes | None


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    """A ``SubmitTokens`` or ``WithdrawTokens`` request waiting for the broker's ack."""

    client_batch_id: bytes
    kind: BatchKind
    key_epoch: int | None
    created_at: datetime
    entries: tuple[OutboxEntry, ...]


@dataclass(frozen=True, slots=True)
class OwnSignal:
    """One of this node's refs in a hit, resolved to its signal (None where unknown)."""

    signal_ref: bytes
    signal_id: int | None
    reference: str | None
    category: str | None
    identifier_type: IdentifierType | None


@dataclass(frozen=True, slots=True)
class HitRecord:
    """A hit as the node holds it: the latest accepted notice of its group."""

    group_id: bytes
    revision: int
    kind: HitKind
    state: HitState
    notice: bytes
    first_seen: datetime
    last_seen: datetime
    received_at: datetime
    feed_seq: int
    own_signals: tuple[OwnSignal, ...]


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """Counts for ``GetStatus`` and ``samenloop node status``."""

    signals: Mapping[SignalState, int]
    identifiers_pending: int
    outbox_batches: int
    outbox_entries: int
    open_hits: int
    closed_hits: int
    mailbox_cursor: int


@dataclass(frozen=True, slots=True)
class HolderTotals:
    """The key-holder counters summed over parties and days."""

    requests_served: int
    elements_evaluated: int
    requests_refused: int


@dataclass(frozen=True, slots=True, repr=False)
class NewDisclosure:
    """A disclosure request to record: what was asked, by whom, of whom, about which ref."""

    request_id: bytes
    requester: str
    owner: str
    hit_group_id: bytes | None
    signal_ref: bytes
    purpose: str
    fields: tuple[str, ...]
    officer: str
    justification: str
    covenant_version: int
    requested_at: datetime

    def __repr__(self) -> str:
        return f"NewDisclosure(requester={self.requester!r}, owner={self.owner!r})"


@dataclass(frozen=True, slots=True, repr=False)
class SealedEnvelope:
    """A serialized ``Sealed`` for the envelope outbox, with its idempotency id."""

    message_id: bytes
    recipient: str
    sealed: bytes

    def __repr__(self) -> str:
        return f"SealedEnvelope(recipient={self.recipient!r}, bytes={len(self.sealed)})"

    @classmethod
    def of(cls, envelope: Envelope) -> SealedEnvelope:
        """An envelope as the outbox keeps it."""
        return cls(envelope.message_id, envelope.recipient, envelope.sealed.SerializeToString())


@dataclass(frozen=True, slots=True, repr=False)
class DisclosureRecord:
    """A stored disclosure request. ``released`` holds, for an outgoing request, the
    details received; for an incoming one, the names of the fields released, each
    mapped to ``""`` (the node keeps no copy of what it released)."""

    id: int
    request_id: bytes
    direction: DisclosureDirection
    state: DisclosureState
    requester: str
    owner: str
    hit_group_id: bytes | None
    signal_ref: bytes
    signal_id: int | None
    purpose: str
    requested_fields: tuple[str, ...]
    requester_officer: str
    justification: str
    covenant_version: int
    released: Mapping[str, str]
    withheld: tuple[str, ...]
    rule_category: str | None
    refusal_reason: str | None
    refusal_message: str | None
    decided_by: str | None
    decision_approved: bool | None
    decision_note: str | None
    decided_at: datetime | None
    requested_at: datetime
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    def __repr__(self) -> str:
        return (
            f"DisclosureRecord(id={self.id}, direction={self.direction.value}, "
            f"state={self.state.value})"
        )


@dataclass(frozen=True, slots=True)
class PendingEnvelope:
    """An envelope in the outbox, waiting for the broker's acknowledgement."""

    message_id: bytes
    recipient: str
    sealed: bytes


# --- checks ---------------------------------------------------------------------------


#: The refusal reason of a replayed picture request (``PictureRefusalReason`` in lower case).
PICTURE_REPLAY: Final = "replay"


@dataclass(frozen=True, slots=True)
class NewPictureCollection:
    """A picture collection this node starts as a viewer: the request and who is asked."""

    request_id: bytes
    first_month: str
    last_month: str
    measures: tuple[str, ...]
    dimensions: tuple[str, ...]
    asked: tuple[str, ...]
    officer: str
    covenant_version: int
    #: The serialized PictureRequest sent to the others (None when none was sent).
    request_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewPictureAnswer:
    """This node's answer to a picture request: contributed (with the budget it spends on
    each month, in units of 1e-9 epsilon) or refused with a reason."""

    request_id: bytes
    requester: str
    refusal_reason: str | None
    measures: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()
    months: tuple[str, ...] = ()
    spent_units: int = 0
    epsilon_spent: float = 0.0


@dataclass(frozen=True, slots=True, repr=False)
class NewPictureContribution:
    """A party's answer to one of this node's collections: the serialized, verified
    ``PictureContribution`` (counts only) and what the node indexes of it."""

    request_id: bytes
    contributor: str
    contributor_role: str
    refusal_reason: str | None
    refusal_message: str | None
    epsilon_spent: float
    body: bytes

    def __repr__(self) -> str:
        return f"NewPictureContribution(contributor={self.contributor!r})"


@dataclass(frozen=True, slots=True, repr=False)
class PictureContributionRecord:
    """A contribution as stored with its collection."""

    contributor: str
    contributor_role: str
    refusal_reason: str | None
    refusal_message: str | None
    epsilon_spent: float
    body: bytes
    received_at: datetime

    def __repr__(self) -> str:
        return f"PictureContributionRecord(contributor={self.contributor!r})"


@dataclass(frozen=True, slots=True)
class PictureCollectionRecord:
    """A collection this node started, with the contributions received so far."""

    request_id: bytes
    first_month: str
    last_month: str
    measures: tuple[str, ...]
    dimensions: tuple[str, ...]
    asked: tuple[str, ...]
    officer: str
    covenant_version: int
    created_at: datetime
    contributions: tuple[PictureContributionRecord, ...]
    request_body: bytes | None = None
    sum_requested_at: datetime | None = None
    #: The others' counts summed (shares added): never one partner's alone.
    aggregate: bytes | None = field(default=None, repr=False)
    aggregate_contributors: tuple[str, ...] = ()
    aggregate_refusal: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class HeldPictureShare:
    """A share the aggregator holds for a request."""

    contributor: str
    request_digest: bytes
    share: bytes
    first_month: str = ""
    last_month: str = ""

    def __repr__(self) -> str:
        return f"HeldPictureShare(contributor={self.contributor!r})"


@dataclass(frozen=True, slots=True)
class GivenPictureSum:
    """A sum the aggregator gave a viewer: over which parties, for which period."""

    contributors: tuple[str, ...]
    first_month: str
    last_month: str


@dataclass(frozen=True, slots=True)
class PendingPictureSum:
    """A viewer's sum request the aggregator has not answered yet."""

    request_id: bytes
    requester: str
    contributors: tuple[str, ...]


def _utc(moment: datetime, name: str = "now") -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone")
    return moment.astimezone(UTC)


def _check_text(value: object, name: str, limit: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput("must be text", field=name)
    if not value and not empty_ok:
        raise InvalidInput("must not be empty", field=name)
    if len(value) > limit:
        raise InvalidInput(f"at most {limit} characters", field=name)
    return value


def _check_bytes(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidInput(f"must be {size} bytes", field=name)
    return value


def _check_epoch(key_epoch: int) -> None:
    if not 1 <= key_epoch <= MAX_KEY_EPOCH:
        raise InvalidInput("key epoch must be 1..2^32-1", field="key_epoch")


def _check_signal(signal: NewSignal, name: str) -> None:
    _check_text(signal.reference, f"{name}.reference", models.MAX_REFERENCE_CHARS)
    _check_text(signal.category, f"{name}.category", models.MAX_CATEGORY_CHARS)
    if signal.expires_at.tzinfo is None or signal.expires_at.utcoffset() is None:
        raise InvalidInput("must carry a time zone", field=f"{name}.expires_at")
    identifiers = signal.identifiers
    if not identifiers:
        raise InvalidInput("a signal needs at least one identifier", field=f"{name}.identifiers")
    if len(identifiers) > MAX_IDENTIFIERS:
        raise MessageTooLarge(
            f"at most {MAX_IDENTIFIERS} identifiers per signal", field=f"{name}.identifiers"
        )
    seen: set[tuple[str, str]] = set()
    for j, identifier in enumerate(identifiers):
        where = f"{name}.identifiers[{j}]"
        if not isinstance(identifier, Identifier) or not isinstance(
            identifier.type, IdentifierType
        ):
            raise InvalidInput("must be a parsed identifier", field=where)
        _check_text(identifier.canonical, f"{where}.value", models.MAX_CANONICAL_CHARS)
        key = (identifier.type.value, identifier.canonical)
        if key in seen:
            raise InvalidInput(
                "the same identifier twice in one signal",
                field=where,
                reason="identifier.duplicate",
            )
        seen.add(key)
    if len(signal.details) > MAX_DETAIL_FIELDS:
        raise MessageTooLarge(
            f"at most {MAX_DETAIL_FIELDS} detail fields per signal", field=f"{name}.details"
        )
    for label, value in signal.details.items():
        _check_text(label, f"{name}.details", MAX_TEXT_BYTES)
        if not isinstance(value, str):
            raise InvalidInput("must be text", field=f"{name}.details[{label}]")
        if len(value.encode("utf-8")) > MAX_TEXT_BYTES:
            raise InvalidInput(
                f"at most {MAX_TEXT_BYTES} bytes of UTF-8", field=f"{name}.details[{label}]"
            )
    _check_attributes(signal.attributes, f"{name}.attributes")


def _check_attributes(attributes: CoarseAttributes, name: str) -> None:
    if (attributes.area_kind is None) != (attributes.area_code is None):
        raise InvalidInput("an area needs both a kind and a code", field=f"{name}.area")
    if attributes.area_kind is not None:
        if not isinstance(attributes.area_kind, AreaKind):
            raise InvalidInput("unknown area kind", field=f"{name}.area.kind")
        _check_text(attributes.area_code, f"{name}.area.code", 16)
    if attributes.branch is not None and not _BRANCH.fullmatch(attributes.branch):
        raise InvalidInput("an SBI code is 2 to 5 digits", field=f"{name}.branch")
    if attributes.month is not None and not _MONTH.fullmatch(attributes.month):
        raise InvalidInput("a month is written YYYY-MM", field=f"{name}.month")


def _details_json(details: Mapping[str, str]) -> str:
    return json.dumps(dict(details), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _content(category: str, identifiers: Iterable[Identifier], details: Mapping[str, str]) -> Any:
    """What makes two signals with one reference the same: expiry and coarse attributes
    are derived (from the covenant and the date added), so they do not count."""
    return (
        category,
        sorted((i.type.value, i.canonical) for i in identifiers),
        _details_json(details),
    )


def _chunks(values: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# --- the repository -------------------------------------------------------------------


class NodeStore(audit_store.AuditLog):
    """The node's signals, outbox, hit inbox and feed, mailbox cursor and holder counters."""

    def __init__(
        self,
        engine: Engine,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        owner: str = "node",
    ) -> None:
        """``owner`` is the node's party id: the actor of the audit entries the store
        records on its own (signals added, withdrawn and expired, hits stored)."""
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._random = random_bytes
        self._owner = owner

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- signals -----------------------------------------------------------------------

    def add_signals(
        self,
        signals: Sequence[NewSignal],
        *,
        now: datetime,
        import_batch: str | None = None,
    ) -> list[SignalRecord]:
        """Store new signals with fresh refs, their identifiers pending; all or nothing.

        A reference that an active signal already has (or an earlier row of the
        same call) is a :class:`Replay` naming ``signals[i].reference``, unless the
        content (category, identifiers, details) is the same: then nothing is
        stored for the row and the existing signal is returned with ``unchanged``.
        """
        now = _utc(now)
        if import_batch is not None:
            _check_text(import_batch, "import_batch", models.MAX_IMPORT_BATCH_CHARS)
        for i, signal in enumerate(signals):
            _check_signal(signal, f"signals[{i}]")
        if not signals:
            return []
        try:
            return self._add_signals(signals, now, import_batch)
        except IntegrityError:
            # PostgreSQL: a concurrent call committed one of these references first.
            # Once more, now that its row is visible: Replay or unchanged.
            return self._add_signals(signals, now, import_batch)

    def _add_signals(
        self, signals: Sequence[NewSignal], now: datetime, import_batch: str | None
    ) -> list[SignalRecord]:
        with self._write() as conn:
            references = sorted({s.reference for s in signals})
            existing: dict[str, SignalRecord] = {}
            for chunk in _chunks(references):
                # By reference alone, the state checked here: given both, a planner
                # without statistics scans every active signal instead.
                active = [
                    row.id
                    for row in conn.execute(
                        select(models.Signal.id, models.Signal.state).where(
                            self._among(models.Signal.reference, chunk)
                        )
                    )
                    if row.state == SignalState.ACTIVE.value
                ]
                existing.update((r.reference, r) for r in self._load_signals(conn, active))
            fresh: dict[str, int] = {}  # reference -> index of the row that stores it
            new: list[int] = []
            for i, signal in enumerate(signals):
                content = _content(signal.category, signal.identifiers, signal.details)
                if signal.reference in existing:
                    prior = existing[signal.reference]
                    same = content == _content(
                        prior.category, (r.identifier for r in prior.identifiers), prior.details
                    )
                elif signal.reference in fresh:
                    prior_new = signals[fresh[signal.reference]]
                    same = content == _content(
                        prior_new.category, prior_new.identifiers, prior_new.details
                    )
                else:
                    fresh[signal.reference] = i
                    new.append(i)
                    continue
                if not same:
                    raise Replay(
                        "an active signal with this reference exists, with other content",
                        field=f"signals[{i}].reference",
                        reason="signal.exists",
                    )
            ids = self._insert_signals(conn, [signals[i] for i in new], now, import_batch)
            stored = {r.id: r for r in self._load_signals(conn, ids)}
            by_reference = {signals[i].reference: stored[ids[k]] for k, i in enumerate(new)}
            if ids:
                refs = sorted(i.signal_ref for r in stored.values() for i in r.identifiers)
                self.append_audit(
                    conn,
                    kind=AuditKind.SIGNAL_ADDED,
                    subject=[ref.hex() for ref in refs] if len(refs) <= _AUDIT_REFS else (),
                    details={
                        "signals": len(ids),
                        "identifiers": len(refs),
                        "unchanged": len(signals) - len(ids),
                        "imported": import_batch is not None,
                        "refs_sha256": crypto.digest(b"".join(refs)).hex(),
                    },
                    now=now,
                )
        results: list[SignalRecord] = []
        for i, signal in enumerate(signals):
            if signal.reference in existing:
                results.append(replace(existing[signal.reference], unchanged=True))
            elif fresh[signal.reference] != i:
                results.append(replace(by_reference[signal.reference], unchanged=True))
            else:
                results.append(by_reference[signal.reference])
        return results

    def _insert_signals(
        self,
        conn: Connection,
        signals: Sequence[NewSignal],
        now: datetime,
        import_batch: str | None,
    ) -> list[int]:
        if not signals:
            return []
        rows = [
            {
                "reference": s.reference,
                "category": s.category,
                "details": _details_json(s.details),
                "created_at": now,
                "expires_at": s.expires_at,
                "state": SignalState.ACTIVE.value,
                "ended_at": None,
                "area_kind": None
                if s.attributes.area_kind is None
                else s.attributes.area_kind.value,
                "area_code": s.attributes.area_code,
                "branch": s.attributes.branch,
                "month": s.attributes.month,
                "import_batch": import_batch,
            }
            for s in signals
        ]
        ids = list(
            conn.execute(
                insert(models.Signal).returning(models.Signal.id, sort_by_parameter_order=True),
                rows,
            ).scalars()
        )
        identifier_rows = [
            {
                "signal_id": signal_id,
                "position": position,
                "type": identifier.type.value,
                "canonical": identifier.canonical,
                "signal_ref": self._random(ID_BYTES),
                "token": None,
                "key_epoch": None,
                "state": IdentifierState.PENDING.value,
            }
            for signal_id, signal in zip(ids, signals, strict=True)
            for position, identifier in enumerate(signal.identifiers)
        ]
        conn.execute(insert(models.SignalIdentifier), identifier_rows)
        return ids

    def withdraw_signal(
        self,
        reference: str | None = None,
        *,
        now: datetime,
        signal_id: int | None = None,
        officer: str | None = None,
    ) -> SignalRecord:
        """Withdraw the active signal with this reference (or id) and queue the withdrawal
        of its refs at the broker; ``officer`` (else the party) is the audit entry's actor.

        Idempotent: a signal that is no longer active is returned as it is. A
        reference that no signal has is :class:`NotFound`.
        """
        now = _utc(now)
        if (reference is None) == (signal_id is None):
            raise InvalidInput("give a reference or a signal id", field="reference")
        with self._write(outbox=True) as conn:
            query = select(models.Signal.id, models.Signal.state)
            if signal_id is not None:
                query = query.where(models.Signal.id == signal_id)
                name = "signal_id"
            else:
                query = query.where(models.Signal.reference == reference)
                name = "reference"
            # The active signal if there is one, else the latest that had the reference.
            query = query.order_by(
                (models.Signal.state == SignalState.ACTIVE.value).desc(), models.Signal.id.desc()
            )
            found = conn.execute(query.limit(1).with_for_update()).first()
            if found is None:
                raise NotFound("no signal with this " + name.replace("_", " "), field=name)
            if found.state == SignalState.ACTIVE.value:
                self._end_signals(conn, [found.id], SignalState.WITHDRAWN, now)
            (record,) = self._load_signals(conn, [found.id])
            if found.state == SignalState.ACTIVE.value:
                self.append_audit(
                    conn,
                    kind=AuditKind.SIGNAL_WITHDRAWN,
                    actor=officer,
                    subject=[i.signal_ref.hex() for i in record.identifiers],
                    details={"identifiers": len(record.identifiers)},
                    now=now,
                )
        return record

    def expire_signals(self, now: datetime, *, limit: int = 10_000) -> int:
        """Mark active signals whose expiry has passed as expired, at most ``limit``, and
        queue the withdrawal of their refs. Returns how many; call again while it is
        ``limit``."""
        now = _utc(now)
        with self._write(outbox=True) as conn:
            ids = list(
                conn.execute(
                    select(models.Signal.id)
                    .where(
                        models.Signal.state == SignalState.ACTIVE.value,
                        models.Signal.expires_at <= now,
                    )
                    .order_by(models.Signal.expires_at, models.Signal.id)
                    .limit(limit)
                    .with_for_update()
                ).scalars()
            )
            self._end_signals(conn, ids, SignalState.EXPIRED, now)
            if ids:
                self.append_audit(
                    conn, kind=AuditKind.SIGNAL_EXPIRED, details={"signals": len(ids)}, now=now
                )
        return len(ids)

    def _end_signals(
        self, conn: Connection, signal_ids: Sequence[int], state: SignalState, now: datetime
    ) -> None:
        """Signals leave ACTIVE: identifiers without a token are done; those with one are
        withdrawn at the broker, in withdraw batches behind any batch that submitted them."""
        si = models.SignalIdentifier
        done: list[int] = []
        to_withdraw: list[tuple[int, bytes]] = []
        live = (IdentifierState.TOKENISED.value, IdentifierState.SUBMITTED.value)
        for chunk in _chunks(signal_ids):
            conn.execute(
                update(models.Signal)
                .where(self._among(models.Signal.id, chunk))
                .values(state=state.value, ended_at=now)
            )
            rows = conn.execute(
                select(si.id, si.state, si.signal_ref)
                .where(self._among(si.signal_id, chunk))
                .order_by(si.id)
                .with_for_update()
            ).all()
            done += [row.id for row in rows if row.state == IdentifierState.PENDING.value]
            to_withdraw += [(row.id, row.signal_ref) for row in rows if row.state in live]
        self._set_state(conn, done, IdentifierState.WITHDRAWN)
        self._set_state(conn, [i for i, _ in to_withdraw], IdentifierState.WITHDRAW_PENDING)
        for batch in _chunks(to_withdraw, MAX_REFS_PER_WITHDRAWAL):
            self._create_batch(
                conn,
                BatchKind.WITHDRAW,
                None,
                now,
                [
                    {"identifier_id": identifier_id, "signal_ref": ref}
                    for identifier_id, ref in batch
                ],
            )

    def _set_state(
        self,
        conn: Connection,
        identifier_ids: Sequence[int],
        state: IdentifierState,
        **values: Any,
    ) -> None:
        si = models.SignalIdentifier
        for chunk in _chunks(identifier_ids):
            conn.execute(
                update(si).where(self._among(si.id, chunk)).values(state=state.value, **values)
            )

    def signal(self, reference: str) -> SignalRecord | None:
        """The active signal with this reference, else the latest one that had it."""
        with self._read() as conn:
            found = conn.execute(
                select(models.Signal.id)
                .where(models.Signal.reference == reference)
                .order_by(
                    (models.Signal.state == SignalState.ACTIVE.value).desc(),
                    models.Signal.id.desc(),
                )
                .limit(1)
            ).scalar_one_or_none()
            if found is None:
                return None
            return self._load_signals(conn, [found])[0]

    def signal_by_id(self, signal_id: int) -> SignalRecord | None:
        """The signal with this id, if any."""
        with self._read() as conn:
            records = self._load_signals(conn, [signal_id])
        return records[0] if records else None

    # --- tokens and the outbox ---------------------------------------------------------

    def pending_identifiers(
        self, limit: int, *, now: datetime | None = None, types: Sequence[str] | None = None
    ) -> list[PendingIdentifier]:
        """Identifiers of active signals that wait for a token, oldest first. With ``now``,
        signals that have expired by then are left out (the expiry sweep ends them); with
        ``types``, only identifiers of those types (the covenant's matching types: the
        others stay local, pending until a covenant version matches them)."""
        si = models.SignalIdentifier
        moment = None if now is None else _utc(now)
        found: list[PendingIdentifier] = []
        after = 0
        with self._read() as conn:
            # Pending identifiers by their (state, id) index, their signals by primary key:
            # a join lets a planner without statistics loop over every active signal.
            while len(found) < limit:
                rows = conn.execute(
                    select(si.id, si.signal_id, si.type, si.canonical)
                    .where(
                        si.state == IdentifierState.PENDING.value,
                        si.id > after,
                        *(() if types is None else (si.type.in_(list(types)),)),
                    )
                    .order_by(si.id)
                    .limit(limit)
                ).all()
                if not rows:
                    break
                signals = self._signals_by_id(conn, {row.signal_id for row in rows})
                for row in rows:
                    signal = signals[row.signal_id]
                    if signal.state != SignalState.ACTIVE.value or (
                        moment is not None and signal.expires_at <= moment
                    ):
                        continue
                    found.append(
                        PendingIdentifier(
                            id=row.id,
                            signal_id=row.signal_id,
                            identifier=Identifier(IdentifierType(row.type), row.canonical),
                            category=signal.category,
                            expires_at=signal.expires_at,
                        )
                    )
                after = rows[-1].id
        return found[:limit]

    def record_tokens(
        self,
        tokens: Mapping[int, bytes],
        key_epoch: int,
        *,
        now: datetime,
        seal_attributes: Callable[[str], bytes] | None = None,
        proof_keys: Mapping[int, bytes] | None = None,
    ) -> list[OutboxBatch]:
        """Store tokens by identifier id and create their submit batches, atomically.

        Only identifiers that are still pending, of active signals that have not
        expired by ``now``, are taken; the others (withdrawn meanwhile, or
        already recorded by an earlier call) are skipped, so a repeated call
        changes nothing. ``seal_attributes`` turns a category into the serialized
        ``SecretBox`` sent with each entry; it is sealed once, here, and stored.
        ``proof_keys`` are the tokens' hit proof keys by identifier id, stored in
        the same transaction (an identifier without one can prove no hit).
        """
        now = _utc(now)
        _check_epoch(key_epoch)
        for identifier_id, token in tokens.items():
            _check_bytes(token, TOKEN_BYTES, f"tokens[{identifier_id}]")
        proof_keys = proof_keys or {}
        for identifier_id, key in proof_keys.items():
            if identifier_id not in tokens:
                raise InvalidInput(
                    "a proof key without a token", field=f"proof_keys[{identifier_id}]"
                )
            _check_bytes(key, HIT_PROOF_KEY_BYTES, f"proof_keys[{identifier_id}]")
        si = models.SignalIdentifier
        with self._write(outbox=True) as conn:
            # Two lookups by primary key, not one join: with an IN list on one side and
            # a filter on the other, SQLite's planner would scan the other table.
            pending: list[Any] = []
            for chunk in _chunks(sorted(tokens)):
                pending += conn.execute(
                    select(si.id, si.signal_id, si.signal_ref)
                    .where(self._among(si.id, chunk), si.state == IdentifierState.PENDING.value)
                    .order_by(si.id)
                    .with_for_update()
                ).all()
            signals = self._signals_by_id(conn, {row.signal_id for row in pending})
            rows = [
                _Taken(row.id, row.signal_ref, signal.category, signal.expires_at)
                for row in pending
                if (signal := signals[row.signal_id]).state == SignalState.ACTIVE.value
                and signal.expires_at > now
            ]
            if not rows:
                return []
            conn.execute(
                update(si)
                .where(si.id == bindparam("b_id"))
                .values(
                    token=bindparam("b_token"),
                    key_epoch=key_epoch,
                    state=IdentifierState.TOKENISED.value,
                ),
                [{"b_id": row.id, "b_token": tokens[row.id]} for row in rows],
            )
            keyed = [
                {"identifier_id": row.id, "proof_key": proof_keys[row.id]}
                for row in rows
                if row.id in proof_keys
            ]
            if keyed:
                statement = self._insert(models.HitProofKey)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["identifier_id"],
                        set_={"proof_key": statement.excluded.proof_key},
                    ),
                    keyed,
                )
            sealed: dict[str, bytes] = {}
            if seal_attributes is not None:
                for category in sorted({row.category for row in rows}):
                    sealed[category] = seal_attributes(category)
            batches = [
                self._create_batch(
                    conn,
                    BatchKind.SUBMIT,
                    key_epoch,
                    now,
                    [
                        {
                            "identifier_id": row.id,
                            "signal_ref": row.signal_ref,
                            "token": tokens[row.id],
                            "expires_at": row.expires_at,
                            "sealed_attributes": sealed.get(row.category),
                            "category": row.category,
                        }
                        for row in chunk
                    ],
                )
                for chunk in _chunks(rows, MAX_TOKENS_PER_BATCH)
            ]
        return batches

    def _create_batch(
        self,
        conn: Connection,
        kind: BatchKind,
        key_epoch: int | None,
        now: datetime,
        entries: Sequence[dict[str, Any]],
    ) -> OutboxBatch:
        client_batch_id = self._random(ID_BYTES)
        batch_id = conn.execute(
            insert(models.OutboxBatch)
            .values(
                client_batch_id=client_batch_id,
                kind=kind.value,
                key_epoch=key_epoch,
                created_at=now,
            )
            .returning(models.OutboxBatch.id)
        ).scalar_one()
        conn.execute(
            insert(models.OutboxEntry),
            [
                {
                    "batch_id": batch_id,
                    "position": position,
                    "identifier_id": entry["identifier_id"],
                    "signal_ref": entry["signal_ref"],
                    "token": entry.get("token"),
                    "expires_at": entry.get("expires_at"),
                    "sealed_attributes": entry.get("sealed_attributes"),
                }
                for position, entry in enumerate(entries)
            ],
        )
        categories: dict[int, str]
        if kind is BatchKind.WITHDRAW:
            categories = self._categories(conn, [e["identifier_id"] for e in entries])
        else:
            categories = {e["identifier_id"]: e["category"] for e in entries}
        return OutboxBatch(
            client_batch_id=client_batch_id,
            kind=kind,
            key_epoch=key_epoch,
            created_at=now,
            entries=tuple(
                OutboxEntry(
                    signal_ref=e["signal_ref"],
                    token=e.get("token"),
                    expires_at=e.get("expires_at"),
                    category=categories[e["identifier_id"]],
                    sealed_attributes=e.get("sealed_attributes"),
                )
                for e in entries
            ),
        )

    def _categories(self, conn: Connection, identifier_ids: Iterable[int]) -> dict[int, str]:
        """The categories of identifiers' signals, by identifier id."""
        identifiers = self._identifiers_by_id(conn, identifier_ids)
        signals = self._signals_by_id(conn, {row.signal_id for row in identifiers.values()})
        return {i: signals[row.signal_id].category for i, row in identifiers.items()}

    def _identifiers_by_id(self, conn: Connection, identifier_ids: Iterable[int]) -> dict[int, Any]:
        si = models.SignalIdentifier
        found: dict[int, Any] = {}
        for chunk in _chunks(sorted(set(identifier_ids))):
            found.update(
                (row.id, row)
                for row in conn.execute(
                    select(si.id, si.signal_id, si.type).where(self._among(si.id, chunk))
                )
            )
        return found

    def _signals_by_id(self, conn: Connection, signal_ids: Iterable[int]) -> dict[int, Any]:
        sg = models.Signal
        found: dict[int, Any] = {}
        for chunk in _chunks(sorted(set(signal_ids))):
            found.update(
                (row.id, row)
                for row in conn.execute(
                    select(sg.id, sg.state, sg.reference, sg.category, sg.expires_at).where(
                        self._among(sg.id, chunk)
                    )
                )
            )
        return found

    def outbox(self, limit: int = DEFAULT_PAGE) -> list[OutboxBatch]:
        """The unacknowledged batches, oldest first, exactly as they were created."""
        ob, oe = models.OutboxBatch, models.OutboxEntry
        with self._read() as conn:
            batches = conn.execute(
                select(ob.id, ob.client_batch_id, ob.kind, ob.key_epoch, ob.created_at)
                .where(ob.acked_at.is_(None), ob.rejected_at.is_(None))
                .order_by(ob.id)
                .limit(limit)
            ).all()
            rows: list[Any] = []
            for chunk in _chunks([b.id for b in batches]):
                rows += conn.execute(
                    select(
                        oe.batch_id,
                        oe.identifier_id,
                        oe.signal_ref,
                        oe.token,
                        oe.expires_at,
                        oe.sealed_attributes,
                    )
                    .where(self._among(oe.batch_id, chunk))
                    .order_by(oe.batch_id, oe.position)
                ).all()
            categories = self._categories(conn, {row.identifier_id for row in rows})
        entries: dict[int, list[OutboxEntry]] = {b.id: [] for b in batches}
        for row in rows:
            entries[row.batch_id].append(
                OutboxEntry(
                    signal_ref=row.signal_ref,
                    token=row.token,
                    expires_at=row.expires_at,
                    category=categories[row.identifier_id],
                    sealed_attributes=row.sealed_attributes,
                )
            )
        return [
            OutboxBatch(
                client_batch_id=b.client_batch_id,
                kind=BatchKind(b.kind),
                key_epoch=b.key_epoch,
                created_at=b.created_at,
                entries=tuple(entries[b.id]),
            )
            for b in batches
        ]

    def mark_acked(self, client_batch_id: bytes, *, now: datetime) -> bool:
        """The broker acknowledged a batch: its identifiers are submitted (or withdrawn).

        Returns False if it was settled already (a repeated ack changes nothing).
        """
        return self._settle(client_batch_id, now, acked=True)

    def reject_batch(self, client_batch_id: bytes, *, now: datetime) -> bool:
        """The broker refused a batch for good (for example an entry expired before it
        arrived): it is not sent again. Its still-tokenised identifiers go back to
        pending, to be tokenised and submitted anew if their signal is still active;
        a refused withdrawal counts as done, since the broker drops expired entries
        on its own. Returns False if it was settled already."""
        return self._settle(client_batch_id, now, acked=False)

    def _settle(self, client_batch_id: bytes, now: datetime, *, acked: bool) -> bool:
        now = _utc(now)
        _check_bytes(client_batch_id, ID_BYTES, "client_batch_id")
        ob, oe, si = models.OutboxBatch, models.OutboxEntry, models.SignalIdentifier
        with self._write(outbox=True) as conn:
            batch = conn.execute(
                select(ob.id, ob.kind, ob.acked_at, ob.rejected_at)
                .where(ob.client_batch_id == client_batch_id)
                .with_for_update()
            ).first()
            if batch is None:
                raise NotFound("no outbox batch with this id", field="client_batch_id")
            if batch.acked_at is not None or batch.rejected_at is not None:
                return False
            conn.execute(
                update(ob)
                .where(ob.id == batch.id)
                .values(acked_at=now if acked else None, rejected_at=None if acked else now)
            )
            members = list(
                conn.execute(
                    select(oe.identifier_id).where(oe.batch_id == batch.id).order_by(oe.position)
                ).scalars()
            )
            submit = batch.kind == BatchKind.SUBMIT.value
            self.append_audit(
                conn,
                kind=AuditKind.TOKEN_SUBMISSION if submit else AuditKind.TOKEN_WITHDRAWAL,
                subject=[client_batch_id.hex()],
                details={"entries": len(members), "accepted": acked},
                now=now,
            )
            before = IdentifierState.TOKENISED if submit else IdentifierState.WITHDRAW_PENDING
            moving: list[int] = []
            for chunk in _chunks(members):
                moving += [
                    row.id
                    for row in conn.execute(
                        select(si.id, si.state).where(self._among(si.id, chunk)).with_for_update()
                    )
                    if row.state == before.value
                ]
            if not submit:
                self._set_state(conn, moving, IdentifierState.WITHDRAWN)
            elif acked:
                self._set_state(conn, moving, IdentifierState.SUBMITTED)
            else:
                self._set_state(conn, moving, IdentifierState.PENDING, token=None, key_epoch=None)
                for chunk in _chunks(moving):  # the proof keys go with their tokens
                    conn.execute(
                        delete(models.HitProofKey).where(
                            self._among(models.HitProofKey.identifier_id, chunk)
                        )
                    )
        return True

    # --- the hit inbox and feed -----------------------------------------------------

    def accept_notice(
        self,
        cursor: int,
        group_id: bytes,
        revision: int,
        kind: HitKind,
        signed_notice: bytes,
        own_refs: Iterable[bytes],
        first_seen: datetime,
        last_seen: datetime,
        *,
        now: datetime,
    ) -> bool:
        """Keep a verified hit notice if it is newer than the group's; record ``cursor``.

        Returns True if the notice was accepted (it got the next ``feed_seq``),
        False if the node already had this revision or a newer one. Either way
        the mailbox cursor advances to ``cursor`` (never back) in the same
        transaction, so the item can be acknowledged to the broker afterwards.
        """
        now = _utc(now)
        first_seen = _utc(first_seen, "first_seen")
        last_seen = _utc(last_seen, "last_seen")
        if cursor < 0:
            raise InvalidInput("a cursor is not negative", field="cursor")
        _check_bytes(group_id, ID_BYTES, "hit_group_id")
        if revision < 1:
            raise InvalidInput("a revision starts at 1", field="revision")
        try:
            kind = HitKind(kind)
        except ValueError:
            raise UnknownType("unknown hit notice kind", field="kind") from None
        if not signed_notice:
            raise InvalidInput("the signed notice is empty", field="notice")
        if first_seen > last_seen:
            raise InvalidInput("first seen after last seen", field="first_seen")
        refs = sorted(set(own_refs))
        for i, ref in enumerate(refs):
            _check_bytes(ref, ID_BYTES, f"own_signal_refs[{i}]")
        hit = models.Hit
        with self._write() as conn:
            stored_cursor, last_feed_seq = self._lock_inbox(conn)
            new_cursor = max(stored_cursor, cursor)
            known = conn.execute(
                select(hit.revision).where(hit.group_id == group_id)
            ).scalar_one_or_none()
            if known is not None and known >= revision:
                if new_cursor != stored_cursor:
                    self._save_inbox(conn, new_cursor, last_feed_seq)
                return False
            feed_seq = last_feed_seq + 1
            values = {
                "revision": revision,
                "kind": kind.value,
                "state": (HitState.CLOSED if kind is HitKind.CLOSED else HitState.OPEN).value,
                "notice": signed_notice,
                "first_seen": first_seen,
                "last_seen": last_seen,
                "received_at": now,
                "feed_seq": feed_seq,
            }
            if known is None:
                conn.execute(insert(hit).values(group_id=group_id, **values))
            else:
                conn.execute(update(hit).where(hit.group_id == group_id).values(**values))
                conn.execute(delete(models.HitRef).where(models.HitRef.group_id == group_id))
            if refs:
                resolved = self._identifiers_by_ref(conn, refs)
                conn.execute(
                    insert(models.HitRef),
                    [
                        {
                            "group_id": group_id,
                            "signal_ref": ref,
                            "identifier_id": resolved.get(ref),
                        }
                        for ref in refs
                    ],
                )
            self._save_inbox(conn, new_cursor, feed_seq)
            self.append_audit(
                conn,
                kind=AuditKind.HIT_NOTICE,
                subject=[group_id.hex()],
                details={"kind": kind.value, "revision": revision, "own_refs": len(refs)},
                now=now,
            )
        return True

    def advance_cursor(self, cursor: int) -> int:
        """Record a processed mailbox item that carried no hit; the cursor never goes back.
        Returns the cursor now stored."""
        if cursor < 0:
            raise InvalidInput("a cursor is not negative", field="cursor")
        with self._write() as conn:
            stored_cursor, last_feed_seq = self._lock_inbox(conn)
            if cursor > stored_cursor:
                self._save_inbox(conn, cursor, last_feed_seq)
                return cursor
        return stored_cursor

    def note_set_aside(self, cursor: int, kind: str, size: int, *, now: datetime) -> None:
        """Record that the broker set aside the mailbox item at ``cursor`` (too large to
        deliver: ``kind`` and ``size`` as its marker says), and advance past it: the node
        does not get that item, and its audit log says so."""
        if cursor < 0:
            raise InvalidInput("a cursor is not negative", field="cursor")
        now = _utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(
                conn,
                kind=AuditKind.MAILBOX_ITEM_SET_ASIDE,
                details={"cursor": cursor, "kind": kind, "bytes": size},
                now=now,
            )

    def mailbox_cursor(self) -> int:
        """The last broker mailbox cursor whose item is processed (0: none yet)."""
        with self._read() as conn:
            found = conn.execute(
                select(models.Inbox.mailbox_cursor).where(models.Inbox.id == _INBOX_ROW)
            ).scalar_one_or_none()
        return found or 0

    def last_feed_seq(self) -> int:
        """The ``feed_seq`` of the latest accepted notice (0: none yet)."""
        with self._read() as conn:
            found = conn.execute(
                select(models.Inbox.last_feed_seq).where(models.Inbox.id == _INBOX_ROW)
            ).scalar_one_or_none()
        return found or 0

    def hits(
        self,
        state: HitState | None = None,
        *,
        after_feed_seq: int = 0,
        limit: int = DEFAULT_PAGE,
        newest_first: bool = False,
        before_feed_seq: int | None = None,
    ) -> list[HitRecord]:
        """Hits in feed order: those whose latest change has a ``feed_seq`` after
        ``after_feed_seq`` (and before ``before_feed_seq``), oldest change first or,
        with ``newest_first``, newest first."""
        hit = models.Hit
        query = select(hit.__table__).where(hit.feed_seq > after_feed_seq)
        if state is not None:
            query = query.where(hit.state == HitState(state).value)
        if before_feed_seq is not None:
            query = query.where(hit.feed_seq < before_feed_seq)
        query = query.order_by(hit.feed_seq.desc() if newest_first else hit.feed_seq)
        with self._read() as conn:
            rows = conn.execute(query.limit(limit)).all()
            return self._hit_records(conn, rows)

    def hit(self, group_id: bytes) -> HitRecord | None:
        """The hit of this group, if the node has one."""
        with self._read() as conn:
            rows = conn.execute(
                select(models.Hit.__table__).where(models.Hit.group_id == group_id)
            ).all()
            records = self._hit_records(conn, rows)
        return records[0] if records else None

    def _hit_records(self, conn: Connection, rows: Sequence[Any]) -> list[HitRecord]:
        hr = models.HitRef
        refs: list[Any] = []
        for chunk in _chunks([row.group_id for row in rows]):
            refs += conn.execute(
                select(hr.group_id, hr.signal_ref, hr.identifier_id)
                .where(self._among(hr.group_id, chunk))
                .order_by(hr.group_id, hr.signal_ref)
            ).all()
        identifiers = self._identifiers_by_id(
            conn, {ref.identifier_id for ref in refs if ref.identifier_id is not None}
        )
        signals = self._signals_by_id(conn, {row.signal_id for row in identifiers.values()})
        own: dict[bytes, list[OwnSignal]] = {row.group_id: [] for row in rows}
        for ref in refs:
            identifier = identifiers.get(ref.identifier_id)
            signal = None if identifier is None else signals[identifier.signal_id]
            own[ref.group_id].append(
                OwnSignal(
                    signal_ref=ref.signal_ref,
                    signal_id=None if signal is None else signal.id,
                    reference=None if signal is None else signal.reference,
                    category=None if signal is None else signal.category,
                    identifier_type=None if identifier is None else IdentifierType(identifier.type),
                )
            )
        return [
            HitRecord(
                group_id=row.group_id,
                revision=row.revision,
                kind=HitKind(row.kind),
                state=HitState(row.state),
                notice=row.notice,
                first_seen=row.first_seen,
                last_seen=row.last_seen,
                received_at=row.received_at,
                feed_seq=row.feed_seq,
                own_signals=tuple(own[row.group_id]),
            )
            for row in rows
        ]

    def _identifiers_by_ref(self, conn: Connection, refs: Sequence[bytes]) -> dict[bytes, int]:
        si = models.SignalIdentifier
        found: dict[bytes, int] = {}
        for chunk in _chunks(refs):
            found.update(
                (ref, identifier_id)
                for ref, identifier_id in conn.execute(
                    select(si.signal_ref, si.id).where(self._among(si.signal_ref, chunk))
                )
            )
        return found

    def _lock_inbox(self, conn: Connection) -> tuple[int, int]:
        """The inbox row, created if missing and locked until the transaction ends."""
        conn.execute(
            self._insert(models.Inbox)
            .values(id=_INBOX_ROW, mailbox_cursor=0, last_feed_seq=0)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = conn.execute(
            select(models.Inbox.mailbox_cursor, models.Inbox.last_feed_seq)
            .where(models.Inbox.id == _INBOX_ROW)
            .with_for_update()
        ).one()
        return row.mailbox_cursor, row.last_feed_seq

    def _advance_inbox(self, conn: Connection, cursor: int) -> None:
        """Lock the inbox row and move its mailbox cursor up to ``cursor``, never back: a
        mailbox item handled without a change to the hit feed."""
        stored_cursor, last_feed_seq = self._lock_inbox(conn)
        if cursor > stored_cursor:
            self._save_inbox(conn, cursor, last_feed_seq)

    def _save_inbox(self, conn: Connection, cursor: int, last_feed_seq: int) -> None:
        conn.execute(
            update(models.Inbox)
            .where(models.Inbox.id == _INBOX_ROW)
            .values(mailbox_cursor=cursor, last_feed_seq=last_feed_seq)
        )

    # --- status and key-holder counters ---------------------------------------------

    def status_counts(self) -> StatusCounts:
        """Signals by state, identifiers waiting for tokens, the outbox, hits, the cursor."""
        sg, si, ob, oe, hit = (
            models.Signal,
            models.SignalIdentifier,
            models.OutboxBatch,
            models.OutboxEntry,
            models.Hit,
        )
        unsettled = (ob.acked_at.is_(None), ob.rejected_at.is_(None))
        with self._read() as conn:
            by_state = {
                state: count
                for state, count in conn.execute(select(sg.state, func.count()).group_by(sg.state))
            }
            hits = {
                state: count
                for state, count in conn.execute(
                    select(hit.state, func.count()).group_by(hit.state)
                )
            }
            pending = conn.execute(
                select(func.count()).where(si.state == IdentifierState.PENDING.value)
            ).scalar_one()
            batches = conn.execute(select(func.count()).where(*unsettled)).scalar_one()
            entries = conn.execute(
                select(func.count())
                .select_from(oe)
                .join(ob, ob.id == oe.batch_id)
                .where(*unsettled)
            ).scalar_one()
            cursor = conn.execute(
                select(models.Inbox.mailbox_cursor).where(models.Inbox.id == _INBOX_ROW)
            ).scalar_one_or_none()
        return StatusCounts(
            signals=MappingProxyType({s: int(by_state.get(s.value, 0)) for s in SignalState}),
            identifiers_pending=pending,
            outbox_batches=batches,
            outbox_entries=entries,
            open_hits=int(hits.get(HitState.OPEN.value, 0)),
            closed_hits=int(hits.get(HitState.CLOSED.value, 0)),
            mailbox_cursor=cursor or 0,
        )

    def _count_usage(
        self, conn: Connection, party: str, day: date, *, served: int, elements: int, refused: int
    ) -> None:
        usage = models.HolderUsage
        statement = self._insert(usage).values(
            party=party,
            day=day,
            requests_served=served,
            elements_evaluated=elements,
            requests_refused=refused,
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["party", "day"],
                set_={
                    "requests_served": usage.requests_served + statement.excluded.requests_served,
                    "elements_evaluated": usage.elements_evaluated
                    + statement.excluded.elements_evaluated,
                    "requests_refused": usage.requests_refused
                    + statement.excluded.requests_refused,
                },
            )
        )

    def count_evaluation(
        self,
        party: str,
        *,
        now: datetime,
        elements: int,
        answered: AnsweredRequest | None = None,
    ) -> None:
        """Count one key-holder request of ``party`` served on ``now``'s UTC day, with the
        number of elements evaluated, and audit it.

        ``answered`` is the replay-cache entry of the request: stored in the
        same transaction, so a count is never kept without it nor it without the
        count. An entry already stored is a :class:`Replay` and nothing is
        counted. Entries past their ``keep_until`` are deleted here too.
        Refusals are not counted here, one by one, but summed
        (:meth:`count_holder_events`).
        """
        _check_text(party, "party", models.MAX_PARTY_CHARS)
        if elements < 0:
            raise InvalidInput("a count is not negative", field="elements")
        if answered is not None and answered.requester != party:
            raise InvalidInput("the answered request is not this party's", field="answered")
        digest = answered.digest if answered is not None else None
        if digest is not None and len(digest) != crypto.DIGEST_BYTES:
            raise InvalidInput(
                f"a request digest is {crypto.DIGEST_BYTES} bytes", field="answered.digest"
            )
        now = _utc(now)
        with self._write() as conn:
            if answered is not None:
                answers = models.HolderAnswer
                conn.execute(delete(answers).where(answers.keep_until < now))
                stored = conn.execute(
                    self._insert(answers)
                    .values(
                        requester=answered.requester,
                        request_id=answered.request_id,
                        holder_index=answered.holder_index,
                        keep_until=_utc(answered.keep_until),
                        request_digest=answered.digest,
                    )
                    .on_conflict_do_nothing(
                        index_elements=["requester", "request_id", "holder_index"]
                    )
                    .returning(answers.holder_index)
                ).first()
                if stored is None:
                    raise Replay(
                        "this request was already answered",
                        field="request_id",
                        reason="oprf.replay",
                    )
            self._count_usage(conn, party, now.date(), served=1, elements=elements, refused=0)
            self.append_audit(
                conn,
                kind=AuditKind.OPRF_EVALUATION,
                actor=party,
                subject=[answered.request_id.hex()] if answered is not None else (),
                details={"elements": elements, "refused": False},
                now=now,
            )

    def count_holder_events(self, events: Mapping[HolderEvent, int], *, now: datetime) -> None:
        """Record summed key-holder events in one transaction: per (requester, outcome,
        day) one audit entry with the number of requests, and refusals also in that
        day's ``requests_refused``. What a ``Tally`` of the holder loop writes.

        ``requester`` is a party the holder verified, or ``holder.UNVERIFIED``.
        """
        now = _utc(now)
        checked = []
        for event, count in sorted(events.items()):
            _check_text(event.requester, "requester", models.MAX_PARTY_CHARS)
            if count < 1:
                raise InvalidInput("a summed count is positive", field="count")
            checked.append((event, count))
        with self._write() as conn:
            for event, count in checked:
                again = event.outcome == ANSWERED_AGAIN
                if not again:
                    self._count_usage(
                        conn, event.requester, event.day, served=0, elements=0, refused=count
                    )
                details: dict[str, str | int | bool] = {
                    "elements": 0,
                    "refused": not again,
                    "requests": count,
                    "day": event.day.isoformat(),
                }
                if again:
                    details["answered_again"] = True
                else:
                    details["reason"] = event.outcome
                self.append_audit(
                    conn,
                    kind=AuditKind.OPRF_EVALUATION,
                    actor=event.requester,
                    details=details,
                    now=now,
                )

    def answered_requests(self, *, now: datetime) -> list[AnsweredRequest]:
        """The key holder's replay cache: answered requests that could still be fresh at ``now``."""
        answers = models.HolderAnswer
        with self._read() as conn:
            rows = conn.execute(
                select(answers.__table__).where(answers.keep_until >= _utc(now))
            ).all()
        return [
            AnsweredRequest(
                row.requester, row.request_id, row.holder_index, row.keep_until, row.request_digest
            )
            for row in rows
        ]

    def evaluations_on(self, party: str, day: date) -> int:
        """Elements evaluated for ``party`` on a UTC day: what its daily quota counts."""
        usage = models.HolderUsage
        with self._read() as conn:
            found = conn.execute(
                select(usage.elements_evaluated).where(usage.party == party, usage.day == day)
            ).scalar_one_or_none()
        return found or 0

    def holder_totals(self) -> HolderTotals:
        """The key-holder counters since the store was created, for ``GetStatus``."""
        usage = models.HolderUsage
        with self._read() as conn:
            row = conn.execute(
                select(
                    func.coalesce(func.sum(usage.requests_served), 0),
                    func.coalesce(func.sum(usage.elements_evaluated), 0),
                    func.coalesce(func.sum(usage.requests_refused), 0),
                )
            ).one()
        return HolderTotals(int(row[0]), int(row[1]), int(row[2]))

    # --- the audit log ----------------------------------------------------------------

    @contextlib.contextmanager
    def _audit_write(self) -> Iterator[Connection]:
        with self._write() as conn:
            yield conn

    def _audit_read(self) -> contextlib.AbstractContextManager[Connection]:
        return self._read()

    # --- disclosures and the envelope outbox -------------------------------------------
    #
    # Each method is one transaction: a request sent is stored with its envelope; a
    # mailbox item is processed with the cursor advance (and the answer it causes, in
    # the envelope outbox); an officer's decision is stored with its answer.

    def record_outgoing(
        self, request: NewDisclosure, envelope: SealedEnvelope, *, now: datetime
    ) -> DisclosureRecord:
        """Store a request this node sends (state ``sent``) and its envelope, together."""
        now = _utc(now)
        with self._write() as conn:
            conn.execute(
                insert(models.Disclosure).values(
                    **self._disclosure_values(request, DisclosureDirection.OUTGOING, now),
                    state=DisclosureState.SENT.value,
                )
            )
            self._queue_envelope(conn, envelope, now)
            self.append_audit(
                conn,
                kind=AuditKind.DISCLOSURE_REQUESTED,
                subject=[request.request_id.hex()],
                details={
                    "owner": request.owner,
                    "purpose": request.purpose,
                    "fields": len(request.fields),
                },
                now=now,
            )
            return self._disclosure_by(conn, request.request_id)

    def receive_request(
        self,
        cursor: int,
        request: NewDisclosure,
        verdict: Verdict,
        answer: SealedEnvelope | None,
        *,
        now: datetime,
    ) -> bool:
        """Record an incoming request with the owner's verdict, queue the answer and advance
        the mailbox cursor, in one transaction. A replay (a request id already stored)
        stores nothing of the request; returns whether it was stored. A pending request
        is stored with its hit group (approval checks the group of now), so one without
        a group is refused (``InvalidInput``, field ``hit_group_id``)."""
        now = _utc(now)
        if verdict.outcome is Outcome.PENDING and request.hit_group_id is None:
            raise InvalidInput("a pending request needs its hit group", field="hit_group_id")
        with self._write() as conn:
            stored_cursor, last_feed_seq = self._lock_inbox(conn)
            stored = False
            if verdict.reason is not Refusal.REPLAY:
                values = self._disclosure_values(request, DisclosureDirection.INCOMING, now)
                values.update(self._verdict_values(verdict, now))
                result = conn.execute(
                    self._insert(models.Disclosure)
                    .values(**values, signal_id=verdict.signal_id)
                    .on_conflict_do_nothing(index_elements=["request_id"])
                    # An INSERT's rowcount is not kept on PostgreSQL (SQLAlchemy 2.1, psycopg).
                    .returning(models.Disclosure.request_id)
                )
                stored = result.first() is not None
            if answer is not None:
                self._queue_envelope(conn, answer, now)
            if cursor > stored_cursor:
                self._save_inbox(conn, cursor, last_feed_seq)
            self.append_audit(
                conn,
                kind=AuditKind.DISCLOSURE_DECISION,
                actor=request.requester,
                subject=[request.request_id.hex()],
                details=self._verdict_audit(verdict, request.purpose),
                now=now,
            )
        return stored

    def decide_pending(
        self,
        request_id: bytes,
        *,
        officer: str,
        approved: bool,
        note: str,
        verdict: Verdict,
        answer: SealedEnvelope | None,
        now: datetime,
    ) -> DisclosureRecord:
        """Store a second officer's decision on a pending incoming request, with the final
        verdict and its answer (None: not answered, as for a requester no longer in the
        covenant). ``NotAllowed`` (field ``request_id``) unless the request is pending, so
        two officers deciding at once cannot both win."""
        now = _utc(now)
        if verdict.outcome is Outcome.PENDING:
            raise ValueError("an officer's decision is final")
        d = models.Disclosure
        with self._write() as conn:
            result = conn.execute(
                update(d)
                .where(
                    d.request_id == request_id,
                    d.direction == DisclosureDirection.INCOMING.value,
                    d.state == DisclosureState.PENDING_APPROVAL.value,
                )
                .values(
                    **self._verdict_values(verdict, now),
                    decided_by=officer,
                    decision_approved=approved,
                    decision_note=note,
                    decided_at=now,
                )
            )
            if result.rowcount != 1:
                raise NotAllowed(
                    "not an incoming request waiting for approval",
                    field="request_id",
                    reason="disclosure.not_pending",
                )
            if answer is not None:
                self._queue_envelope(conn, answer, now)
            record = self._disclosure_by(conn, request_id)
            self.append_audit(
                conn,
                kind=AuditKind.DISCLOSURE_APPROVED if approved else AuditKind.DISCLOSURE_DENIED,
                actor=officer,
                subject=[request_id.hex()],
                details=self._verdict_audit(verdict, record.purpose),
                now=now,
            )
            return record

    def apply_response(self, cursor: int, update_: ResponseUpdate, *, now: datetime) -> bool:
        """Apply an owner's answer to an outgoing request and advance the mailbox cursor, in
        one transaction. An answer to an unknown request, from another owner, or after a
        final one changes nothing but the cursor. Granted details are kept only for the
        fields asked for. Returns whether the request changed."""
        now = _utc(now)
        d = models.Disclosure
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            row = conn.execute(
                select(d.state, d.requested_fields).where(
                    d.request_id == update_.request_id,
                    d.direction == DisclosureDirection.OUTGOING.value,
                    d.owner == update_.owner,
                )
            ).one_or_none()
            if row is None or row.state in _FINAL:
                return False
            values: dict[str, Any] = {"updated_at": now}
            if update_.outcome is Outcome.PENDING:
                values["state"] = DisclosureState.PENDING_APPROVAL.value
            elif update_.outcome is Outcome.GRANTED:
                asked = set(json.loads(row.requested_fields))
                received = {k: v for k, v in (update_.values or {}).items() if k in asked}
                values.update(
                    state=DisclosureState.GRANTED.value,
                    released_fields=_details_json(received),
                    withheld_fields=json.dumps(sorted(set(update_.withheld) & asked)),
                    finished_at=now,
                )
            else:
                assert update_.reason is not None
                values.update(
                    state=DisclosureState.REFUSED.value,
                    refusal_reason=update_.reason.value,
                    refusal_message=update_.message,
                    finished_at=now,
                )
            conn.execute(update(d).where(d.request_id == update_.request_id).values(**values))
            if update_.outcome is not Outcome.PENDING:
                self.append_audit(
                    conn,
                    kind=AuditKind.DISCLOSURE_RELEASED
                    if update_.outcome is Outcome.GRANTED
                    else AuditKind.DISCLOSURE_REFUSED,
                    actor=update_.owner,
                    subject=[update_.request_id.hex()],
                    details={
                        "outcome": update_.outcome.value,
                        "reason": "" if update_.reason is None else update_.reason.value,
                        "released": len(update_.values or {}),
                    },
                    now=now,
                )
        return True

    def skip_envelope(
        self,
        cursor: int,
        *,
        what: str,
        now: datetime,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Record a mailbox envelope that is dropped unanswered (forged, malformed or of a
        kind this version does not handle) and advance past it, in one transaction.
        ``field`` and ``reason`` say what was wrong with it (names and codes, never values)."""
        now = _utc(now)
        details: dict[str, object] = {"dropped": what, "cursor": cursor}
        if field is not None:
            details["field"] = field
        if reason is not None:
            details["reason"] = reason
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(conn, kind=AuditKind.DISCLOSURE_RECEIVED, details=details, now=now)

    def disclosure_seen(self, request_id: bytes, /) -> bool:
        """Whether a request with this id is stored (either direction)."""
        with self._read() as conn:
            return (
                conn.execute(
                    select(models.Disclosure.id).where(models.Disclosure.request_id == request_id)
                ).first()
                is not None
            )

    def signal_facts(self, signal_ref: bytes, /) -> SignalFacts | None:
        """The signal behind one of this node's refs, for deciding a disclosure."""
        si, sg = models.SignalIdentifier, models.Signal
        with self._read() as conn:
            row = conn.execute(
                select(sg.id, sg.category, sg.state, sg.details)
                .join(si, si.signal_id == sg.id)
                .where(si.signal_ref == signal_ref)
            ).one_or_none()
        if row is None:
            return None
        return SignalFacts(
            signal_id=row.id,
            category=row.category,
            active=row.state == SignalState.ACTIVE.value,
            details=MappingProxyType(json.loads(row.details)),
        )

    def picture_signal_facts(self, first_month: str, last_month: str) -> list[picture.SignalFacts]:
        """The coarse attributes of the signals of the months ``first_month``..``last_month``
        that were active at some time in them, grouped: one fact per combination of
        attributes, with how many signals have it. All the regional picture reads.

        Counting in SQL keeps the picture near the cost of reading the rows (issue 6's
        benchmark). Signals without a month are not counted (every signal stored
        since the picture existed has one).
        """
        sg = models.Signal
        start = datetime.strptime(first_month, "%Y-%m").replace(tzinfo=UTC)
        attributes = (sg.area_kind, sg.area_code, sg.branch, sg.category, sg.month)
        with self._read() as conn:
            rows = conn.execute(
                select(*attributes, func.count())
                .where(
                    sg.month >= first_month,
                    sg.month <= last_month,
                    or_(sg.ended_at.is_(None), sg.ended_at >= start),
                )
                .group_by(*attributes)
            ).all()
        areas: dict[tuple[str | None, str | None], str | None] = {}
        facts: list[picture.SignalFacts] = []
        for kind, code, branch, category, month, count in rows:
            if month is None:  # excluded by the query; for the type checker
                continue
            area = areas.get((kind, code), "")
            if area == "":
                area = areas[kind, code] = picture.area_value(kind, code)
            facts.append(picture.SignalFacts(area, branch, category, month, count))
        return facts

    def hit_proof_key(self, signal_ref: bytes, /) -> bytes | None:
        """The hit proof key of this node's identifier with this ref; None if it has no such
        ref, or the identifier has no token now or got it before hit proofs existed."""
        si, hk = models.SignalIdentifier, models.HitProofKey
        with self._read() as conn:
            found = conn.execute(
                select(hk.proof_key)
                .join(si, si.id == hk.identifier_id)
                .where(si.signal_ref == signal_ref)
            ).scalar_one_or_none()
        return None if found is None else bytes(found)

    def hit_own_refs(self, group_id: bytes, /) -> frozenset[bytes]:
        """This node's own refs that its latest notice of the group lists (empty if it holds
        no notice of the group)."""
        hr = models.HitRef
        with self._read() as conn:
            refs = conn.execute(select(hr.signal_ref).where(hr.group_id == group_id)).scalars()
            return frozenset(bytes(ref) for ref in refs)

    def hit_closed(self, group_id: bytes, /) -> bool:
        """Whether this node's latest notice of the group closed it."""
        with self._read() as conn:
            state = conn.execute(
                select(models.Hit.state).where(models.Hit.group_id == group_id)
            ).scalar_one_or_none()
        return state == HitState.CLOSED.value

    def hit_members(self, group_id: bytes, /) -> frozenset[str] | None:
        """The parties this node's latest notice of the group shows as members; None if it
        holds no notice of the group or its notice does not show members by party."""
        with self._read() as conn:
            stored = conn.execute(
                select(models.Hit.notice).where(models.Hit.group_id == group_id)
            ).scalar_one_or_none()
        if stored is None:
            return None
        try:
            notice = broker_pb2.HitNotice.FromString(common_pb2.Signed.FromString(stored).body)
        except DecodeError:
            return None
        if not notice.visibility.parties:
            return None
        return frozenset(m.party for m in notice.members if m.party)

    def requests_since(self, requester: str, since: datetime, /) -> int:
        """Incoming requests stored from ``requester`` at or after ``since``."""
        d = models.Disclosure
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        d.requester == requester,
                        d.direction == DisclosureDirection.INCOMING.value,
                        d.created_at >= _utc(since, "since"),
                    )
                ).scalar_one()
            )

    def grants_since(
        self, requester: str, purpose: str, rule_category: str, since: datetime, /
    ) -> int:
        """Incoming requests granted to ``requester`` under one rule at or after ``since``."""
        d = models.Disclosure
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        d.requester == requester,
                        d.direction == DisclosureDirection.INCOMING.value,
                        d.state == DisclosureState.GRANTED.value,
                        d.purpose == purpose,
                        d.rule_category == rule_category,
                        d.finished_at >= _utc(since, "since"),
                    )
                ).scalar_one()
            )

    def disclosure(self, request_id: bytes) -> DisclosureRecord | None:
        """The request with this id, if any."""
        with self._read() as conn:
            found = conn.execute(
                select(models.Disclosure.__table__).where(
                    models.Disclosure.request_id == request_id
                )
            ).one_or_none()
        return None if found is None else _disclosure_record(found)

    def disclosures(
        self,
        direction: DisclosureDirection | None = None,
        state: DisclosureState | None = None,
        *,
        limit: int = DEFAULT_PAGE,
        before_id: int | None = None,
    ) -> list[DisclosureRecord]:
        """Requests newest first, filtered; ``before_id`` continues a page."""
        d = models.Disclosure
        query = select(d.__table__)
        if direction is not None:
            query = query.where(d.direction == DisclosureDirection(direction).value)
        if state is not None:
            query = query.where(d.state == DisclosureState(state).value)
        if before_id is not None:
            query = query.where(d.id < before_id)
        with self._read() as conn:
            rows = conn.execute(query.order_by(d.id.desc()).limit(limit)).all()
        return [_disclosure_record(row) for row in rows]

    def pending_approvals(self) -> int:
        """Incoming requests waiting for a second officer."""
        d = models.Disclosure
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        d.direction == DisclosureDirection.INCOMING.value,
                        d.state == DisclosureState.PENDING_APPROVAL.value,
                    )
                ).scalar_one()
            )

    def envelope_outbox(self, limit: int = DEFAULT_PAGE) -> list[PendingEnvelope]:
        """Envelopes not yet acknowledged by the broker, oldest first, unchanged."""
        e = models.EnvelopeOutboxItem
        with self._read() as conn:
            rows = conn.execute(
                select(e.client_message_id, e.recipient, e.sealed)
                .where(e.sent_at.is_(None), e.rejected_at.is_(None))
                .order_by(e.id)
                .limit(limit)
            ).all()
        return [PendingEnvelope(r.client_message_id, r.recipient, r.sealed) for r in rows]

    def settle_envelope(self, message_id: bytes, *, sent: bool, now: datetime) -> bool:
        """Mark an envelope acknowledged (``sent``) or refused for good by the broker."""
        e = models.EnvelopeOutboxItem
        column = "sent_at" if sent else "rejected_at"
        with self._write() as conn:
            result = conn.execute(
                update(e)
                .where(
                    e.client_message_id == message_id,
                    e.sent_at.is_(None),
                    e.rejected_at.is_(None),
                )
                .values({column: _utc(now)})
            )
        return result.rowcount == 1

    def _queue_envelope(self, conn: Connection, envelope: SealedEnvelope, now: datetime) -> None:
        _check_bytes(envelope.message_id, ID_BYTES, "client_message_id")
        conn.execute(
            insert(models.EnvelopeOutboxItem).values(
                client_message_id=envelope.message_id,
                recipient=envelope.recipient,
                sealed=envelope.sealed,
                created_at=now,
            )
        )

    @staticmethod
    def _disclosure_values(
        request: NewDisclosure, direction: DisclosureDirection, now: datetime
    ) -> dict[str, Any]:
        _check_bytes(request.request_id, ID_BYTES, "request_id")
        _check_bytes(request.signal_ref, ID_BYTES, "signal_ref")
        return {
            "request_id": request.request_id,
            "direction": direction.value,
            "requester": request.requester,
            "owner": request.owner,
            "hit_group_id": request.hit_group_id,
            "signal_ref": request.signal_ref,
            "purpose": request.purpose,
            "requested_fields": json.dumps(list(request.fields)),
            "requester_officer": request.officer,
            "justification": request.justification,
            "covenant_version": request.covenant_version,
            "requested_at": _utc(request.requested_at, "requested_at"),
            "created_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _verdict_values(verdict: Verdict, now: datetime) -> dict[str, Any]:
        if verdict.outcome is Outcome.GRANTED:
            return {
                "state": DisclosureState.GRANTED.value,
                "released_fields": json.dumps(sorted(verdict.values or {})),
                "withheld_fields": json.dumps(list(verdict.withheld)),
                "rule_category": verdict.rule_category,
                "finished_at": now,
                "updated_at": now,
            }
        if verdict.outcome is Outcome.PENDING:
            return {"state": DisclosureState.PENDING_APPROVAL.value, "updated_at": now}
        assert verdict.reason is not None
        return {
            "state": DisclosureState.REFUSED.value,
            "refusal_reason": verdict.reason.value,
            "refusal_message": verdict.message,
            "finished_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _verdict_audit(verdict: Verdict, purpose: str) -> dict[str, object]:
        """Outcome, purpose and field names (never values), as the audit log takes them."""
        return {
            "outcome": verdict.outcome.value,
            "purpose": purpose,
            "released": _names(sorted(verdict.values or {})),
            "withheld": _names(verdict.withheld),
            "reason": "" if verdict.reason is None else verdict.reason.value,
        }

    def _disclosure_by(self, conn: Connection, request_id: bytes) -> DisclosureRecord:
        row = conn.execute(
            select(models.Disclosure.__table__).where(models.Disclosure.request_id == request_id)
        ).one()
        return _disclosure_record(row)

    # --- the regional picture ----------------------------------------------------------
    #
    # As for disclosures, each method is one transaction: a collection is stored with
    # its envelopes and this node's own answer; an incoming request's answer with the
    # budget it spends, its envelope and the mailbox cursor; a contribution with the
    # cursor. Audit entries carry ids, names and epsilon: never a count or an attribute.

    def start_picture_collection(
        self,
        collection: NewPictureCollection,
        envelopes: Sequence[SealedEnvelope],
        own_answer: NewPictureAnswer,
        own_contribution: NewPictureContribution,
        *,
        budget_units: int,
        now: datetime,
    ) -> None:
        """Store a collection this node starts, the requests sealed to the other parties
        and its own answer (budget spent, contribution kept), together. ``NotAllowed``
        (reason ``picture.budget_exhausted``) if the budget changed since it was read."""
        now = _utc(now)
        _check_bytes(collection.request_id, ID_BYTES, "request_id")
        with self._write() as conn:
            conn.execute(
                insert(models.PictureCollection).values(
                    request_id=collection.request_id,
                    first_month=collection.first_month,
                    last_month=collection.last_month,
                    measures=json.dumps(list(collection.measures)),
                    dimensions=json.dumps(list(collection.dimensions)),
                    asked=json.dumps(list(collection.asked)),
                    officer=collection.officer,
                    covenant_version=collection.covenant_version,
                    created_at=now,
                    request_body=collection.request_body,
                )
            )
            for envelope in envelopes:
                self._queue_envelope(conn, envelope, now)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[collection.request_id.hex()],
                details={
                    "event": "collection_started",
                    "period": f"{collection.first_month}..{collection.last_month}",
                    "measures": _names(collection.measures),
                    "dimensions": _names(collection.dimensions),
                    "asked": len(collection.asked),
                },
                now=now,
            )
            self._answer_picture(conn, own_answer, budget_units, now)
            self._keep_contribution(conn, own_contribution, now)

    def answer_picture_request(
        self,
        cursor: int,
        answer: NewPictureAnswer,
        envelope: SealedEnvelope,
        *,
        budget_units: int,
        now: datetime,
        also: Sequence[SealedEnvelope] = (),
        own_share: HeldPictureShare | None = None,
        requester: str = "",
    ) -> bool:
        """Record this node's answer to a picture request, spend its budget, queue the
        sealed contribution (or refusal) and advance the mailbox cursor, in one
        transaction; with it the aggregator's share (``also``, sealed to it), or, when
        this node is the aggregator, its own second share kept directly (``own_share``).
        A refusal as a replay is sent but stores no answer; any other
        answer to a request id answered before stores and sends nothing (returns
        False). ``BudgetExhausted`` if the budget changed since it was read: decide
        again."""
        now = _utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            if answer.refusal_reason == PICTURE_REPLAY:
                self._picture_audit(conn, answer, "request_replayed", now)
            elif not self._answer_picture(conn, answer, budget_units, now):
                return False
            self._queue_envelope(conn, envelope, now)
            for extra in also:
                self._queue_envelope(conn, extra, now)
            if own_share is not None:
                conn.execute(
                    self._insert(models.PictureShareHeld)
                    .values(
                        request_id=answer.request_id,
                        requester=requester,
                        contributor=own_share.contributor,
                        request_digest=own_share.request_digest,
                        share=own_share.share,
                        first_month=own_share.first_month,
                        last_month=own_share.last_month,
                        received_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["request_id", "contributor"])
                )
        return True

    def _answer_picture(
        self, conn: Connection, answer: NewPictureAnswer, budget_units: int, now: datetime
    ) -> bool:
        _check_bytes(answer.request_id, ID_BYTES, "request_id")
        a = models.PictureAnswer
        result = conn.execute(
            self._insert(a)
            .values(
                request_id=answer.request_id,
                requester=answer.requester,
                outcome=(
                    models.PictureAnswerOutcome.REFUSED
                    if answer.refusal_reason is not None
                    else models.PictureAnswerOutcome.CONTRIBUTED
                ).value,
                refusal_reason=answer.refusal_reason,
                epsilon_spent=answer.epsilon_spent,
                answered_at=now,
            )
            .on_conflict_do_nothing(index_elements=["request_id"])
            .returning(a.request_id)  # an INSERT's rowcount is not kept on PostgreSQL
        )
        if result.first() is None:
            self._picture_audit(conn, answer, "request_replayed", now)
            return False
        if answer.spent_units > 0:
            self._spend_budget(conn, answer.months, answer.spent_units, budget_units, now)
        self._picture_audit(conn, answer, "request_answered", now)
        return True

    def _picture_audit(
        self, conn: Connection, answer: NewPictureAnswer, event: str, now: datetime
    ) -> None:
        self.append_audit(
            conn,
            kind=AuditKind.PICTURE_EVENT,
            actor=answer.requester,
            subject=[answer.request_id.hex()],
            details={
                "event": event,
                "outcome": "refused" if answer.refusal_reason else "contributed",
                "reason": answer.refusal_reason or "",
                "measures": _names(answer.measures),
                "dimensions": _names(answer.dimensions),
                "epsilon_spent": f"{answer.epsilon_spent:g}",
                "months": _names(answer.months) if answer.spent_units > 0 else "",
            },
            now=now,
        )

    def _spend_budget(
        self, conn: Connection, months: Sequence[str], units: int, budget_units: int, now: datetime
    ) -> None:
        """Add ``units`` to each month's spending, never beyond ``budget_units``: a month
        that would go over fails the whole transaction (``BudgetExhausted``)."""
        b = models.PictureBudget
        for month in months:
            if not _MONTH.fullmatch(month):
                raise InvalidInput("a month is written YYYY-MM", field="months")
            conn.execute(
                self._insert(b)
                .values(month=month, spent_units=0, updated_at=now)
                .on_conflict_do_nothing(index_elements=["month"])
            )
            result = conn.execute(
                update(b)
                .where(b.month == month, b.spent_units + units <= budget_units)
                .values(spent_units=b.spent_units + units, updated_at=now)
            )
            if result.rowcount != 1:
                raise picture.BudgetExhausted(
                    f"the privacy budget of {month} is spent", field="period"
                )

    def picture_answered(self, request_id: bytes, /) -> bool:
        """Whether this node answered a picture request with this id before."""
        a = models.PictureAnswer
        with self._read() as conn:
            found = conn.execute(select(a.request_id).where(a.request_id == request_id)).first()
        return found is not None

    def picture_ledger(self, months: Sequence[str], /) -> picture.BudgetLedger:
        """The privacy budget spent so far on ``months`` (the others are left out)."""
        b = models.PictureBudget
        if not months:
            return picture.BudgetLedger()
        with self._read() as conn:
            rows = conn.execute(
                select(b.month, b.spent_units).where(b.month.in_(list(months)))
            ).all()
        return picture.BudgetLedger({r.month: int(r.spent_units) for r in rows})

    def receive_picture_contribution(
        self, cursor: int, contribution: NewPictureContribution, *, now: datetime
    ) -> bool:
        """Keep a contribution to one of this node's collections and advance the mailbox
        cursor, in one transaction. A contribution to an unknown collection, from a party
        not asked, or a second one from the same party is dropped (returns False)."""
        now = _utc(now)
        c = models.PictureCollection
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            asked = conn.execute(
                select(c.asked).where(c.request_id == contribution.request_id)
            ).scalar_one_or_none()
            self._clear_parts(
                conn,
                PicturePartKind.CONTRIBUTION,
                contribution.request_id,
                contribution.contributor,
            )
            if asked is None or contribution.contributor not in json.loads(asked):
                self.append_audit(
                    conn,
                    kind=AuditKind.PICTURE_EVENT,
                    actor=contribution.contributor,
                    subject=[contribution.request_id.hex()],
                    details={"event": "contribution_dropped", "why": "not asked"},
                    now=now,
                )
                return False
            return self._keep_contribution(conn, contribution, now)

    def _keep_contribution(
        self, conn: Connection, contribution: NewPictureContribution, now: datetime
    ) -> bool:
        result = conn.execute(
            self._insert(models.PictureContribution)
            .values(
                request_id=contribution.request_id,
                contributor=contribution.contributor,
                contributor_role=contribution.contributor_role,
                refusal_reason=contribution.refusal_reason,
                refusal_message=contribution.refusal_message,
                epsilon_spent=contribution.epsilon_spent,
                body=contribution.body,
                received_at=now,
            )
            .on_conflict_do_nothing(index_elements=["request_id", "contributor"])
            .returning(models.PictureContribution.id)
        )
        kept = result.first() is not None
        self.append_audit(
            conn,
            kind=AuditKind.PICTURE_EVENT,
            actor=contribution.contributor,
            subject=[contribution.request_id.hex()],
            details={
                "event": "contribution_received" if kept else "contribution_repeated",
                "outcome": "refused" if contribution.refusal_reason else "contributed",
                "reason": contribution.refusal_reason or "",
                "epsilon_spent": f"{contribution.epsilon_spent:g}",
            },
            now=now,
        )
        return kept

    def picture_collection(self, request_id: bytes) -> PictureCollectionRecord | None:
        """One of this node's collections with the contributions received so far."""
        c = models.PictureCollection
        with self._read() as conn:
            row = conn.execute(select(c.__table__).where(c.request_id == request_id)).one_or_none()
            return None if row is None else self._collection_record(conn, row)

    def picture_collections(
        self,
        *,
        first_month: str | None = None,
        last_month: str | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> list[PictureCollectionRecord]:
        """This node's collections, newest first; only those of one period if given."""
        c = models.PictureCollection
        query = select(c.__table__).order_by(c.id.desc()).limit(limit)
        if first_month is not None:
            query = query.where(c.first_month == first_month)
        if last_month is not None:
            query = query.where(c.last_month == last_month)
        with self._read() as conn:
            return [self._collection_record(conn, row) for row in conn.execute(query).all()]

    def picture_collections_overlapping(
        self, first_month: str, last_month: str
    ) -> list[PictureCollectionRecord]:
        """This node's collections whose period shares a month with ``first_month`` ..
        ``last_month``, oldest first (all of them: the exact-mode period check)."""
        _month_bounds(first_month, last_month)  # both are YYYY-MM
        c = models.PictureCollection
        query = (
            select(c.__table__)
            .where(c.first_month <= last_month, c.last_month >= first_month)
            .order_by(c.id)
        )
        with self._read() as conn:
            return [self._collection_record(conn, row) for row in conn.execute(query).all()]

    def _collection_record(self, conn: Connection, row: Any) -> PictureCollectionRecord:
        p = models.PictureContribution
        contributions = tuple(
            PictureContributionRecord(
                contributor=r.contributor,
                contributor_role=r.contributor_role,
                refusal_reason=r.refusal_reason,
                refusal_message=r.refusal_message,
                epsilon_spent=float(r.epsilon_spent),
                body=bytes(r.body),
                received_at=r.received_at,
            )
            for r in conn.execute(
                select(p.__table__).where(p.request_id == row.request_id).order_by(p.id)
            )
        )
        return PictureCollectionRecord(
            request_id=bytes(row.request_id),
            first_month=row.first_month,
            last_month=row.last_month,
            measures=tuple(json.loads(row.measures)),
            dimensions=tuple(json.loads(row.dimensions)),
            asked=tuple(json.loads(row.asked)),
            officer=row.officer,
            covenant_version=row.covenant_version,
            created_at=row.created_at,
            contributions=contributions,
            request_body=None if row.request_body is None else bytes(row.request_body),
            sum_requested_at=row.sum_requested_at,
            aggregate=None if row.aggregate is None else bytes(row.aggregate),
            aggregate_contributors=tuple(json.loads(row.aggregate_contributors or "[]")),
            aggregate_refusal=row.aggregate_refusal,
        )

    # --- secure aggregation: the viewer's side ---------------------------------------------

    def request_picture_sum(
        self,
        request_id: bytes,
        contributors: Sequence[str],
        envelope: SealedEnvelope,
        *,
        now: datetime,
    ) -> bool:
        """Queue the viewer's one sum request to the aggregator, unless it was queued
        before (returns False): the request and its envelope in one transaction."""
        now = _utc(now)
        c = models.PictureCollection
        with self._write() as conn:
            result = conn.execute(
                update(c)
                .where(c.request_id == request_id, c.sum_requested_at.is_(None))
                .values(sum_requested_at=now)
            )
            if result.rowcount != 1:
                return False
            self._queue_envelope(conn, envelope, now)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[request_id.hex()],
                details={"event": "sum_requested", "contributors": len(contributors)},
                now=now,
            )
        return True

    def keep_picture_sum(
        self,
        cursor: int,
        request_id: bytes,
        *,
        aggregate: bytes | None,
        contributors: Sequence[str],
        refusal: str | None,
        now: datetime,
    ) -> bool:
        """Keep the aggregator's answer with the mailbox cursor, in one transaction: the
        others' summed counts (the shares added) or the refusal; the shares this node
        held of those contributors are erased with it (``-``), so that nothing but the
        sum remains. A second answer for the request changes nothing (returns False)."""
        now = _utc(now)
        c, p = models.PictureCollection, models.PictureContribution
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            result = conn.execute(
                update(c)
                .where(
                    c.request_id == request_id,
                    c.aggregate.is_(None),
                    c.aggregate_refusal.is_(None),
                )
                .values(
                    aggregate=aggregate,
                    aggregate_contributors=json.dumps(sorted(contributors)),
                    aggregate_refusal=refusal,
                )
            )
            kept = result.rowcount == 1
            if kept and contributors:
                conn.execute(
                    update(p)
                    .where(p.request_id == request_id, p.contributor.in_(list(contributors)))
                    .values(body=b"-")
                )
            if kept:  # parts of shares or of the sum still held are of no use now
                self._clear_parts(conn, PicturePartKind.CONTRIBUTION, request_id)
                self._clear_parts(conn, PicturePartKind.SUM, request_id)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[request_id.hex()],
                details={
                    "event": "sum_received" if kept else "sum_repeated",
                    "outcome": "refused" if refusal else "summed",
                    "contributors": len(contributors),
                },
                now=now,
            )
        return kept

    # --- secure aggregation: the aggregator's side -----------------------------------------

    def keep_picture_share(
        self,
        cursor: int,
        request_id: bytes,
        *,
        requester: str,
        contributor: str,
        request_digest: bytes,
        share: bytes,
        first_month: str,
        last_month: str,
        now: datetime,
    ) -> bool:
        """Keep a contributor's second share with the mailbox cursor, in one transaction.
        A share for a request already summed, or a second one of the contributor, is
        dropped (returns False)."""
        now = _utc(now)
        _check_bytes(request_id, ID_BYTES, "request_id")
        m, h = models.PictureSumAnswer, models.PictureShareHeld
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            answered = conn.execute(select(m.answered_at).where(m.request_id == request_id)).first()
            self._clear_parts(conn, PicturePartKind.SHARE, request_id, contributor)
            kept = False
            if answered is None or answered.answered_at is None:
                kept = (
                    conn.execute(
                        self._insert(h)
                        .values(
                            request_id=request_id,
                            requester=requester,
                            contributor=contributor,
                            request_digest=request_digest,
                            share=share,
                            first_month=first_month,
                            last_month=last_month,
                            received_at=now,
                        )
                        .on_conflict_do_nothing(index_elements=["request_id", "contributor"])
                        .returning(h.id)
                    ).first()
                    is not None
                )
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                actor=contributor,
                subject=[request_id.hex()],
                details={"event": "share_kept" if kept else "share_dropped"},
                now=now,
            )
        return kept

    def ask_picture_sum(
        self,
        cursor: int,
        request_id: bytes,
        *,
        requester: str,
        contributors: Sequence[str],
        now: datetime,
    ) -> bool:
        """Record a viewer's sum request with the mailbox cursor; False (and nothing but the
        cursor and an audit entry) if this request id was asked before: the aggregator
        answers each at most once."""
        now = _utc(now)
        _check_bytes(request_id, ID_BYTES, "request_id")
        m = models.PictureSumAnswer
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            fresh = (
                conn.execute(
                    self._insert(m)
                    .values(
                        request_id=request_id,
                        requester=requester,
                        contributors=json.dumps(list(contributors)),
                        asked_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["request_id"])
                    .returning(m.request_id)
                ).first()
                is not None
            )
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                actor=requester,
                subject=[request_id.hex()],
                details={"event": "sum_asked" if fresh else "sum_asked_again"},
                now=now,
            )
        return fresh

    def pending_picture_sum(self, request_id: bytes) -> PendingPictureSum | None:
        """The unanswered sum request for ``request_id``, if there is one."""
        m = models.PictureSumAnswer
        with self._read() as conn:
            row = conn.execute(
                select(m.requester, m.contributors).where(
                    m.request_id == request_id, m.answered_at.is_(None)
                )
            ).first()
        if row is None:
            return None
        return PendingPictureSum(request_id, row.requester, tuple(json.loads(row.contributors)))

    def picture_shares_held(self, request_id: bytes) -> list[HeldPictureShare]:
        h = models.PictureShareHeld
        with self._read() as conn:
            rows = conn.execute(
                select(h.contributor, h.request_digest, h.share, h.first_month, h.last_month)
                .where(h.request_id == request_id)
                .order_by(h.id)
            ).all()
        return [
            HeldPictureShare(
                r.contributor, bytes(r.request_digest), bytes(r.share), r.first_month, r.last_month
            )
            for r in rows
        ]

    def picture_sums_given(
        self, requester: str, first_month: str, last_month: str
    ) -> list[GivenPictureSum]:
        """The sums this aggregator gave ``requester`` for a period overlapping the given one."""
        m = models.PictureSumAnswer
        with self._read() as conn:
            rows = conn.execute(
                select(m.contributors, m.first_month, m.last_month).where(
                    m.requester == requester,
                    m.answered_at.is_not(None),
                    m.refusal_reason.is_(None),
                    m.first_month <= last_month,
                    m.last_month >= first_month,
                )
            ).all()
        return [
            GivenPictureSum(tuple(json.loads(r.contributors)), r.first_month, r.last_month)
            for r in rows
        ]

    def answer_picture_sum(
        self,
        request_id: bytes,
        *,
        contributors: Sequence[str],
        refusal: str | None,
        envelope: SealedEnvelope | Sequence[SealedEnvelope],
        first_month: str | None = None,
        last_month: str | None = None,
        now: datetime,
    ) -> bool:
        """Answer a pending sum request once, in one transaction: mark it answered (with
        the contributors summed and the period), queue the signed sum (or refusal; a sum
        of several parts as one envelope per part) and delete every share, and every part
        of one, held for the request. False if it was answered meanwhile."""
        now = _utc(now)
        m, h = models.PictureSumAnswer, models.PictureShareHeld
        with self._write() as conn:
            result = conn.execute(
                update(m)
                .where(m.request_id == request_id, m.answered_at.is_(None))
                .values(
                    answered_at=now,
                    contributors=json.dumps(list(contributors)),
                    refusal_reason=refusal,
                    first_month=first_month,
                    last_month=last_month,
                )
            )
            if result.rowcount != 1:
                return False
            for extra in envelope if isinstance(envelope, Sequence) else (envelope,):
                self._queue_envelope(conn, extra, now)
            conn.execute(delete(h).where(h.request_id == request_id))
            self._clear_parts(conn, PicturePartKind.SHARE, request_id)
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                subject=[request_id.hex()],
                details={
                    "event": "sum_answered",
                    "outcome": "refused" if refusal else "summed",
                    "reason": refusal or "",
                    "contributors": len(contributors),
                },
                now=now,
            )
        return True

    # --- secure aggregation: vectors in parts ----------------------------------------------

    def picture_parts(self, kind: PicturePartKind, request_id: bytes, sender: str) -> list[Part]:
        """The parts held of ``sender``'s vector of ``kind`` for a request, by index."""
        t = models.PicturePartHeld
        with self._read() as conn:
            rows = conn.execute(
                select(t.part_index, t.part_count, t.total_values, t.vector_digest, t.data)
                .where(t.kind == kind.value, t.request_id == request_id, t.sender == sender)
                .order_by(t.part_index)
            ).all()
        return [
            Part(
                int(r.part_index),
                int(r.part_count),
                int(r.total_values),
                bytes(r.vector_digest),
                bytes(r.data),
            )
            for r in rows
        ]

    def keep_picture_part(
        self,
        cursor: int,
        kind: PicturePartKind,
        request_id: bytes,
        sender: str,
        part: Part,
        *,
        now: datetime,
    ) -> bool:
        """Keep one part of a vector that is not whole yet, with the mailbox cursor, in one
        transaction (checked by ``picture_shares.check_part`` before). Dropped (False:
        only the cursor and an audit entry) when that vector is settled already: for a
        contribution, the collection is unknown, the sender was not asked, its answer is
        kept or the sum is in; for a share, the sender's share is held or the request's
        sum was answered; for a sum, the collection holds the sum or a refusal. A part
        held at its index already is kept as it was: a repeat changes nothing."""
        now = _utc(now)
        _check_bytes(request_id, ID_BYTES, "request_id")
        t = models.PicturePartHeld
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            kept = False
            if not self._part_settled(conn, kind, request_id, sender):
                kept = (
                    conn.execute(
                        self._insert(t)
                        .values(
                            kind=kind.value,
                            request_id=request_id,
                            sender=sender,
                            part_index=part.index,
                            part_count=part.count,
                            total_values=part.total_values,
                            vector_digest=part.digest,
                            data=part.data,
                            received_at=now,
                        )
                        .on_conflict_do_nothing(
                            index_elements=["kind", "request_id", "sender", "part_index"]
                        )
                        .returning(t.id)
                    ).first()
                    is not None
                )
            self.append_audit(
                conn,
                kind=AuditKind.PICTURE_EVENT,
                actor=sender,
                subject=[request_id.hex()],
                details={
                    "event": "part_kept" if kept else "part_dropped",
                    "of": kind.value,
                    "part": f"{part.index + 1}/{part.count}",
                },
                now=now,
            )
        return kept

    def _part_settled(
        self, conn: Connection, kind: PicturePartKind, request_id: bytes, sender: str
    ) -> bool:
        c, p = models.PictureCollection, models.PictureContribution
        m, h = models.PictureSumAnswer, models.PictureShareHeld
        if kind is PicturePartKind.SHARE:
            answered = conn.execute(select(m.answered_at).where(m.request_id == request_id)).first()
            held = conn.execute(
                select(h.id).where(h.request_id == request_id, h.contributor == sender)
            ).first()
            return held is not None or (answered is not None and answered.answered_at is not None)
        row = conn.execute(
            select(c.asked, c.aggregate, c.aggregate_refusal).where(c.request_id == request_id)
        ).first()
        if row is None or row.aggregate is not None or row.aggregate_refusal is not None:
            return True
        if kind is PicturePartKind.SUM:
            return False
        kept = conn.execute(
            select(p.id).where(p.request_id == request_id, p.contributor == sender)
        ).first()
        return kept is not None or sender not in json.loads(row.asked)

    def _clear_parts(
        self,
        conn: Connection,
        kind: PicturePartKind,
        request_id: bytes,
        sender: str | None = None,
    ) -> None:
        """Delete the parts held of a vector that is now settled (or of every sender's)."""
        t = models.PicturePartHeld
        query = delete(t).where(t.kind == kind.value, t.request_id == request_id)
        if sender is not None:
            query = query.where(t.sender == sender)
        conn.execute(query)

    def picture_hit_group_facts(
        self, first_month: str, last_month: str
    ) -> list[picture.HitGroupFacts]:
        """The hit groups this node counts in its picture contributions for a period: those
        formed in it (``first_seen``) whose latest notice names this node the group's
        ``picture_reporter`` (the broker names exactly one member per group), each with
        the coarse attributes of this node's own first signal in it."""
        start, end = _month_bounds(first_month, last_month)
        h, hr, si, sg = models.Hit, models.HitRef, models.SignalIdentifier, models.Signal
        with self._read() as conn:
            rows = conn.execute(
                select(h.group_id, h.notice, h.first_seen).where(
                    h.first_seen >= start, h.first_seen < end
                )
            ).all()
            groups = [r for r in rows if _reports(r.notice)]
            signals: dict[bytes, Any] = {}
            for chunk in _chunks([bytes(r.group_id) for r in groups]):
                for r in conn.execute(
                    select(hr.group_id, sg.category, sg.area_kind, sg.area_code, sg.branch)
                    .join(si, si.id == hr.identifier_id)
                    .join(sg, sg.id == si.signal_id)
                    .where(self._among(hr.group_id, chunk))
                    .order_by(sg.id.desc())
                ):
                    signals[bytes(r.group_id)] = r  # the lowest signal id wins
        found = []
        for group in groups:
            own = signals.get(bytes(group.group_id))
            found.append(
                picture.HitGroupFacts(
                    area=None if own is None else picture.area_value(own.area_kind, own.area_code),
                    branch=None if own is None else own.branch,
                    category=picture.UNKNOWN if own is None else own.category,
                    month=f"{group.first_seen:%Y-%m}",
                )
            )
        return found

    # --- cases ---------------------------------------------------------------------------
    #
    # A case is what :mod:`samenloop.node.cases.machine` folded from its messages. Each change is
    # stored in one transaction with its message log row, the envelopes it causes and, for
    # a relayed message, the mailbox cursor; a refused one is audited with the cursor.

    def case(self, case_id: bytes, *, history: bool = False) -> case_core.Case | None:
        """The case with this id as this node holds it (with its history if asked)."""
        with self._read() as conn:
            row = conn.execute(
                select(models.Case.__table__).where(models.Case.case_id == case_id)
            ).one_or_none()
            if row is None:
                return None
            return self._load_cases(conn, [row], history=history)[0]

    def cases(
        self, state: case_core.CaseState | None = None, *, coordinator: str | None = None
    ) -> list[case_core.Case]:
        """Cases held here, newest first; only one state or one coordinator's if given."""
        c = models.Case
        query = select(c.__table__)
        if state is not None:
            query = query.where(c.state == case_core.CaseState(state).value)
        if coordinator is not None:
            query = query.where(c.coordinator == coordinator)
        with self._read() as conn:
            rows = conn.execute(query.order_by(c.id.desc())).all()
            return self._load_cases(conn, rows, history=False)

    def case_message_seen(self, message_id: bytes) -> bool:
        """Whether a case message with this id was applied here."""
        with self._read() as conn:
            return (
                conn.execute(
                    select(models.CaseMessage.id).where(models.CaseMessage.message_id == message_id)
                ).first()
                is not None
            )

    def record_case_change(
        self,
        before: case_core.Case | None,
        applied: case_core.Applied,
        envelopes: Sequence[SealedEnvelope],
        *,
        cursor: int | None = None,
        now: datetime,
    ) -> None:
        """Store an applied change: the case, its members and actions as they are after it,
        the message log row, the envelopes to the members and (for a relayed message) the
        mailbox cursor, with an audit entry, in one transaction. A message id or author
        sequence already stored raises ``Replay`` and stores nothing."""
        now = _utc(now)
        after, change = applied.case, applied.change
        c = models.Case
        values: dict[str, Any] = {
            "title": after.title,
            "state": after.state.value,
            "access": after.access.value,
            "hit_notice": after.hit_notice,
            "closed_at": after.closed_at,
            "outcome": after.outcome,
            "updated_at": now,
        }
        try:
            with self._write() as conn:
                if cursor is not None:
                    stored_cursor, last_feed_seq = self._lock_inbox(conn)
                    if cursor > stored_cursor:
                        self._save_inbox(conn, cursor, last_feed_seq)
                if before is None:
                    key = conn.execute(
                        insert(c)
                        .values(
                            case_id=after.case_id,
                            coordinator=after.coordinator,
                            hit_group_id=after.hit_group_id,
                            opened_at=after.opened_at,
                            created_at=now,
                            **values,
                        )
                        .returning(c.id)
                    ).scalar_one()
                else:
                    key = conn.execute(
                        update(c).where(c.case_id == after.case_id).values(**values).returning(c.id)
                    ).scalar_one()
                if change.members:
                    conn.execute(delete(models.CaseMember).where(models.CaseMember.case_id == key))
                    conn.execute(
                        insert(models.CaseMember),
                        [{"case_id": key, "party": party} for party in after.members],
                    )
                self._store_actions(conn, key, before, applied)
                conn.execute(
                    insert(models.CaseMessage).values(
                        case_id=key,
                        message_id=change.message_id,
                        author=change.author,
                        author_officer=change.author_officer,
                        author_sequence=change.author_sequence,
                        kind=change.kind.value,
                        issued_at=change.issued_at,
                        received_at=now,
                        summary=applied.summary,
                    )
                )
                for envelope in envelopes:
                    self._queue_envelope(conn, envelope, now)
                details: dict[str, object] = {
                    "kind": change.kind.value,
                    "members": len(after.members),
                    "state": after.state.value,
                    "access": after.access.value,
                    "sequence": change.author_sequence,
                    "gap": applied.gap,
                    "sent_to": len(envelopes),
                    "received": cursor is not None,
                }
                subject = [after.case_id.hex()]
                if change.action is not None:
                    subject.append(change.action.action_id.hex())
                    action = after.action(change.action.action_id)
                    if action is not None:
                        details["status"] = action.status.value
                        details["intervention"] = action.intervention_type.value
                # This node's own change names its officer as the actor (as given); a change
                # received names the author party, and its officer where the id is plain ASCII.
                own = cursor is None
                if not own and _PRINTABLE_OFFICER.fullmatch(change.author_officer):
                    details["officer"] = change.author_officer
                self.append_audit(
                    conn,
                    kind=AuditKind.CASE_EVENT,
                    actor=change.author_officer if own else change.author,
                    subject=subject,
                    details=details,
                    now=now,
                )
        except IntegrityError as error:
            raise Replay(
                "this case change is stored already", field="message_id", reason="case.replay"
            ) from error

    def _store_actions(
        self, conn: Connection, key: int, before: case_core.Case | None, applied: case_core.Applied
    ) -> None:
        a = models.CaseAction
        change, after = applied.change, applied.case
        if change.kind is case_core.ChangeKind.INVITE and (
            before is None or before.access is case_core.Access.REMOVED
        ):
            replaced = after.actions  # a late member takes the whole plan
            conn.execute(delete(a).where(a.case_id == key))
        elif change.kind is case_core.ChangeKind.ACTION_ADD and change.action is not None:
            replaced = tuple(x for x in after.actions if x.action_id == change.action.action_id)
        elif change.kind is case_core.ChangeKind.ACTION_UPDATE and change.action is not None:
            action = after.action(change.action.action_id)
            assert action is not None
            conn.execute(
                update(a)
                .where(a.case_id == key, a.action_id == action.action_id)
                .values(
                    status=action.status.value,
                    deadline=action.deadline,
                    note=action.note,
                    updated_at=action.updated_at,
                    updated_by=action.updated_by,
                )
            )
            return
        else:
            return
        if replaced:
            conn.execute(
                insert(a),
                [
                    {
                        "case_id": key,
                        "action_id": x.action_id,
                        "owner": x.owner,
                        "intervention_type": x.intervention_type.value,
                        "measure": x.measure,
                        "description": x.description,
                        "deadline": x.deadline,
                        "status": x.status.value,
                        "note": x.note,
                        "added_at": x.added_at,
                        "updated_at": x.updated_at,
                        "updated_by": x.updated_by,
                    }
                    for x in replaced
                ],
            )

    def refuse_case_message(
        self,
        cursor: int,
        *,
        case_id: bytes | None,
        kind: str,
        reason: str,
        author: str | None = None,
        now: datetime,
    ) -> None:
        """Record a relayed case message that is not applied (refused, malformed, a replay)
        and advance past it, in one transaction. Nothing of the message is stored."""
        now = _utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(
                conn,
                kind=AuditKind.CASE_EVENT,
                actor=author,
                subject=[] if case_id is None or len(case_id) != ID_BYTES else [case_id.hex()],
                details={"kind": kind, "refused": reason, "cursor": cursor, "received": True},
                now=now,
            )

    def case_activity(self, first_month: str, last_month: str) -> list[case_core.CaseActivity]:
        """For the cases this node coordinates: one record per case opened and per case
        closed (the month it happened) and per action added (its intervention type, the
        month it was added), within ``first_month``..``last_month`` (``YYYY-MM``)."""
        for name, given in (("first_month", first_month), ("last_month", last_month)):
            if not _CASE_MONTH.fullmatch(given):
                raise InvalidInput("a month is YYYY-MM", field=name)
        if first_month > last_month:
            raise InvalidInput("the period ends before it starts", field="last_month")

        def within(moment: datetime | None) -> str | None:
            if moment is None:
                return None
            month = moment.astimezone(UTC).strftime("%Y-%m")
            return month if first_month <= month <= last_month else None

        found: list[case_core.CaseActivity] = []
        c, a = models.Case, models.CaseAction
        with self._read() as conn:
            rows = conn.execute(
                select(c.id, c.opened_at, c.closed_at).where(c.coordinator == self._owner)
            ).all()
            actions = conn.execute(
                select(a.intervention_type, a.added_at)
                .join(c, c.id == a.case_id)
                .where(c.coordinator == self._owner)
            ).all()
        for row in rows:
            if (month := within(row.opened_at)) is not None:
                found.append(case_core.CaseActivity("opened", None, month))
            if (month := within(row.closed_at)) is not None:
                found.append(case_core.CaseActivity("closed", None, month))
        for action in actions:
            if (month := within(action.added_at)) is not None:
                found.append(
                    case_core.CaseActivity("intervention", action.intervention_type, month)
                )
        return sorted(found, key=lambda f: (f.month, f.kind, f.intervention_type or ""))

    def _load_cases(
        self, conn: Connection, rows: Sequence[Any], *, history: bool
    ) -> list[case_core.Case]:
        keys = [row.id for row in rows]
        members: dict[int, list[str]] = {k: [] for k in keys}
        actions: dict[int, list[case_core.Action]] = {k: [] for k in keys}
        sequences: dict[int, dict[str, int]] = {k: {} for k in keys}
        entries: dict[int, list[case_core.HistoryEntry]] = {k: [] for k in keys}
        m, a, g = models.CaseMember, models.CaseAction, models.CaseMessage
        for chunk in _chunks(keys):
            for member in conn.execute(
                select(m.case_id, m.party).where(self._among(m.case_id, chunk)).order_by(m.party)
            ):
                members[member.case_id].append(member.party)
            for x in conn.execute(
                select(a.__table__).where(self._among(a.case_id, chunk)).order_by(a.id)
            ):
                actions[x.case_id].append(
                    case_core.Action(
                        action_id=x.action_id,
                        owner=x.owner,
                        intervention_type=case_core.InterventionType(x.intervention_type),
                        measure=x.measure,
                        description=x.description,
                        deadline=x.deadline,
                        status=case_core.ActionStatus(x.status),
                        note=x.note,
                        updated_at=x.updated_at,
                        updated_by=x.updated_by,
                        added_at=x.added_at,
                    )
                )
            for s in conn.execute(
                select(g.case_id, g.author, func.max(g.author_sequence).label("last"))
                .where(self._among(g.case_id, chunk))
                .group_by(g.case_id, g.author)
            ):
                sequences[s.case_id][s.author] = int(s.last)
            if history:
                for h in conn.execute(
                    select(g.__table__).where(self._among(g.case_id, chunk)).order_by(g.id)
                ):
                    entries[h.case_id].append(
                        case_core.HistoryEntry(
                            h.issued_at,
                            h.author,
                            h.author_officer,
                            case_core.ChangeKind(h.kind),
                            h.summary,
                        )
                    )
        return [
            case_core.Case(
                case_id=row.case_id,
                coordinator=row.coordinator,
                title=row.title,
                hit_group_id=row.hit_group_id,
                state=case_core.CaseState(row.state),
                access=case_core.Access(row.access),
                members=tuple(members[row.id]),
                actions=tuple(actions[row.id]),
                opened_at=row.opened_at,
                closed_at=row.closed_at,
                outcome=row.outcome,
                sequences=MappingProxyType(sequences[row.id]),
                hit_notice=row.hit_notice,
                history=tuple(entries[row.id]),
            )
            for row in rows
        ]

    # --- covenant versions -------------------------------------------------------------

    def covenant_versions(self) -> list[bytes]:
        """The accepted covenant versions (serialized ``SignedCovenant``), oldest first."""
        cv = models.CovenantVersion
        with self._read() as conn:
            return list(conn.execute(select(cv.signatures).order_by(cv.version)).scalars())

    def accept_covenant(
        self, cursor: int | None, version: int, body: bytes, signed: bytes, *, now: datetime
    ) -> None:
        """Keep a covenant version the node accepted, from its mailbox with the cursor
        advance, or fetched from the broker (``cursor`` None)."""
        now = _utc(now)
        with self._write() as conn:
            stored_cursor, last_feed_seq = self._lock_inbox(conn)
            conn.execute(
                self._insert(models.CovenantVersion)
                .values(version=version, body=body, signatures=signed, accepted_at=now)
                .on_conflict_do_nothing(index_elements=["version"])
            )
            if cursor is not None and cursor > stored_cursor:
                self._save_inbox(conn, cursor, last_feed_seq)
            self.append_audit(
                conn, kind=AuditKind.COVENANT_ACCEPTED, details={"version": version}, now=now
            )

    def reject_covenant(self, cursor: int, reason: str, *, now: datetime) -> None:
        """Record a covenant update the node refused and advance past it."""
        now = _utc(now)
        with self._write() as conn:
            self._advance_inbox(conn, cursor)
            self.append_audit(
                conn, kind=AuditKind.COVENANT_REJECTED, details={"reason": reason}, now=now
            )

    # --- covenant timestamps -----------------------------------------------------------

    def covenant_timestamp(self) -> bytes | None:
        """The newest covenant timestamp the node verified (a serialized ``Signed``), if any."""
        ct = models.CovenantTimestamp
        with self._read() as conn:
            found = conn.execute(select(ct.signed).where(ct.id == _INBOX_ROW)).scalar_one_or_none()
        return None if found is None else bytes(found)

    def keep_timestamp(
        self,
        signed: bytes,
        *,
        version: int,
        issued_at: datetime,
        expires_at: datetime,
        cursor: int | None,
        now: datetime,
    ) -> None:
        """Keep the newest covenant timestamp (verified by the caller) in place of the one
        held, with the mailbox cursor advance when it came from the mailbox: one
        transaction."""
        now = _utc(now)
        values = {
            "version": version,
            "signed": signed,
            "issued_at": issued_at,
            "expires_at": expires_at,
            "received_at": now,
        }
        with self._write() as conn:
            if cursor is not None:
                self._advance_inbox(conn, cursor)
            conn.execute(
                self._insert(models.CovenantTimestamp)
                .values(id=_INBOX_ROW, **values)
                .on_conflict_do_update(index_elements=["id"], set_=values)
            )

    def note_freshness(
        self, *, fresh: bool, version: int, until: datetime | None, now: datetime
    ) -> None:
        """Record that the node went stale (it stops sealing and releasing) or is fresh
        again, for its covenant version: one audit entry per change."""
        now = _utc(now)
        details: dict[str, DetailValue] = {"fresh": fresh, "version": version}
        if until is not None:
            details["until"] = until.astimezone(UTC).isoformat()
        with self._write() as conn:
            self.append_audit(conn, kind=AuditKind.COVENANT_FRESHNESS, details=details, now=now)

    # --- transactions and loading -----------------------------------------------------

    @contextlib.contextmanager
    def _write(self, *, outbox: bool = False) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            if outbox and self._postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _OUTBOX_LOCK})
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**READ_ONLY)
            with conn.begin():
                yield conn

    def _among(self, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
        """``column IN values``; on PostgreSQL ``= ANY(array)``: one parameter, so a
        prepared statement's generic plan still looks the values up by index."""
        if self._postgres:
            array = postgresql.ARRAY(_ARRAY_TYPES[type(column.type)])
            return cast(ColumnElement[bool], column == any_(bindparam(None, list(values), array)))
        return cast(ColumnElement[bool], column.in_(values))

    def _insert(self, model: type[models.Base]) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(model)

    def _load_signals(self, conn: Connection, signal_ids: Sequence[int]) -> list[SignalRecord]:
        """Signals with their identifiers, in the order of ``signal_ids`` (missing ones left
        out)."""
        sg, si = models.Signal, models.SignalIdentifier
        signals: dict[int, Any] = {}
        identifiers: dict[int, list[IdentifierRecord]] = {}
        for chunk in _chunks(list(signal_ids)):
            signals.update(
                (row.id, row)
                for row in conn.execute(select(sg.__table__).where(self._among(sg.id, chunk)))
            )
            for item in conn.execute(
                select(si.__table__)
                .where(self._among(si.signal_id, chunk))
                .order_by(si.signal_id, si.position)
            ):
                identifiers.setdefault(item.signal_id, []).append(
                    IdentifierRecord(
                        id=item.id,
                        identifier=Identifier(IdentifierType(item.type), item.canonical),
                        signal_ref=item.signal_ref,
                        state=IdentifierState(item.state),
                        key_epoch=item.key_epoch,
                        token=item.token,
                    )
                )
        return [
            SignalRecord(
                id=row.id,
                reference=row.reference,
                category=row.category,
                details=MappingProxyType(json.loads(row.details)),
                created_at=row.created_at,
                expires_at=row.expires_at,
                state=SignalState(row.state),
                ended_at=row.ended_at,
                attributes=CoarseAttributes(
                    area_kind=None if row.area_kind is None else AreaKind(row.area_kind),
                    area_code=row.area_code,
                    branch=row.branch,
                    month=row.month,
                ),
                import_batch=row.import_batch,
                identifiers=tuple(identifiers.get(row.id, ())),
            )
            for signal_id in signal_ids
            if (row := signals.get(signal_id)) is not None
        ]


_CASE_MONTH: Final = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
# An officer's identity goes into the audit details only in the shape they accept.
_PRINTABLE_OFFICER: Final = re.compile(r"[\x20-\x7e]{1,64}")


def _names(names: Sequence[str]) -> str:
    """Field names for an audit detail (at most 64 characters; else just how many)."""
    joined = ",".join(names)
    return joined if len(joined) <= 64 else f"{len(names)} fields"


_FINAL: Final = frozenset({DisclosureState.GRANTED.value, DisclosureState.REFUSED.value})


def _disclosure_record(row: Any) -> DisclosureRecord:
    released: dict[str, str] = {}
    if row.released_fields is not None:
        value = json.loads(row.released_fields)
        released = dict.fromkeys(value, "") if isinstance(value, list) else dict(value)
    return DisclosureRecord(
        id=row.id,
        request_id=row.request_id,
        direction=DisclosureDirection(row.direction),
        state=DisclosureState(row.state),
        requester=row.requester,
        owner=row.owner,
        hit_group_id=row.hit_group_id,
        signal_ref=row.signal_ref,
        signal_id=row.signal_id,
        purpose=row.purpose,
        requested_fields=tuple(json.loads(row.requested_fields)),
        requester_officer=row.requester_officer,
        justification=row.justification,
        covenant_version=row.covenant_version,
        released=MappingProxyType(released),
        withheld=tuple(json.loads(row.withheld_fields or "[]")),
        rule_category=row.rule_category,
        refusal_reason=row.refusal_reason,
        refusal_message=row.refusal_message,
        decided_by=row.decided_by,
        decision_approved=row.decision_approved,
        decision_note=row.decision_note,
        decided_at=row.decided_at,
        requested_at=row.requested_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _month_bounds(first_month: str, last_month: str) -> tuple[datetime, datetime]:
    """The start of ``first_month`` and the start of the month after ``last_month`` (UTC)."""
    for name, month in (("first_month", first_month), ("last_month", last_month)):
        if not _MONTH.fullmatch(month):
            raise InvalidInput("a month is written YYYY-MM", field=name)
    start = datetime(int(first_month[:4]), int(first_month[5:]), 1, tzinfo=UTC)
    year, number = int(last_month[:4]), int(last_month[5:])
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _reports(notice: bytes) -> bool:
    """Whether a stored hit notice names this node the group's picture reporter."""
    try:
        body = common_pb2.Signed.FromString(notice).body
        return broker_pb2.HitNotice.FromString(body).picture_reporter
    except DecodeError:
        return False
