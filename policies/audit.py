"""The audit log: an append-only hash chain of what a node or the broker did, with signed heads.

Every entry commits to the one before it: ``hash = SHA-256(domain || canonical
bytes)``, where the canonical bytes include the entry's ``seq`` and the previous
entry's hash (32 zero bytes before the first entry). Changing, dropping or
reordering an entry breaks the chain from that entry on. What the chain alone
cannot show — that the newest entries were cut off, or the whole log rewritten
with fresh hashes — a *checkpoint* shows: the owner's Ed25519 signature over the
log's size and head hash (``AuditCheckpoint`` in ``Signed``, context
``audit-checkpoint``), as Certificate Transparency signs its tree heads.

No raw identifier or signal detail belongs in an entry. Entries name their
subject by opaque ids only (hit group ids, request ids, signal refs, batch ids,
as lower-case hex) and carry a few non-identifying facts (counts, kinds, flags,
purpose codes). :func:`check_details` refuses long values and odd keys: a guard
against accidents, not a guarantee — callers must only ever pass opaque ids and
coarse facts. The actor is who is accountable: a party id, or the identity of
the officer who decided, as the officer gave it (``Jürgen de Vries``), so that
the entry names the officer the node's own records show (:func:`check_actor`).

Sans-IO: :mod:`samenloop.policies.audit_store` keeps the log in a database; this
module builds, encodes, exports, parses and verifies it. :func:`verify_log`
raises :class:`AuditMismatch` naming the first entry that is altered or missing
(its ``seq``), never returns False.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Protocol

from google.protobuf.message import DecodeError

from samenloop.policies import crypto, terminal
from samenloop.policies.crypto import SignatureContext
from samenloop.policies.errors import AuditMismatch, InvalidInput, InvalidSignature
from samenloop.v1 import common_pb2

__all__ = [
    "EXPORT_KIND",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditEvent",
    "AuditExport",
    "AuditKind",
    "AuditSummary",
    "ChainHead",
    "Checkpoint",
    "CheckpointSigner",
    "DetailValue",
    "check_details",
    "encode_export",
    "entry_hash",
    "filter_entries",
    "next_entry",
    "open_checkpoint",
    "parse_checkpoint",
    "parse_export",
    "sign_checkpoint",
    "verify_log",
]

#: What every entry hash starts with; versioned with the protocol.
HASH_DOMAIN: Final = b"samenloop/v1 audit entry\x00"
HASH_BYTES: Final = 32
#: ``prev_hash`` of the first entry.
GENESIS_HASH: Final = bytes(HASH_BYTES)
#: The ``kind`` of an export's header line.
EXPORT_KIND: Final = "samenloop.audit-export.v1"

MAX_ACTOR_CHARS: Final = 128
MAX_SUBJECT_IDS: Final = 64
MAX_SUBJECT_ID_CHARS: Final = 64  # 32 bytes as hex
MAX_DETAILS: Final = 16
MAX_DETAIL_CHARS: Final = 64
_INT64: Final = 2**63

_HEX_ID = re.compile(r"(?:[0-9a-f]{2})+\Z")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")

DetailValue = str | int | bool


class AuditKind(enum.StrEnum):
    """What an entry records. Node and broker share one list; each uses its part."""

    # Tokens at the broker, and their submission from a node (names, not secrets).
    TOKEN_SUBMISSION = "token_submission"  # noqa: S105
    TOKEN_WITHDRAWAL = "token_withdrawal"  # noqa: S105
    TOKEN_EXPIRY = "token_expiry"  # noqa: S105
    # Hits: a notice issued (broker) or stored (node).
    HIT_NOTICE = "hit_notice"
    # The covenant: versions taken or refused, published, parties cut off.
    COVENANT_ACCEPTED = "covenant_accepted"
    COVENANT_REJECTED = "covenant_rejected"
    COVENANT_PUBLISHED = "covenant_published"
    PARTY_REMOVED = "party_removed"
    # Covenant timestamps: one taken (broker); a node going stale or fresh again.
    COVENANT_TIMESTAMP = "covenant_timestamp"
    COVENANT_FRESHNESS = "covenant_freshness"
    # Disclosure, from request to release or refusal.
    DISCLOSURE_REQUESTED = "disclosure_requested"
    DISCLOSURE_RECEIVED = "disclosure_received"
    DISCLOSURE_DECISION = "disclosure_decision"
    DISCLOSURE_APPROVED = "disclosure_approved"
    DISCLOSURE_DENIED = "disclosure_denied"
    DISCLOSURE_RELEASED = "disclosure_released"
    DISCLOSURE_REFUSED = "disclosure_refused"
    # Key holders: every OPRF request served or refused (online guesses are counted).
    OPRF_EVALUATION = "oprf_evaluation"
    # A node's own signals.
    SIGNAL_ADDED = "signal_added"
    SIGNAL_WITHDRAWN = "signal_withdrawn"
    SIGNAL_EXPIRED = "signal_expired"
    # Case coordination and the regional picture.
    CASE_EVENT = "case_event"
    PICTURE_EVENT = "picture_event"
    NETWORK_EVENT = "network_event"
    # Messages relayed between nodes (broker), by id only.
    ENVELOPE_RELAYED = "envelope_relayed"
    # Calls to a node's local API refused for a missing or wrong API token, counted.
    LOCAL_API_REFUSED = "local_api_refused"
    # A mailbox item too large to deliver, moved out of the mailbox (broker) and the marker
    # that took its place, received (node).
    MAILBOX_ITEM_SET_ASIDE = "mailbox_item_set_aside"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the chain. ``details`` is read-only; ``subject`` holds hex ids only."""

    seq: int
    at: datetime
    kind: AuditKind
    actor: str
    subject: tuple[str, ...]
    details: Mapping[str, DetailValue]
    prev_hash: bytes
    hash: bytes

    def canonical(self) -> bytes:
        """The bytes the entry's hash covers (everything but the hash itself)."""
        return canonical_bytes(
            seq=self.seq,
            at=self.at,
            kind=self.kind,
            actor=self.actor,
            subject=self.subject,
            details=self.details,
            prev_hash=self.prev_hash,
        )


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a chain ends: its last entry's ``seq`` and hash, all that appending needs."""

    seq: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What to record, before it gets its place in the chain (``seq``, time and hashes)."""

    kind: AuditKind
    actor: str
    subject: tuple[str, ...] = ()
    details: Mapping[str, DetailValue] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True, slots=True)
class AuditSummary:
    """What a verified log amounts to. ``checkpointed`` entries are covered by a signature;
    later ones only by the chain."""

    entries: int
    checkpoints: int
    checkpointed: int
    head_hash: bytes

    def describe(self) -> str:
        signed = (
            f"signed up to entry {self.checkpointed}" if self.checkpoints else "none signed yet"
        )
        return (
            f"{self.entries} entries, {self.checkpoints} checkpoints verified ({signed}), "
            f"head {self.head_hash.hex()}"
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint as parsed from its ``Signed`` bytes (trusted only after :func:`verify_log`
    or :func:`open_checkpoint`)."""

    log_owner: str
    size: int
    head_hash: bytes
    issued_at: datetime
    signed: bytes


class CheckpointSigner(Protocol):
    """Who signs checkpoints: a log owner's ``PartyKeys`` (or anything that signs like it)."""

    @property
    def party(self) -> str: ...

    def sign(self, context: SignatureContext, message: bytes, *, audience: str = "") -> bytes: ...


# --- building entries -----------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: object, *, field: str) -> datetime:
    if not isinstance(text, str) or len(text) != 27 or not text.endswith("Z"):
        raise InvalidInput("must be an RFC 3339 UTC time with microseconds", field=field)
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput("must be an RFC 3339 UTC time with microseconds", field=field) from None
    return moment


def _utc(moment: datetime, field: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput("must be an aware datetime", field=field)
    return moment.astimezone(UTC)


def check_actor(actor: object, *, field: str = "actor") -> str:
    """A party id or an officer's identity, as given: 1..128 characters, not only spaces,
    none of which a terminal would act on or hide (:func:`~samenloop.policies.terminal.is_safe`:
    no control, format — bidi overrides, zero-width —, surrogate, line or paragraph
    separator or unassigned character). Letters of any script and spaces are fine: an
    officer is ``Jürgen de Vries``; an actor shows exactly as it is stored. ``field``
    names the input it came from (``officer`` for an officer)."""
    if (
        not isinstance(actor, str)
        or not 0 < len(actor) <= MAX_ACTOR_CHARS
        or not all(map(terminal.is_safe, actor))
        or not actor.strip()
    ):
        raise InvalidInput(
            "must be printable text, not only spaces: letters, digits, punctuation and "
            f"spaces, no control or format characters, at most {MAX_ACTOR_CHARS}",
            field=field,
        )
    return actor


def check_subject(subject: Iterable[str]) -> tuple[str, ...]:
    """Opaque ids as lower-case hex (1..32 bytes each), at most ``MAX_SUBJECT_IDS``."""
    if isinstance(subject, str | bytes):
        raise InvalidInput("a subject is a list of hex ids", field="subject")
    ids = tuple(subject)
    if len(ids) > MAX_SUBJECT_IDS:
        raise InvalidInput(f"at most {MAX_SUBJECT_IDS} subject ids", field="subject")
    for i, value in enumerate(ids):
        if (
            not isinstance(value, str)
            or len(value) > MAX_SUBJECT_ID_CHARS
            or not _HEX_ID.match(value)
        ):
            raise InvalidInput(
                "a subject id is an opaque id in lower-case hex, at most 32 bytes",
                field=f"subject[{i}]",
            )
    return ids


def check_details(details: Mapping[str, object] | None) -> Mapping[str, DetailValue]:
    """Refuse details that could carry raw data: odd keys, long strings, other types.

    Keys are short snake_case names; values are booleans, 64-bit integers or
    strings of at most ``MAX_DETAIL_CHARS`` printable ASCII characters. This
    keeps addresses, free text and documents out by shape; it cannot tell a
    nine-digit count from a BSN, so callers pass only opaque ids and coarse facts.
    Returns a read-only copy with sorted keys.
    """
    if details is None:
        return MappingProxyType({})
    if not isinstance(details, Mapping):
        raise InvalidInput("details are a mapping", field="details")
    if len(details) > MAX_DETAILS:
        raise InvalidInput(f"at most {MAX_DETAILS} details", field="details")
    checked: dict[str, DetailValue] = {}
    for key in sorted(details, key=str):
        value = details[key]
        if not isinstance(key, str) or not _DETAIL_KEY.match(key):
            raise InvalidInput(
                "a detail key is 1..32 lower-case letters, digits and underscores",
                field=f"details.{key}",
            )
        if isinstance(value, bool):
            checked[key] = value
        elif isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                raise InvalidInput("a detail number is a 64-bit integer", field=f"details.{key}")
            checked[key] = value
        elif isinstance(value, str):
            if len(value) > MAX_DETAIL_CHARS or not _PRINTABLE.match(value):
                raise InvalidInput(
                    f"a detail text is at most {MAX_DETAIL_CHARS} printable ASCII characters",
                    field=f"details.{key}",
                )
            checked[key] = value
        else:
            raise InvalidInput(
                "a detail is a string, an integer or a boolean", field=f"details.{key}"
            )
    return MappingProxyType(checked)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _fields(
    *,
    seq: int,
    at: datetime,
    kind: AuditKind,
    actor: str,
    subject: Sequence[str],
    details: Mapping[str, DetailValue],
    prev_hash: bytes,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": _rfc3339(at),
        "kind": str(kind),
        "actor": actor,
        "subject": list(subject),
        "details": dict(details),
        "prev_hash": prev_hash.hex(),
    }


def canonical_bytes(
    *,
    seq: int,
    at: datetime,
    kind: AuditKind,
    actor: str,
    subject: Sequence[str],
    details: Mapping[str, DetailValue],
    prev_hash: bytes,
) -> bytes:
    """Canonical JSON (sorted keys, no whitespace, ASCII) of an entry without its hash.

    Times are RFC 3339 in UTC with microseconds and ``Z``; hashes lower-case hex.
    """
    fields = _fields(
        seq=seq,
        at=at,
        kind=kind,
        actor=actor,
        subject=subject,
        details=details,
        prev_hash=prev_hash,
    )
    return _json(fields).encode("ascii")


def entry_hash(canonical: bytes) -> bytes:
    """SHA-256 over the audit domain and an entry's canonical bytes."""
    return crypto.digest(HASH_DOMAIN + canonical)


def details_json(details: Mapping[str, DetailValue]) -> str:
    """Details as stored: canonical JSON of the checked mapping."""
    return _json(dict(details))


def next_entry(
    head: AuditEntry | ChainHead | None,
    *,
    kind: AuditKind,
    actor: str,
    subject: Iterable[str] = (),
    details: Mapping[str, object] | None = None,
    now: datetime,
) -> AuditEntry:
    """The entry that follows ``head`` (``None``: the log is empty), checked and hashed.

    Raises ``InvalidInput`` naming the field for a bad kind, actor, subject or detail.
    """
    try:
        kind = AuditKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown audit kind {kind!r}", field="kind") from None
    at = _utc(now, "now")
    checked_actor = check_actor(actor)
    checked_subject = check_subject(subject)
    checked_details = check_details(details)
    seq = 1 if head is None else head.seq + 1
    prev_hash = GENESIS_HASH if head is None else head.hash
    canonical = canonical_bytes(
        seq=seq,
        at=at,
        kind=kind,
        actor=checked_actor,
        subject=checked_subject,
        details=checked_details,
        prev_hash=prev_hash,
    )
    return AuditEntry(
        seq=seq,
        at=at,
        kind=kind,
        actor=checked_actor,
        subject=checked_subject,
        details=checked_details,
        prev_hash=prev_hash,
        hash=entry_hash(canonical),
    )


def filter_entries(
    entries: Iterable[AuditEntry],
    *,
    kind: AuditKind | None = None,
    actor: str | None = None,
    subject: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Entries matching every filter given, in order; ``since`` inclusive, ``until``
    exclusive, ``subject`` one of the entry's ids."""
    found: list[AuditEntry] = []
    for entry in entries:
        if limit is not None and len(found) >= limit:
            break
        if kind is not None and entry.kind is not kind:
            continue
        if actor is not None and entry.actor != actor:
            continue
        if subject is not None and subject not in entry.subject:
            continue
        if since is not None and entry.at < since:
            continue
        if until is not None and entry.at >= until:
            continue
        found.append(entry)
    return found


# --- checkpoints -----------------------------------------------------------------------------


def sign_checkpoint(
    signer: CheckpointSigner, *, size: int, head_hash: bytes, now: datetime
) -> bytes:
    """A serialized ``Signed`` ``AuditCheckpoint`` over the first ``size`` entries."""
    if size < 1 or len(head_hash) != HASH_BYTES:
        raise InvalidInput("a checkpoint covers at least one entry", field="size")
    body = common_pb2.AuditCheckpoint(log_owner=signer.party, size=size, head_hash=head_hash)
    body.issued_at.FromDatetime(_utc(now, "now"))
    serialized = body.SerializeToString(deterministic=True)
    signed = common_pb2.Signed(
        body=serialized,
        signer=signer.party,
        context=SignatureContext.AUDIT_CHECKPOINT.value,
        signature=signer.sign(SignatureContext.AUDIT_CHECKPOINT, serialized),
    )
    return signed.SerializeToString(deterministic=True)


def _unwrap(signed_bytes: bytes, *, field: str) -> tuple[common_pb2.Signed, Checkpoint]:
    signed = common_pb2.Signed()
    body = common_pb2.AuditCheckpoint()
    try:
        signed.ParseFromString(signed_bytes)
        body.ParseFromString(signed.body)
    except DecodeError:
        raise InvalidInput("not a signed audit checkpoint", field=field) from None
    if (
        signed.context != SignatureContext.AUDIT_CHECKPOINT.value
        or signed.signer != body.log_owner
        or body.size < 1
        or len(body.head_hash) != HASH_BYTES
    ):
        raise InvalidInput("not a signed audit checkpoint", field=field)
    try:
        issued_at = body.issued_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("not a signed audit checkpoint", field=field) from None
    checkpoint = Checkpoint(
        log_owner=body.log_owner,
        size=body.size,
        head_hash=bytes(body.head_hash),
        issued_at=issued_at,
        signed=bytes(signed_bytes),
    )
    return signed, checkpoint


def parse_checkpoint(signed_bytes: bytes, *, field: str = "checkpoint") -> Checkpoint:
    """A checkpoint's fields, not yet verified (to list or order checkpoints)."""
    return _unwrap(signed_bytes, field=field)[1]


def open_checkpoint(
    signed_bytes: bytes, owner_public_key: bytes, *, field: str = "checkpoint"
) -> Checkpoint:
    """A checkpoint whose signature by the log owner's key verifies; else ``InvalidSignature``."""
    signed, checkpoint = _unwrap(signed_bytes, field=field)
    crypto.verify(
        owner_public_key,
        SignatureContext.AUDIT_CHECKPOINT,
        signed.body,
        signed.signature,
        field=field,
    )
    return checkpoint


# --- verifying ------------------------------------------------------------------------------


def verify_log(
    entries: Sequence[AuditEntry],
    checkpoints: Sequence[bytes],
    owner_public_key: bytes,
    *,
    owner: str | None = None,
) -> AuditSummary:
    """Check a whole log and its checkpoints; raise :class:`AuditMismatch` at the first fault.

    Entries must run 1, 2, 3, ... each naming its predecessor's hash and hashing
    to its own; the error names the first ``seq`` that is missing (a gap, a
    reordering) or altered. Then every checkpoint must be signed by the owner's
    key (and name ``owner``, if given), cover no more entries than are present
    (else the log was truncated) and name the hash of its last entry (else the
    log was rewritten up to there).
    """
    prev = GENESIS_HASH
    for position, entry in enumerate(entries):
        expected = position + 1
        if entry.seq != expected:
            raise AuditMismatch(
                f"entry {expected} is missing (found entry {entry.seq} in its place)",
                seq=expected,
                reason="audit.missing",
            )
        if entry.prev_hash != prev:
            raise AuditMismatch(
                f"entry {expected} was altered: it does not chain to entry {expected - 1}",
                seq=expected,
                reason="audit.chain_broken",
            )
        if entry_hash(entry.canonical()) != entry.hash:
            raise AuditMismatch(
                f"entry {expected} was altered: its hash does not match its content",
                seq=expected,
                reason="audit.altered",
            )
        prev = entry.hash
    verified: list[Checkpoint] = []
    for i, signed_bytes in enumerate(checkpoints):
        try:
            checkpoint = open_checkpoint(signed_bytes, owner_public_key, field=f"checkpoints[{i}]")
        except (InvalidSignature, InvalidInput):
            size = _claimed_size(signed_bytes)
            raise AuditMismatch(
                f"checkpoint {i + 1}"
                + (f" (of entry {size})" if size is not None else "")
                + " is not signed by the log owner's key",
                seq=size,
                reason="audit.checkpoint_signature",
            ) from None
        if owner is not None and checkpoint.log_owner != owner:
            raise AuditMismatch(
                f"checkpoint {i + 1} is of {checkpoint.log_owner!r}'s log, not {owner!r}'s",
                seq=checkpoint.size,
                reason="audit.checkpoint_owner",
            )
        verified.append(checkpoint)
    for checkpoint in sorted(verified, key=lambda c: c.size):
        if checkpoint.size > len(entries):
            raise AuditMismatch(
                f"entry {len(entries) + 1} is missing: the log was truncated "
                f"(a checkpoint of {_rfc3339(checkpoint.issued_at)} covers "
                f"{checkpoint.size} entries, {len(entries)} are present)",
                seq=len(entries) + 1,
                reason="audit.truncated",
            )
        if entries[checkpoint.size - 1].hash != checkpoint.head_hash:
            raise AuditMismatch(
                f"entry {checkpoint.size} does not match its signed checkpoint: "
                f"the log was rewritten up to entry {checkpoint.size}",
                seq=checkpoint.size,
                reason="audit.checkpoint_mismatch",
            )
    return AuditSummary(
        entries=len(entries),
        checkpoints=len(verified),
        checkpointed=max((c.size for c in verified), default=0),
        head_hash=prev,
    )


def _claimed_size(signed_bytes: bytes) -> int | None:
    try:
        return parse_checkpoint(signed_bytes).size
    except InvalidInput:
        return None


# --- export ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditExport:
    """A parsed export file: the owner it names, when it was made, entries and checkpoints."""

    log_owner: str
    exported_at: datetime
    entries: tuple[AuditEntry, ...]
    checkpoints: tuple[bytes, ...]


def header_line(log_owner: str, exported_at: datetime) -> str:
    """The export's first line."""
    return _json(
        {"kind": EXPORT_KIND, "log_owner": log_owner, "exported_at": _rfc3339(exported_at)}
    )


def entry_line(entry: AuditEntry) -> str:
    """An entry as an export line: its canonical fields, its hash and ``"type":"entry"``."""
    fields = _fields(
        seq=entry.seq,
        at=entry.at,
        kind=entry.kind,
        actor=entry.actor,
        subject=entry.subject,
        details=entry.details,
        prev_hash=entry.prev_hash,
    )
    return _json({**fields, "hash": entry.hash.hex(), "type": "entry"})


def checkpoint_line(signed_bytes: bytes) -> str:
    """A checkpoint as an export line: its size (for reading) and its ``Signed`` bytes."""
    size = parse_checkpoint(signed_bytes).size
    signed = base64.b64encode(signed_bytes).decode("ascii")
    return _json({"signed": signed, "size": size, "type": "checkpoint"})


def encode_export(
    log_owner: str,
    exported_at: datetime,
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[bytes],
) -> bytes:
    """The JSON Lines export: a header, the entries in order, then the checkpoints."""
    lines = [header_line(log_owner, exported_at)]
    lines += [entry_line(e) for e in entries]
    lines += [checkpoint_line(c) for c in checkpoints]
    return ("\n".join(lines) + "\n").encode("ascii")


def _hash_field(value: object, field: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * HASH_BYTES or not _HEX_ID.match(value):
        raise InvalidInput("must be 32 bytes in lower-case hex", field=field)
    return bytes.fromhex(value)


def _entry_from(doc: dict[str, Any]) -> AuditEntry:
    if set(doc) != {
        "type",
        "seq",
        "at",
        "kind",
        "actor",
        "subject",
        "details",
        "prev_hash",
        "hash",
    }:
        raise InvalidInput("not an audit entry", field="entry")
    seq = doc["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidInput("must be a positive integer", field="seq")
    try:
        kind = AuditKind(doc["kind"])
    except ValueError:
        raise InvalidInput("unknown audit kind", field="kind") from None
    if not isinstance(doc["subject"], list):
        raise InvalidInput("must be a list of hex ids", field="subject")
    return AuditEntry(
        seq=seq,
        at=_parse_time(doc["at"], field="at"),
        kind=kind,
        actor=check_actor(doc["actor"]),
        subject=check_subject(doc["subject"]),
        details=check_details(doc["details"]),
        prev_hash=_hash_field(doc["prev_hash"], "prev_hash"),
        hash=_hash_field(doc["hash"], "hash"),
    )


def parse_export(data: bytes) -> AuditExport:
    """Parse an export, refusing anything but its exact canonical form.

    Every line must be the canonical encoding of what it holds, byte for byte
    (so any change to an entry line is either refused here or changes the entry,
    which :func:`verify_log` then finds). Errors are ``InvalidInput`` naming the
    line (``line 7``) and, for entry lines, the entry expected there.
    """
    if not data.endswith(b"\n"):
        raise InvalidInput("an audit export ends with a newline", field="line 1")
    raw_lines = data[:-1].split(b"\n")
    entries: list[AuditEntry] = []
    checkpoints: list[bytes] = []
    log_owner = ""
    exported_at = datetime.min.replace(tzinfo=UTC)
    for number, raw in enumerate(raw_lines, start=1):
        where = f"line {number}"
        if number > 1 and not checkpoints:
            where += f" (entry {len(entries) + 1})"
        try:
            text = raw.decode("ascii")
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("not a line of JSON", field=where) from None
        if not isinstance(doc, dict):
            raise InvalidInput("not a JSON object", field=where)
        try:
            if number == 1:
                if set(doc) != {"kind", "log_owner", "exported_at"} or (doc["kind"] != EXPORT_KIND):
                    raise InvalidInput(f"not a {EXPORT_KIND} header", field="kind")
                log_owner = check_actor(doc["log_owner"])
                exported_at = _parse_time(doc["exported_at"], field="exported_at")
                canonical = header_line(log_owner, exported_at)
            elif doc.get("type") == "entry" and not checkpoints:
                entry = _entry_from(doc)
                entries.append(entry)
                canonical = entry_line(entry)
            elif doc.get("type") == "checkpoint":
                if set(doc) != {"type", "size", "signed"}:
                    raise InvalidInput("not an audit checkpoint", field="checkpoint")
                try:
                    signed = base64.b64decode(str(doc["signed"]), validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidInput("not base64", field="signed") from None
                checkpoint = parse_checkpoint(signed, field="signed")
                if doc["size"] != checkpoint.size:
                    raise InvalidInput("does not match the signed checkpoint", field="size")
                checkpoints.append(signed)
                canonical = checkpoint_line(signed)
            else:
                raise InvalidInput(
                    "expected an entry or a checkpoint (entries come first)", field="type"
                )
        except InvalidInput as error:
            raise InvalidInput(
                error.message, field=f"{where}: {error.field}", reason=error.reason
            ) from None
        if canonical != text:
            raise InvalidInput("not in canonical form: altered", field=where)
    return AuditExport(log_owner, exported_at, tuple(entries), tuple(checkpoints))
