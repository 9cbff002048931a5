"""The signals' repository: signals, the token outbox, the hit inbox and its feed.

It persists what the node's core decided and holds no protocol logic. Identifiers
arrive already parsed (:mod:`samenloop.node.identifiers.normalise`); the store only
checks the shapes and limits that its tables need, naming the offending field as every
other input check does. Each public method is one transaction
(:class:`~samenloop.node.daemon.database.Database`):

* **Outbox.** Tokens are stored in the transaction that creates their submit
  batches; a withdrawal marks its identifiers in the transaction that creates
  its withdraw batch. A batch is frozen when it is created (random
  ``client_batch_id``, entries, sealed attributes) and :meth:`SignalStore.outbox`
  returns it unchanged, oldest first, until :meth:`SignalStore.mark_acked`: the
  broker recognises a resent batch by its id and content and stores nothing
  twice.
* **Inbox.** :meth:`SignalStore.accept_notice` keeps the latest revision of each
  hit group and, in the same transaction, the mailbox cursor of the item that
  delivered it; an older or repeated revision changes nothing but the cursor.
  Each accepted notice gets the next ``feed_seq``, assigned under a lock of the
  inbox row, so sequence numbers become visible in commit order: an
  application that resumes after the last ``feed_seq`` it processed never
  misses a change and never sees one twice.

Over 800 lines: signals, their tokens and outbox, and the hits on them share one set of
tables (a signal's identifiers carry its refs, tokens and outbox entries; a hit's refs
resolve to them) and the loaders over those tables; split, each half would reach into
the other's private helpers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from samenloop.node.daemon import models as daemon_models
from samenloop.node.daemon.database import (
    DEFAULT_PAGE,
    ID_BYTES,
    INBOX_ROW,
    MAX_TEXT_BYTES,
    MONTH,
    Database,
    check_bytes,
    check_text,
    chunks,
    details_json,
    utc,
)
from samenloop.node.identifiers.normalise import Identifier, IdentifierType
from samenloop.node.identifiers.person_hits import (
    Agreement,
    PersonKey,
    is_person_kind,
    person_kind,
)
from samenloop.node.identifiers.person_keys import PersonKeyKind
from samenloop.node.signals import models
from samenloop.node.signals.models import (
    AreaKind,
    BatchKind,
    HitKind,
    HitState,
    IdentifierState,
    SignalState,
)
from samenloop.node.tokens.derive import HIT_PROOF_KEY_BYTES
from samenloop.policies import crypto
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import InvalidInput, MessageTooLarge, NotFound, Replay, UnknownType
from samenloop.v1 import common_pb2

__all__ = [
    "CoarseAttributes",
    "FeedState",
    "HitRecord",
    "IdentifierRecord",
    "NewSignal",
    "OutboxBatch",
    "OutboxEntry",
    "OwnSignal",
    "PendingIdentifier",
    "PersonKeyRecord",
    "SignalRecord",
    "SignalStore",
    "StatusCounts",
]

TOKEN_BYTES: Final[int] = common_pb2.LIMITS_TOKEN_BYTES
MAX_IDENTIFIERS: Final[int] = common_pb2.LIMITS_MAX_IDENTIFIERS_PER_SIGNAL
MAX_DETAIL_FIELDS: Final[int] = common_pb2.LIMITS_MAX_DETAIL_FIELDS
MAX_TOKENS_PER_BATCH: Final[int] = common_pb2.LIMITS_MAX_TOKENS_PER_BATCH
MAX_REFS_PER_WITHDRAWAL: Final[int] = common_pb2.LIMITS_MAX_REFS_PER_WITHDRAWAL
MAX_KEY_EPOCH: Final = 2**32 - 1

# Refs an add_signals entry lists by name; beyond this only their digest.
_AUDIT_REFS: Final = 64
_BRANCH = re.compile(r"\d{2,5}")


@dataclass(frozen=True, slots=True)
class _Taken:
    """An identifier that gets its token now, with what its outbox entry needs."""

    id: int
    signal_ref: bytes
    category: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class FeedState:
    """Where the hit feed stands after restores (see ``daemon.models.FeedRestore``)."""

    #: The current feed epoch: what ``WatchHits`` reports with each sequence number.
    epoch: int
    #: The epoch of the backup this database was restored from (None: never restored).
    previous_epoch: int | None = None
    #: The backup's last feed sequence: up to it, both epochs hold the same feed.
    base_seq: int = 0
    #: The mailbox head the broker answered ``ResyncHits`` with (None: not asked yet).
    resync_head: int | None = None
    #: The last feed sequence that may repeat a change the application processed before
    #: the restore (None while the node is catching up).
    restated_until: int | None = None

    @property
    def catching_up(self) -> bool:
        """Restored, and not yet through the notices the broker re-sent."""
        return self.previous_epoch is not None and self.restated_until is None

    def position(self, epoch: int, after: int) -> tuple[int, int | None]:
        """Where a ``WatchHits`` that resumes after ``after`` of ``epoch`` starts in this
        feed, and the sequence after which its changes may repeat earlier ones (None: none
        may). Epoch 0 (unknown) or the current one: as asked. The backup's epoch: the feed
        is the same up to ``base_seq``, so a position there stands, and one beyond it
        goes back to it. Any other epoch (a restore of a restore the application never
        followed): from the start, every change possibly a repeat."""
        restored_from = None if self.previous_epoch is None else self.base_seq
        if epoch in (0, self.epoch):
            return after, restored_from
        if epoch == self.previous_epoch:
            return min(after, self.base_seq), restored_from
        return 0, 0

    def restated(self, seq: int, restated_after: int | None) -> bool:
        """Whether the change at ``seq`` may repeat one the application processed before
        a restore: after ``restated_after`` and not after the end of the catching up."""
        if restated_after is None or seq <= restated_after:
            return False
        if self.previous_epoch is None:  # an epoch this node never had: anything may repeat
            return True
        return self.restated_until is None or seq <= self.restated_until


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
    #: Keys derived from its ``person`` identifier for the covenant's person key kinds:
    #: stored as more identifiers of the signal, each with its own ref.
    person_keys: Sequence[PersonKey] = ()

    def __repr__(self) -> str:
        return (
            f"NewSignal(reference={self.reference!r}, category={self.category!r}, "
            f"identifiers={len(self.identifiers)}, person_keys={len(self.person_keys)}, "
            f"details={len(self.details)})"
        )


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
class PersonKeyRecord:
    """One stored person key of a signal (derived from its ``person`` identifier)."""

    id: int
    key: PersonKey
    signal_ref: bytes
    state: IdentifierState

    def __repr__(self) -> str:
        return f"PersonKeyRecord(id={self.id}, type={self.key.type}, state={self.state})"


@dataclass(frozen=True, slots=True, repr=False)
class SignalRecord:
    """A stored signal. ``unchanged`` is set by :meth:`SignalStore.add_signals` when the
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
    #: The person keys derived from its ``person`` identifier (the covenant's kinds).
    person_keys: tuple[PersonKeyRecord, ...] = ()

    def __repr__(self) -> str:
        return f"SignalRecord(id={self.id}, reference={self.reference!r}, state={self.state})"


@dataclass(frozen=True, slots=True, repr=False)
class PendingIdentifier:
    """An identifier waiting for its token: what the tokeniser needs."""

    id: int
    signal_id: int
    identifier: Identifier | PersonKey
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
    #: For a ref of a person key (``identifier_type`` is then ``person``): its kind.
    person_kind: PersonKeyKind | None = None


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
    #: For a hit on person keys: every agreement (open group, own signal, other party,
    #: kind) of the (own signal, party) pairs this hit is part of, from which
    #: :func:`person_hits.combine` makes their probable hits.
    person_agreements: tuple[Agreement, ...] = ()
    #: For those own signals: the person key kinds each has (any state but withdrawn),
    #: the *compared* kinds of its score (a kind it has that did not agree counts
    #: against the probable hit).
    person_own_kinds: Mapping[int, frozenset[PersonKeyKind]] = field(
        default_factory=lambda: MappingProxyType({})
    )


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


def _check_epoch(key_epoch: int) -> None:
    if not 1 <= key_epoch <= MAX_KEY_EPOCH:
        raise InvalidInput("key epoch must be 1..2^32-1", field="key_epoch")


def _check_signal(signal: NewSignal, name: str) -> None:
    check_text(signal.reference, f"{name}.reference", models.MAX_REFERENCE_CHARS)
    check_text(signal.category, f"{name}.category", models.MAX_CATEGORY_CHARS)
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
        check_text(identifier.canonical, f"{where}.value", models.MAX_CANONICAL_CHARS)
        key = (identifier.type.value, identifier.canonical)
        if key in seen:
            raise InvalidInput(
                "the same identifier twice in one signal",
                field=where,
                reason="identifier.duplicate",
            )
        seen.add(key)
    for j, person_key in enumerate(signal.person_keys):
        where = f"{name}.person_keys[{j}]"
        if not isinstance(person_key, PersonKey) or not isinstance(person_key.type, PersonKeyKind):
            raise InvalidInput("must be a derived person key", field=where)
        check_text(person_key.canonical, f"{where}.value", models.MAX_CANONICAL_CHARS)
        key = (person_key.type.value, person_key.canonical)
        if key in seen:
            raise InvalidInput("the same person key twice in one signal", field=where)
        seen.add(key)
    if len(signal.details) > MAX_DETAIL_FIELDS:
        raise MessageTooLarge(
            f"at most {MAX_DETAIL_FIELDS} detail fields per signal", field=f"{name}.details"
        )
    for label, value in signal.details.items():
        check_text(label, f"{name}.details", MAX_TEXT_BYTES)
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
        check_text(attributes.area_code, f"{name}.area.code", 16)
    if attributes.branch is not None and not _BRANCH.fullmatch(attributes.branch):
        raise InvalidInput("an SBI code is 2 to 5 digits", field=f"{name}.branch")
    if attributes.month is not None and not MONTH.fullmatch(attributes.month):
        raise InvalidInput("a month is written YYYY-MM", field=f"{name}.month")


def _content(category: str, identifiers: Iterable[Identifier], details: Mapping[str, str]) -> Any:
    """What makes two signals with one reference the same: expiry and coarse attributes
    are derived (from the covenant and the date added), so they do not count."""
    return (
        category,
        sorted((i.type.value, i.canonical) for i in identifiers),
        details_json(details),
    )


def _stored_identifiers(signal: NewSignal) -> list[Identifier | PersonKey]:
    """A new signal's identifiers as stored: its own, then its derived person keys."""
    return [*signal.identifiers, *signal.person_keys]


def _tokenisable(type_name: str, canonical: str) -> Identifier | PersonKey:
    """A stored identifier as it is tokenised: an identifier or a derived person key."""
    if is_person_kind(type_name):
        return PersonKey(person_kind(type_name), canonical)
    return Identifier(IdentifierType(type_name), canonical)


class SignalStore(Database):
    """Signals, their identifiers and refs, the token outbox, the hit inbox and feed, and
    the node's status counts."""

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
        now = utc(now)
        if import_batch is not None:
            check_text(import_batch, "import_batch", models.MAX_IMPORT_BATCH_CHARS)
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
            for chunk in chunks(references):
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
                "details": details_json(s.details),
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
            for position, identifier in enumerate(_stored_identifiers(signal))
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
        now = utc(now)
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
        now = utc(now)
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
        for chunk in chunks(signal_ids):
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
        for batch in chunks(to_withdraw, MAX_REFS_PER_WITHDRAWAL):
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
        for chunk in chunks(identifier_ids):
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

    def _load_signals(self, conn: Connection, signal_ids: Sequence[int]) -> list[SignalRecord]:
        """Signals with their identifiers, in the order of ``signal_ids`` (missing ones left
        out)."""
        sg, si = models.Signal, models.SignalIdentifier
        signals: dict[int, Any] = {}
        identifiers: dict[int, list[IdentifierRecord]] = {}
        person_keys: dict[int, list[PersonKeyRecord]] = {}
        for chunk in chunks(list(signal_ids)):
            signals.update(
                (row.id, row)
                for row in conn.execute(select(sg.__table__).where(self._among(sg.id, chunk)))
            )
            for item in conn.execute(
                select(si.__table__)
                .where(self._among(si.signal_id, chunk))
                .order_by(si.signal_id, si.position)
            ):
                if is_person_kind(item.type):
                    person_keys.setdefault(item.signal_id, []).append(
                        PersonKeyRecord(
                            id=item.id,
                            key=PersonKey(person_kind(item.type), item.canonical),
                            signal_ref=item.signal_ref,
                            state=IdentifierState(item.state),
                        )
                    )
                    continue
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
                person_keys=tuple(person_keys.get(row.id, ())),
            )
            for signal_id in signal_ids
            if (row := signals.get(signal_id)) is not None
        ]

    # --- tokens and the outbox ---------------------------------------------------------

    def pending_identifiers(
        self, limit: int, *, now: datetime | None = None, types: Sequence[str] | None = None
    ) -> list[PendingIdentifier]:
        """Identifiers of active signals that wait for a token, oldest first. With ``now``,
        signals that have expired by then are left out (the expiry sweep ends them); with
        ``types``, only identifiers of those types (the covenant's matching types: the
        others stay local, pending until a covenant version matches them)."""
        si = models.SignalIdentifier
        return self._identifier_pages(
            lambda after: (
                select(si.id, si.signal_id, si.type, si.canonical)
                .where(
                    si.state == IdentifierState.PENDING.value,
                    si.id > after,
                    *(() if types is None else (si.type.in_(list(types)),)),
                )
                .order_by(si.id)
                .limit(limit)
            ),
            limit,
            None if now is None else utc(now),
        )

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
        now = utc(now)
        proof_keys = _checked_tokens(tokens, key_epoch, proof_keys)
        si = models.SignalIdentifier
        with self._write(outbox=True) as conn:
            # Two lookups by primary key, not one join: with an IN list on one side and
            # a filter on the other, SQLite's planner would scan the other table.
            pending: list[Any] = []
            for chunk in chunks(sorted(tokens)):
                pending += conn.execute(
                    select(si.id, si.signal_id, si.signal_ref)
                    .where(self._among(si.id, chunk), si.state == IdentifierState.PENDING.value)
                    .order_by(si.id)
                    .with_for_update()
                ).all()
            rows = self._live(conn, pending, now)
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
            return self._submit_batches(conn, rows, tokens, key_epoch, now, seal_attributes)

    # --- rotating the OPRF key ------------------------------------------------------

    def restate_candidates(
        self, current: int, staged: int, limit: int, *, now: datetime
    ) -> list[PendingIdentifier]:
        """Identifiers to re-tokenise under the ``staged`` key epoch, oldest first: those
        the broker acknowledged under the ``current`` epoch (the broker takes a staged
        entry only for a ref it holds), of active signals not expired by ``now``, without
        a staged token yet. An import while staged is tokenised under the current epoch
        first and comes here once acknowledged."""
        si, rt = models.SignalIdentifier, models.RestatedToken
        return self._identifier_pages(
            lambda after: (
                select(si.id, si.signal_id, si.type, si.canonical)
                .where(
                    si.state == IdentifierState.SUBMITTED.value,
                    si.key_epoch == current,
                    si.id > after,
                    ~select(rt.identifier_id)
                    .where(rt.identifier_id == si.id, rt.key_epoch == staged)
                    .exists(),
                )
                .order_by(si.id)
                .limit(limit)
            ),
            limit,
            utc(now),
        )

    def record_restated(
        self,
        tokens: Mapping[int, bytes],
        key_epoch: int,
        *,
        now: datetime,
        seal_attributes: Callable[[str], bytes] | None = None,
        proof_keys: Mapping[int, bytes] | None = None,
    ) -> list[OutboxBatch]:
        """Store staged-epoch tokens by identifier id and put them in submit batches of
        ``key_epoch`` under each identifier's own ``signal_ref``, in one transaction.

        Only identifiers still submitted, of active signals not expired by ``now`` and
        without a staged token, are taken: a repeated call (a crash after the commit)
        submits nothing twice, and an identifier withdrawn meanwhile is not re-stated.
        """
        now = utc(now)
        proof_keys = _checked_tokens(tokens, key_epoch, proof_keys)
        si, rt = models.SignalIdentifier, models.RestatedToken
        with self._write(outbox=True) as conn:
            taken: list[Any] = []
            for chunk in chunks(sorted(tokens)):
                taken += conn.execute(
                    select(si.id, si.signal_id, si.signal_ref)
                    .where(
                        self._among(si.id, chunk),
                        si.state == IdentifierState.SUBMITTED.value,
                        ~select(rt.identifier_id).where(rt.identifier_id == si.id).exists(),
                    )
                    .order_by(si.id)
                    .with_for_update()
                ).all()
            rows = self._live(conn, taken, now)
            if not rows:
                return []
            conn.execute(
                insert(rt),
                [
                    {
                        "identifier_id": row.id,
                        "key_epoch": key_epoch,
                        "token": tokens[row.id],
                        "proof_key": proof_keys.get(row.id),
                    }
                    for row in rows
                ],
            )
            return self._submit_batches(conn, rows, tokens, key_epoch, now, seal_attributes)

    def rotation_progress(self, current: int, staged: int) -> tuple[int, int]:
        """(re-stated, live): this node's identifiers with a token under the ``current``
        epoch that the broker holds or is sent (not withdrawn), and how many of them
        have their ``staged``-epoch token."""
        si, rt = models.SignalIdentifier, models.RestatedToken
        live = (
            si.key_epoch == current,
            si.state.in_([IdentifierState.TOKENISED.value, IdentifierState.SUBMITTED.value]),
        )
        with self._read() as conn:
            total = conn.execute(select(func.count()).select_from(si).where(*live)).scalar_one()
            done = conn.execute(
                select(func.count())
                .select_from(si)
                .join(rt, rt.identifier_id == si.id)
                .where(*live, rt.key_epoch == staged)
            ).scalar_one()
        return int(done), int(total)

    def switch_key_epoch(self, current: int, staged: int | None = None) -> tuple[int, int]:
        """The covenant made key epoch ``current`` current: each identifier's staged token
        (and hit proof key) becomes its token, in one transaction; an identifier of an
        older epoch without one goes back to pending (to be tokenised under ``current``:
        the broker deleted the old epoch's entries). Staged tokens of any epoch but
        ``staged`` (the one the covenant stages now, if any) are dropped: a staging
        withdrawn. Returns (switched, back to pending); a second call changes nothing."""
        _check_epoch(current)
        si, rt, pk = models.SignalIdentifier, models.RestatedToken, models.HitProofKey
        with self._write(outbox=True) as conn:
            restated = conn.execute(
                select(rt.identifier_id, rt.token, rt.proof_key).where(rt.key_epoch == current)
            ).all()
            switched = [row.identifier_id for row in restated]
            if restated:
                conn.execute(
                    update(si)
                    .where(si.id == bindparam("b_id"), si.key_epoch < current)
                    .values(token=bindparam("b_token"), key_epoch=current),
                    [{"b_id": row.identifier_id, "b_token": row.token} for row in restated],
                )
                for chunk in chunks(switched):
                    conn.execute(delete(pk).where(self._among(pk.identifier_id, chunk)))
                keyed = [
                    {"identifier_id": row.identifier_id, "proof_key": row.proof_key}
                    for row in restated
                    if row.proof_key is not None
                ]
                if keyed:
                    conn.execute(insert(pk), keyed)
            conn.execute(delete(rt).where(rt.key_epoch != (0 if staged is None else staged)))
            stale = list(
                conn.execute(
                    select(si.id).where(
                        si.key_epoch < current,
                        si.state.in_(
                            [IdentifierState.TOKENISED.value, IdentifierState.SUBMITTED.value]
                        ),
                    )
                ).scalars()
            )
            self._set_state(conn, stale, IdentifierState.PENDING, token=None, key_epoch=None)
            for chunk in chunks(stale):
                conn.execute(delete(pk).where(self._among(pk.identifier_id, chunk)))
        return len(switched), len(stale)

    def _identifier_pages(
        self,
        page: Callable[[int], Any],
        limit: int,
        moment: datetime | None,
    ) -> list[PendingIdentifier]:
        """Up to ``limit`` identifiers that ``page(after)`` selects (id, signal id, type,
        canonical value; ordered by id, after the id given), of active signals not expired
        by ``moment``: page by page, by the identifiers' index and their signals by primary
        key (a join lets a planner without statistics loop over every active signal)."""
        found: list[PendingIdentifier] = []
        after = 0
        with self._read() as conn:
            while len(found) < limit:
                rows = conn.execute(page(after)).all()
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
                            identifier=_tokenisable(row.type, row.canonical),
                            category=signal.category,
                            expires_at=signal.expires_at,
                        )
                    )
                after = rows[-1].id
        return found[:limit]

    def _live(self, conn: Connection, taken: Sequence[Any], now: datetime) -> list[_Taken]:
        """The identifier rows taken whose signal is active and not expired by ``now``."""
        signals = self._signals_by_id(conn, {row.signal_id for row in taken})
        return [
            _Taken(row.id, row.signal_ref, signal.category, signal.expires_at)
            for row in taken
            if (signal := signals[row.signal_id]).state == SignalState.ACTIVE.value
            and signal.expires_at > now
        ]

    def _submit_batches(
        self,
        conn: Connection,
        rows: Sequence[_Taken],
        tokens: Mapping[int, bytes],
        key_epoch: int,
        now: datetime,
        seal_attributes: Callable[[str], bytes] | None,
    ) -> list[OutboxBatch]:
        """The submit batches of ``key_epoch`` for these rows' tokens, each entry under its
        identifier's own ref, its category sealed once per category."""
        sealed: dict[str, bytes] = {}
        if seal_attributes is not None:
            for category in sorted({row.category for row in rows}):
                sealed[category] = seal_attributes(category)
        return [
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
            for chunk in chunks(rows, MAX_TOKENS_PER_BATCH)
        ]

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
        for chunk in chunks(sorted(set(identifier_ids))):
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
        for chunk in chunks(sorted(set(signal_ids))):
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
            for chunk in chunks([b.id for b in batches]):
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
        now = utc(now)
        check_bytes(client_batch_id, ID_BYTES, "client_batch_id")
        ob, oe, si = models.OutboxBatch, models.OutboxEntry, models.SignalIdentifier
        with self._write(outbox=True) as conn:
            batch = conn.execute(
                select(ob.id, ob.kind, ob.key_epoch, ob.acked_at, ob.rejected_at)
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
            for chunk in chunks(members):
                moving += [
                    row.id
                    for row in conn.execute(
                        select(si.id, si.state).where(self._among(si.id, chunk)).with_for_update()
                    )
                    if row.state == before.value
                ]
            if submit and not acked:  # a staged epoch's batch refused: re-stated anew
                rt = models.RestatedToken
                for chunk in chunks(members):
                    conn.execute(
                        delete(rt).where(
                            self._among(rt.identifier_id, chunk), rt.key_epoch == batch.key_epoch
                        )
                    )
            if not submit:
                self._set_state(conn, moving, IdentifierState.WITHDRAWN)
            elif acked:
                self._set_state(conn, moving, IdentifierState.SUBMITTED)
            else:
                self._set_state(conn, moving, IdentifierState.PENDING, token=None, key_epoch=None)
                for chunk in chunks(moving):  # the proof keys go with their tokens
                    conn.execute(
                        delete(models.HitProofKey).where(
                            self._among(models.HitProofKey.identifier_id, chunk)
                        )
                    )
        return True

    # --- the hit inbox and feed -------------------------------------------------------

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
        other_parties: Iterable[str] = (),
    ) -> bool:
        """Keep a verified hit notice if it is newer than the group's; record ``cursor``.

        ``other_parties`` are the labels of the other members the notice shows (party id,
        else ``role:<role>``, else empty: hidden), kept with it for probable person hits.

        Returns True if the notice was accepted (it got the next ``feed_seq``),
        False if the node already had this revision or a newer one. Either way
        the mailbox cursor advances to ``cursor`` (never back) in the same
        transaction, so the item can be acknowledged to the broker afterwards.
        """
        now = utc(now)
        first_seen = utc(first_seen, "first_seen")
        last_seen = utc(last_seen, "last_seen")
        if cursor < 0:
            raise InvalidInput("a cursor is not negative", field="cursor")
        check_bytes(group_id, ID_BYTES, "hit_group_id")
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
            check_bytes(ref, ID_BYTES, f"own_signal_refs[{i}]")
        parties = sorted(set(other_parties))
        for i, label in enumerate(parties):
            if not isinstance(label, str) or len(label) > models.MAX_PARTY_LABEL_CHARS:
                raise InvalidInput("a party label has at most 80 characters", field=f"parties[{i}]")
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
                conn.execute(delete(models.HitParty).where(models.HitParty.group_id == group_id))
            if parties:
                conn.execute(
                    insert(models.HitParty),
                    [{"group_id": group_id, "party": label} for label in parties],
                )
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

    def last_feed_seq(self) -> int:
        """The ``feed_seq`` of the latest accepted notice (0: none yet)."""
        with self._read() as conn:
            found = conn.execute(
                select(daemon_models.Inbox.last_feed_seq).where(daemon_models.Inbox.id == INBOX_ROW)
            ).scalar_one_or_none()
        return found or 0

    def feed_state(self) -> FeedState:
        """The feed's epoch and, after a restore, how far the node has caught up."""
        fr = daemon_models.FeedRestore
        with self._read() as conn:
            row = conn.execute(select(fr.__table__).where(fr.id == INBOX_ROW)).first()
        if row is None:
            return FeedState(epoch=daemon_models.ORIGINAL_FEED_EPOCH)
        return FeedState(
            epoch=row.feed_epoch,
            previous_epoch=row.previous_epoch,
            base_seq=row.base_seq,
            resync_head=row.resync_head,
            restated_until=row.restated_until_seq,
        )

    def record_resync(self, head_cursor: int) -> FeedState:
        """The broker put the latest notices in the mailbox again, up to ``head_cursor``:
        record it (once), and end the catching up if the node is past it already."""
        if head_cursor < 0:
            raise InvalidInput("a cursor is not negative", field="head_cursor")
        fr = daemon_models.FeedRestore
        with self._write() as conn:
            conn.execute(
                update(fr)
                .where(fr.id == INBOX_ROW, fr.resync_head.is_(None))
                .values(resync_head=head_cursor)
            )
        self.finish_catch_up()
        return self.feed_state()

    def finish_catch_up(self) -> bool:
        """If the node has processed the mailbox up to the head the broker answered
        ``ResyncHits`` with, close the window of restated feed entries at the feed's last
        sequence. Returns True if it closed it now."""
        fr = daemon_models.FeedRestore
        with self._write() as conn:
            cursor, last_feed_seq = self._lock_inbox(conn)
            row = conn.execute(
                select(fr.resync_head, fr.restated_until_seq, fr.base_seq)
                .where(fr.id == INBOX_ROW)
                .with_for_update()
            ).first()
            if row is None or row.resync_head is None or row.restated_until_seq is not None:
                return False
            if cursor < row.resync_head:
                return False
            conn.execute(
                update(fr)
                .where(fr.id == INBOX_ROW)
                .values(restated_until_seq=max(last_feed_seq, row.base_seq))
            )
        return True

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
        for chunk in chunks([row.group_id for row in rows]):
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
        # (group, own signal) of the refs of person keys: their probable hits.
        person_signals: dict[bytes, set[int]] = {}
        for ref in refs:
            identifier = identifiers.get(ref.identifier_id)
            signal = None if identifier is None else signals[identifier.signal_id]
            kind = (
                person_kind(identifier.type)
                if identifier is not None and is_person_kind(identifier.type)
                else None
            )
            if kind is not None and signal is not None:
                person_signals.setdefault(ref.group_id, set()).add(signal.id)
            own[ref.group_id].append(
                OwnSignal(
                    signal_ref=ref.signal_ref,
                    signal_id=None if signal is None else signal.id,
                    reference=None if signal is None else signal.reference,
                    category=None if signal is None else signal.category,
                    identifier_type=None
                    if identifier is None
                    else IdentifierType.PERSON
                    if kind is not None
                    else IdentifierType(identifier.type),
                    person_kind=kind,
                )
            )
        agreements = self._person_agreements(conn, person_signals)
        own_kinds = self._own_person_kinds(
            conn, {s for ids in person_signals.values() for s in ids}
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
                person_agreements=agreements.get(row.group_id, ()),
                person_own_kinds=MappingProxyType(
                    {
                        s: own_kinds.get(s, frozenset())
                        for s in sorted(person_signals.get(row.group_id, ()))
                    }
                ),
            )
            for row in rows
        ]

    def _own_person_kinds(
        self, conn: Connection, signal_ids: set[int]
    ) -> dict[int, frozenset[PersonKeyKind]]:
        """The person key kinds each of ``signal_ids`` has, withdrawn keys left out."""
        si = models.SignalIdentifier
        found: dict[int, set[PersonKeyKind]] = {}
        for chunk in chunks(sorted(signal_ids)):
            query = select(si.signal_id, si.type).where(
                self._among(si.signal_id, chunk),
                si.type.like("person.%"),
                si.state != IdentifierState.WITHDRAWN.value,
            )
            for signal_id, type_name in conn.execute(query):
                if is_person_kind(type_name):
                    found.setdefault(signal_id, set()).add(person_kind(type_name))
        return {s: frozenset(k) for s, k in found.items()}

    def _person_agreements(
        self, conn: Connection, person_signals: Mapping[bytes, set[int]]
    ) -> dict[bytes, tuple[Agreement, ...]]:
        """Per group: the agreements of the (own signal, party) pairs it is part of, over
        every open hit on the person keys of those signals."""
        if not person_signals:
            return {}
        hp, hr, si, hit = models.HitParty, models.HitRef, models.SignalIdentifier, models.Hit
        group_parties: dict[bytes, set[str]] = {}
        for chunk in chunks(sorted(person_signals)):
            for group_id, party in conn.execute(
                select(hp.group_id, hp.party).where(self._among(hp.group_id, chunk))
            ):
                group_parties.setdefault(group_id, set()).add(party)
        found: dict[tuple[int, str], set[Agreement]] = {}
        for signal_chunk in chunks(sorted({s for ids in person_signals.values() for s in ids})):
            query = (
                select(si.signal_id, si.type, hp.party)
                .join(hr, hr.identifier_id == si.id)
                .join(hit, hit.group_id == hr.group_id)
                .join(hp, hp.group_id == hr.group_id)
                .where(
                    self._among(si.signal_id, signal_chunk),
                    si.type.like("person.%"),
                    hit.state == HitState.OPEN.value,
                )
            )
            for signal_id, type_name, party in conn.execute(query):
                if is_person_kind(type_name):
                    found.setdefault((signal_id, party), set()).add(
                        Agreement(signal_id, party, person_kind(type_name))
                    )
        out: dict[bytes, tuple[Agreement, ...]] = {}
        for group_id, signal_ids in person_signals.items():
            pairs = sorted(
                (signal_id, party)
                for signal_id in signal_ids
                for party in group_parties.get(group_id, ())
            )
            out[group_id] = tuple(
                agreement
                for pair in pairs
                for agreement in sorted(found.get(pair, ()), key=lambda a: a.kind.value)
            )
        return out

    def _identifiers_by_ref(self, conn: Connection, refs: Sequence[bytes]) -> dict[bytes, int]:
        si = models.SignalIdentifier
        found: dict[bytes, int] = {}
        for chunk in chunks(refs):
            found.update(
                (ref, identifier_id)
                for ref, identifier_id in conn.execute(
                    select(si.signal_ref, si.id).where(self._among(si.signal_ref, chunk))
                )
            )
        return found

    # --- status -----------------------------------------------------------------------

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
                select(daemon_models.Inbox.mailbox_cursor).where(
                    daemon_models.Inbox.id == INBOX_ROW
                )
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


def _checked_tokens(
    tokens: Mapping[int, bytes], key_epoch: int, proof_keys: Mapping[int, bytes] | None
) -> Mapping[int, bytes]:
    """Check tokens to record (by identifier id), their epoch and hit proof keys (each for
    a token given); answers the proof keys (none: empty)."""
    _check_epoch(key_epoch)
    for identifier_id, token in tokens.items():
        check_bytes(token, TOKEN_BYTES, f"tokens[{identifier_id}]")
    proof_keys = proof_keys or {}
    for identifier_id, key in proof_keys.items():
        if identifier_id not in tokens:
            raise InvalidInput("a proof key without a token", field=f"proof_keys[{identifier_id}]")
        check_bytes(key, HIT_PROOF_KEY_BYTES, f"proof_keys[{identifier_id}]")
    return proof_keys
