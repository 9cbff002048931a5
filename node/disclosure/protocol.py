"""Disclosure, the second step of a hit, as plain functions: ask, decide, approve, answer.

A party that received a hit notice asks the owner of a signal in it for
details (DESIGN flow 5, ``proto/samenloop/v1/disclosure.proto``):

* **Asking** (requester's node). :func:`check_request` refuses bad input
  locally, naming the field (unknown purpose, an owner the hit does not show,
  no fields, too many or too long ones, a hit the requester holds no signal of
  its own in) and returns the hit proof key of one of the requester's own refs
  in the hit; :func:`build_request` signs the ``DisclosureRequest`` (context
  ``disclosure-request``, the owner as audience) around the broker-signed
  notice exactly as stored, with its ``hit_proof`` (:func:`hit_proof`), and
  seals it to the owner: :class:`Envelope`, ready for the durable outbox.
* **Proving the hit.** The broker signs every notice, and it holds every
  party's refs: a notice alone proves nothing against its operator. So the
  requester also MACs the request (:func:`hit_proof`) with the hit proof key
  of its own signal in the hit (:mod:`samenloop.node.tokens.derive`: a second key
  from the identifier's OPRF output, which only holders of the identifier can
  compute and which never reaches the broker). The owner recomputes the MAC
  with its own key of the signal asked about: the two keys are equal exactly
  when both hold the same identifier, as the members of one hit group do. A
  party with no signal of its own in the hit (a coordinator that only
  observes it) cannot ask.
* **Opening** (either node). :func:`open_envelope` opens what the broker
  relayed: the box must open with the sender's key, the inner ``Signed`` must
  be the sender's and for this node. Anything else is *forged*: it raises, and
  the caller drops it without an answer (there is nobody to answer safely).
* **Deciding** (owner's node). :func:`decide` applies the rules below to a
  request whose seal and signature verified; the facts it needs (seen request
  ids, the owner's signals, their hit proof keys, its hits, how many requests
  and grants a requester had) come from an :class:`OwnerFacts`, which the
  node's store provides and tests fake. The first failing rule decides:

  =====================================================  ====================
  rule                                                   else
  =====================================================  ====================
  request id not seen before                              REPLAY (recorded, not
                                                          answered)
  the owner fresh: an unexpired covenant timestamp
  vouches for its covenant version (``stale`` is None)    COVENANT_STALE
  request for this covenant, version not newer than ours  COVENANT_MISMATCH
  issued_at at most LIMITS_MAX_CLOCK_SKEW_SECONDS ahead   NOT_ALLOWED
  notice signed by the broker, for this covenant, to the
  requester, naming the request's hit group               INVALID_NOTICE
  *the hit proof* (one message for all five, so that a
  refusal tells nothing of which failed):                 NOT_IN_HIT
  (1) the notice lists the owner with this signal ref
  (2) the owner holds a signal with this ref
  (3) the owner's own latest notice of the group lists
  this ref among the owner's own refs
  (4) the owner holds the ref's hit proof key (tokenised
  since hit proofs exist)
  (5) ``hit_proof`` verifies under that key
  notice not CLOSED, hit not closed at the owner, the
  signal active                                           HIT_CLOSED
  under the covenant of now the requester's role may see
  the owner's (:func:`~samenloop.policies.rules.hides`)   NOT_IN_HIT
  the owner's own latest notice of the group, if it shows
  members by party and the requester's role is not hidden
  from the owner, still lists the requester               NOT_IN_HIT
  on a ref of one of the owner's person keys: the owner's
  own score of its probable person hit with the requester
  at least the covenant's disclosure_score and node.toml's
  min_disclosure_score (the request's person_score, the
  requester's own, is shown in the message, never used)   SCORE_TOO_LOW
  requester's requests today < disclosure_requests_per_day QUOTA_EXCEEDED
  :func:`samenloop.policies.rules.release`                its reason
  =====================================================  ====================

  The hit proof comes before HIT_CLOSED so that only a party that holds the
  subject learns whether the owner's signal is still active. Rules (3) and (5)
  rest on the owner's own records and keys, not on the broker: a notice the
  broker forged for a signal in no hit fails (3), unless the broker forged
  the owner's notice too, and (5), unless the requester really holds the
  subject's identifier. The later NOT_IN_HIT rules keep a stale
  notice from being proof: a requester that withdrew its signal, whose signal
  expired or that the broker removed from the group keeps its old notice (and
  its proof key), but the owner's own latest notice no longer shows it; and a
  covenant version that now hides the owner from the requester's role ends
  its right to ask, whatever notice it kept.

  Requests travel through mailboxes and may wait days for an offline owner,
  so, as ``common.proto`` says of LIMITS_MAX_REQUEST_AGE_SECONDS, their age is
  not limited: the request id, remembered for good, stops replays.
* **Four eyes.** A rule with ``four_eyes`` leaves the request pending until a
  second officer of the owner decides (:func:`approve`, :func:`deny`); it is
  stored with the hit group its verified notice names. The officer who asked
  can never decide, and neither can an officer who already decided (so one
  person can never both deny and later approve); officers are compared as
  :func:`officer_key` normalises them, so that case, width and spacing do not
  make a second person. Approval decides again under the covenant and the
  facts of that moment: the covenant may have changed, the hit closed, the
  owner's notice stopped listing the signal, the rule's period quota filled,
  the requester left the hit or the covenant (then refused, ``NOT_ALLOWED``,
  and not answered: there is no key to seal to). A pending request without a
  hit group cannot be checked and is refused (``NOT_IN_HIT``): approval fails
  closed.
* **Answering.** :func:`respond` seals the signed ``DisclosureResponse``
  (context ``disclosure-response``) to the requester: exactly the allowed
  detail fields that the signal has, a pending notice, or a refusal with its
  reason. A pending or refused request releases nothing.

Sans-IO: no network, no database, no clock; keys, time and ids come in.
Nothing here logs; callers log codes and counts, never values.

Over 800 lines: asking, deciding, approving and answering share one message format and
one set of checks, and ``make mutate`` measures them as one core.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from google.protobuf.message import DecodeError

from samenloop.node.daemon.envelopes import Envelope
from samenloop.node.daemon.envelopes import seal as _seal
from samenloop.node.identifiers.person_hits import signal_score
from samenloop.node.identifiers.person_keys import PersonKeyKind
from samenloop.node.signals.notices import verify_hit_notice
from samenloop.policies import crypto, rules
from samenloop.policies.audit import check_actor
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SealedBox, SignatureContext
from samenloop.policies.errors import (
    DecryptionFailed,
    InvalidInput,
    InvalidSignature,
    MessageTooLarge,
    NotAllowed,
    SamenloopError,
)
from samenloop.policies.policy import DEFAULT_DISCLOSURE_SCORE, MAX_PERSON_SCORE, check_token
from samenloop.policies.rules import Allow, Deny, NeedsApproval, Refusal
from samenloop.policies.times import received_time
from samenloop.v1 import broker_pb2, common_pb2, disclosure_pb2

__all__ = [
    "Envelope",
    "IncomingRequest",
    "Outcome",
    "OwnerFacts",
    "PendingRequest",
    "ResponseUpdate",
    "SignalFacts",
    "Verdict",
    "approve",
    "build_request",
    "check_officer",
    "check_request",
    "decide",
    "deny",
    "hit_proof",
    "no_longer_a_party",
    "officer_key",
    "open_envelope",
    "parse_request",
    "parse_response",
    "refusal_from_proto",
    "refusal_to_proto",
    "respond",
]

ID_BYTES: Final[int] = common_pb2.LIMITS_ID_BYTES
MAX_FIELDS: Final[int] = common_pb2.LIMITS_MAX_DETAIL_FIELDS
MAX_NAME_BYTES: Final[int] = common_pb2.LIMITS_MAX_PARTY_ID_BYTES
MAX_TEXT_BYTES: Final[int] = common_pb2.LIMITS_MAX_TEXT_BYTES
MAX_ENVELOPE_BYTES: Final[int] = common_pb2.LIMITS_MAX_ENVELOPE_BYTES
MAX_CLOCK_SKEW: Final = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
HIT_PROOF_BYTES: Final = crypto.MAC_BYTES
_PROOF_DOMAIN: Final = b"samenloop/v1 disclosure proof"
#: The one message of every refusal of the hit proof (see the module's docstring).
NOT_PROVEN: Final = "the owner cannot confirm that this signal is in a hit with the requester"

_REFUSALS: Final = {
    r: disclosure_pb2.DisclosureRefusalReason.Value(f"DISCLOSURE_REFUSAL_REASON_{r.name}")
    for r in Refusal
}
_PROTO_REFUSALS: Final[dict[int, Refusal]] = {v: r for r, v in _REFUSALS.items()}


def refusal_to_proto(reason: Refusal) -> disclosure_pb2.DisclosureRefusalReason.ValueType:
    return _REFUSALS[reason]


def refusal_from_proto(value: int) -> Refusal | None:
    return _PROTO_REFUSALS.get(value)


# --- envelopes -------------------------------------------------------------------------


def open_envelope(
    keys: PartyKeys, covenant: Covenant, sealed: common_pb2.Sealed
) -> tuple[SignatureContext, bytes]:
    """Open a relayed envelope addressed to this node: its context and verified body.

    Raises ``InvalidSignature`` or ``DecryptionFailed`` when it is forged: not
    for this node, from a party the covenant does not list, a box that does not
    open with the sender's key, or an inner message signed by anyone else.
    """
    if sealed.recipient != keys.party:
        raise InvalidSignature("envelope is for another party", field="envelope.recipient")
    if not covenant.is_party(sealed.sender) or sealed.sender == keys.party:
        raise InvalidSignature("envelope sender is not another party", field="envelope.sender")
    if len(sealed.ciphertext) > MAX_ENVELOPE_BYTES:
        raise DecryptionFailed("envelope too large", field="envelope.ciphertext")
    box = SealedBox(nonce=bytes(sealed.nonce), ciphertext=bytes(sealed.ciphertext))
    return crypto.open_signed(keys, sealed.sender, covenant.public_keys(sealed.sender), box)


# --- the hit proof ----------------------------------------------------------------------


def _proof_message(
    *,
    covenant_id: str,
    request_id: bytes,
    requester: str,
    owner: str,
    hit_group_id: bytes,
    signal_ref: bytes,
) -> bytes:
    """What the hit proof MACs: the domain and the request's binding fields, each framed."""
    return b"".join(
        crypto.frame(part)
        for part in (
            _PROOF_DOMAIN,
            covenant_id.encode("utf-8"),
            request_id,
            requester.encode("utf-8"),
            owner.encode("utf-8"),
            hit_group_id,
            signal_ref,
        )
    )


def hit_proof(
    proof_key: bytes,
    *,
    covenant_id: str,
    request_id: bytes,
    requester: str,
    owner: str,
    hit_group_id: bytes,
    signal_ref: bytes,
) -> bytes:
    """The ``DisclosureRequest.hit_proof``: HMAC-SHA256 under a hit proof key, bound to this
    request (its id), its two parties, the hit group and the owner's signal ref."""
    return crypto.mac(
        proof_key,
        _proof_message(
            covenant_id=covenant_id,
            request_id=request_id,
            requester=requester,
            owner=owner,
            hit_group_id=hit_group_id,
            signal_ref=signal_ref,
        ),
    )


# --- asking ------------------------------------------------------------------------------


def _check_name(value: str, field: str) -> str:
    if not value or len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidInput(f"must be 1 to {MAX_NAME_BYTES} bytes", field=field)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidInput("must not contain control characters", field=field)
    return value


def _check_fields(fields: Sequence[str], field: str = "fields") -> tuple[str, ...]:
    if not fields:
        raise InvalidInput("ask for at least one field", field=field, reason="disclosure.no_fields")
    if len(fields) > MAX_FIELDS:
        raise MessageTooLarge(f"at most {MAX_FIELDS} fields per request", field=field)
    for i, name in enumerate(fields):
        check_token(name, field=f"{field}[{i}]")
    if len(set(fields)) != len(fields):
        raise InvalidInput("a field is listed twice", field=field, reason="disclosure.duplicate")
    return tuple(fields)


def _check_justification(text: str, field: str = "justification") -> str:
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise MessageTooLarge(f"at most {MAX_TEXT_BYTES} bytes of UTF-8", field=field)
    return text


def check_request(
    covenant: Covenant,
    me: str,
    notice: broker_pb2.HitNotice,
    *,
    owner: str,
    signal_ref: bytes,
    purpose: str,
    fields: Sequence[str],
    officer: str,
    justification: str,
    proof_keys: Callable[[bytes], bytes | None],
) -> bytes:
    """Refuse, before anything is stored or sent, a request the owner would refuse anyway
    or that is malformed; every error names its field (``InvalidInput``/``NotFound``).

    Returns the hit proof key for :func:`build_request`: that of the first of the
    requester's own refs in the notice that ``proof_keys`` knows. A requester with
    no signal of its own in the hit cannot prove the hit (field ``hit_group_id``,
    reason ``disclosure.no_own_signal``); one whose signals in it were tokenised
    before hit proofs existed must tokenise them again (``disclosure.no_proof_key``).
    """
    if owner == me:
        raise InvalidInput("a node does not ask itself", field="owner", reason="disclosure.self")
    if not covenant.is_party(owner):
        raise InvalidInput(
            "not a party of the covenant", field="owner", reason="disclosure.unknown_owner"
        )
    if len(signal_ref) != ID_BYTES:
        raise InvalidInput(f"a signal ref is {ID_BYTES} bytes", field="signal_ref")
    members = [m for m in notice.members if m.HasField("party") and m.party == owner]
    if not members:
        raise InvalidInput(
            "the hit does not show this party", field="owner", reason="disclosure.owner_not_in_hit"
        )
    if not any(signal_ref in m.signal_refs for m in members):
        raise InvalidInput(
            "the hit does not list this signal ref for the owner",
            field="signal_ref",
            reason="disclosure.ref_not_in_hit",
        )
    if notice.kind == broker_pb2.HIT_NOTICE_KIND_CLOSED:
        raise InvalidInput("the hit is closed", field="hit_group_id", reason="disclosure.closed")
    if covenant.policy.purpose(purpose) is None:
        raise InvalidInput(
            f"not a purpose of this covenant; use one of: "
            f"{', '.join(p.id for p in covenant.policy.purposes)}",
            field="purpose",
            reason="disclosure.unknown_purpose",
        )
    _check_fields(fields)
    check_officer(officer)
    _check_justification(justification)
    if not notice.own_signal_refs:
        raise InvalidInput(
            "this node holds no signal in the hit, so it cannot prove the hit: only a party "
            "with a signal of its own in a hit can ask for details",
            field="hit_group_id",
            reason="disclosure.no_own_signal",
        )
    for ref in sorted(notice.own_signal_refs):
        key = proof_keys(bytes(ref))
        if key is not None:
            return key
    raise InvalidInput(
        "this node's signals in the hit were tokenised before hit proofs existed: "
        "re-tokenise them (withdraw each and add it again) to ask",
        field="hit_group_id",
        reason="disclosure.no_proof_key",
    )


def build_request(
    keys: PartyKeys,
    covenant: Covenant,
    notice: common_pb2.Signed,
    *,
    request_id: bytes,
    owner: str,
    signal_ref: bytes,
    purpose: str,
    fields: Sequence[str],
    officer: str,
    justification: str,
    proof_key: bytes,
    now: datetime,
    person_score: float | None = None,
) -> tuple[disclosure_pb2.DisclosureRequest, Envelope]:
    """The signed request, with its hit proof under ``proof_key`` (from
    :func:`check_request`), sealed to the owner; its request id is the envelope's
    message id."""
    if len(request_id) != ID_BYTES:
        raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
    try:
        group = broker_pb2.HitNotice.FromString(notice.body).hit_group_id
    except DecodeError as error:
        raise InvalidInput("the hit notice does not parse", field="hit_notice") from error
    request = disclosure_pb2.DisclosureRequest(
        request_id=request_id,
        covenant_id=covenant.id,
        covenant_version=covenant.version,
        requester=keys.party,
        owner=owner,
        hit_notice=notice,
        signal_ref=signal_ref,
        purpose=purpose,
        requested_fields=list(fields),
        requester_officer=officer,
        justification=justification,
        hit_proof=hit_proof(
            proof_key,
            covenant_id=covenant.id,
            request_id=request_id,
            requester=keys.party,
            owner=owner,
            hit_group_id=group,
            signal_ref=signal_ref,
        ),
    )
    request.issued_at.FromDatetime(now.astimezone(UTC))
    if person_score is not None:
        request.person_score = person_score
    envelope = _seal(
        keys,
        covenant,
        owner,
        SignatureContext.DISCLOSURE_REQUEST,
        request.SerializeToString(),
        request_id,
    )
    return request, envelope


# --- deciding --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class IncomingRequest:
    """A disclosure request whose seal and signature verified, its fields checked for shape."""

    request_id: bytes
    covenant_id: str
    covenant_version: int
    requester: str
    owner: str
    notice: common_pb2.Signed
    signal_ref: bytes
    purpose: str
    fields: tuple[str, ...]
    officer: str
    justification: str
    issued_at: datetime
    #: On a probable person hit: the requester's score of it (shown, never trusted).
    person_score: float | None
    #: The hit group the attached notice names, None if it does not parse or names none
    #: (not yet verified: :func:`decide` refuses unless the verified notice names it).
    hit_group_id: bytes | None
    hit_proof: bytes

    def __repr__(self) -> str:
        return f"IncomingRequest(requester={self.requester!r}, fields={len(self.fields)})"


def _notice_group(notice: common_pb2.Signed) -> bytes | None:
    try:
        group = broker_pb2.HitNotice.FromString(notice.body).hit_group_id
    except DecodeError:
        return None
    return group if len(group) == ID_BYTES else None


def parse_request(body: bytes, *, sender: str, me: str) -> IncomingRequest:
    """Parse a verified request body; ``InvalidInput`` if it is malformed or names another
    requester or owner than its envelope (then it is treated as forged and dropped)."""
    request = disclosure_pb2.DisclosureRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as error:
        raise InvalidInput("not a DisclosureRequest", field="body") from error
    if len(request.request_id) != ID_BYTES:
        raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
    if request.requester != sender:
        raise InvalidInput("requester is not the signer", field="requester")
    if request.owner != me:
        raise InvalidInput("owner is not this node", field="owner")
    if len(request.signal_ref) != ID_BYTES:
        raise InvalidInput(f"a signal ref is {ID_BYTES} bytes", field="signal_ref")
    _check_name(request.purpose, "purpose")
    _check_fields(list(request.requested_fields), "requested_fields")
    check_officer(request.requester_officer, "requester_officer")
    _check_justification(request.justification)
    if not request.HasField("issued_at") or request.covenant_version < 1:
        raise InvalidInput("issued_at and covenant_version are required", field="issued_at")
    issued_at = received_time(request.issued_at, field="issued_at")
    if request.HasField("person_score") and not 0 <= request.person_score <= MAX_PERSON_SCORE:
        raise InvalidInput(f"a score is 0 to {MAX_PERSON_SCORE:g} bits", field="person_score")
    return IncomingRequest(
        request_id=bytes(request.request_id),
        covenant_id=request.covenant_id,
        covenant_version=request.covenant_version,
        requester=request.requester,
        owner=request.owner,
        notice=request.hit_notice,
        signal_ref=bytes(request.signal_ref),
        purpose=request.purpose,
        fields=tuple(request.requested_fields),
        officer=request.requester_officer,
        justification=request.justification,
        issued_at=issued_at,
        person_score=request.person_score if request.HasField("person_score") else None,
        hit_group_id=_notice_group(request.hit_notice),
        hit_proof=bytes(request.hit_proof),
    )


@dataclass(frozen=True, slots=True, repr=False)
class SignalFacts:
    """What the owner knows of the signal behind a ref. Its repr hides the details."""

    signal_id: int
    category: str
    active: bool
    details: Mapping[str, str]

    def __repr__(self) -> str:
        return f"SignalFacts(signal_id={self.signal_id}, active={self.active})"


class OwnerFacts(Protocol):
    """What :func:`decide` asks of the owner's records (the node's store answers)."""

    def disclosure_seen(self, request_id: bytes, /) -> bool:
        """Whether a request with this id was ever received."""
        ...

    def signal_facts(self, signal_ref: bytes, /) -> SignalFacts | None:
        """The owner's signal behind one of its refs; None if it has no such ref."""
        ...

    def hit_proof_key(self, signal_ref: bytes, /) -> bytes | None:
        """The hit proof key of the owner's identifier with this ref; None if it has no
        such ref or no key for it (tokenised before hit proofs existed)."""
        ...

    def hit_own_refs(self, group_id: bytes, /) -> frozenset[bytes]:
        """The owner's own refs that its latest notice of this group lists (empty if it
        holds no notice of the group)."""
        ...

    def hit_closed(self, group_id: bytes, /) -> bool:
        """Whether the owner's latest notice of this group closed it."""
        ...

    def hit_members(self, group_id: bytes, /) -> frozenset[str] | None:
        """The parties the owner's latest notice of this group shows as members; None if
        the owner holds no notice of it or its notice does not show members by party."""
        ...

    def person_kinds(
        self, signal_ref: bytes, party: str, /
    ) -> tuple[frozenset[PersonKeyKind], frozenset[PersonKeyKind]] | None:
        """For a ref of one of the owner's person keys: the kinds on which ``party`` (by its
        party id as the owner's notices show it) shares an open hit with that signal (its
        probable person hit), and the kinds the signal has; None for a ref of any other
        identifier."""
        ...

    def requests_since(self, requester: str, since: datetime, /) -> int:
        """Incoming requests from ``requester`` received at or after ``since``."""
        ...

    def grants_since(
        self, requester: str, purpose: str, rule_category: str, since: datetime, /
    ) -> int:
        """Incoming requests granted to ``requester`` under the rule (purpose, rule category)
        at or after ``since``."""
        ...


class Outcome(enum.StrEnum):
    """What the owner does with a request now."""

    GRANTED = "granted"
    PENDING = "pending_approval"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The owner's decision on a request: what to release, or why not.

    ``fields`` are the allowed fields (for a grant: those the signal has, with
    ``values``); ``rule_category`` names the rule that allowed it, for the
    per-period count; ``signal_id``/``category`` say which signal it was about.
    """

    outcome: Outcome
    fields: tuple[str, ...] = ()
    withheld: tuple[str, ...] = ()
    values: Mapping[str, str] | None = None
    rule_category: str | None = None
    reason: Refusal | None = None
    message: str = ""
    signal_id: int | None = None
    category: str | None = None

    def __repr__(self) -> str:
        return (
            f"Verdict(outcome={self.outcome.value}, fields={len(self.fields)}, "
            f"reason={self.reason})"
        )


def _refuse(reason: Refusal, message: str, signal: SignalFacts | None = None) -> Verdict:
    return Verdict(
        Outcome.REFUSED,
        reason=reason,
        message=message,
        signal_id=None if signal is None else signal.signal_id,
        category=None if signal is None else signal.category,
    )


def _day_start(now: datetime) -> datetime:
    day = now.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _release(
    covenant: Covenant,
    requester: str,
    purpose: str,
    fields: Sequence[str],
    signal: SignalFacts,
    hit_open: bool,
    facts: OwnerFacts,
    now: datetime,
    *,
    approved: bool,
) -> Verdict:
    """The covenant's release rule, counted against the rule's period quota."""
    released = 0
    if covenant.is_party(requester):
        rule = rules.release_rule_for(
            covenant, covenant.role_of(requester), signal.category, purpose
        )
        if rule is not None and rule.max_per_period:
            since = now - timedelta(days=rule.period_days)
            released = facts.grants_since(requester, purpose, rule.category, since)
    decision = rules.release(
        covenant,
        requester=requester,
        purpose=purpose,
        fields=fields,
        category=signal.category,
        in_hit=True,
        hit_open=hit_open,
        released_in_period=released,
    )
    if isinstance(decision, Deny):
        return _refuse(decision.reason, decision.message, signal)
    assert isinstance(decision, Allow | NeedsApproval)
    if isinstance(decision, NeedsApproval) and not approved:
        return Verdict(
            Outcome.PENDING,
            fields=decision.fields,
            withheld=decision.withheld,
            rule_category=decision.rule.category,
            message="waiting for a second officer of the owner (four eyes)",
            signal_id=signal.signal_id,
            category=signal.category,
        )
    values = {name: signal.details[name] for name in decision.fields if name in signal.details}
    return Verdict(
        Outcome.GRANTED,
        fields=tuple(sorted(values)),
        withheld=decision.withheld,
        values=values,
        rule_category=decision.rule.category,
        signal_id=signal.signal_id,
        category=signal.category,
    )


def _still_shown(
    covenant: Covenant,
    me: str,
    requester: str,
    group_id: bytes,
    facts: OwnerFacts,
    signal: SignalFacts,
) -> Verdict | None:
    """A refusal (``NOT_IN_HIT``) if, under the covenant and the owner's notice of now, the
    requester may no longer see the owner in this hit; None if it may.

    A requester proves that it holds a signal in the hit, so it is a member: where the
    owner's notice shows members by party, and may show the requester's, it must list
    the requester (a coordinator that left the hit keeps observing it, not asking)."""
    if rules.hides(covenant, requester, me):
        return _refuse(
            Refusal.NOT_IN_HIT, "under the covenant of now the hit does not show the owner", signal
        )
    if rules.hides(covenant, me, requester):
        return None  # the owner cannot know whether the requester is still in the group
    members = facts.hit_members(group_id)
    if members is not None and requester not in members:
        return _refuse(
            Refusal.NOT_IN_HIT,
            "the owner's latest notice of the hit no longer shows the requester",
            signal,
        )
    return None


def _proven(
    covenant: Covenant,
    me: str,
    request: IncomingRequest,
    notice: broker_pb2.HitNotice,
    facts: OwnerFacts,
) -> SignalFacts | None:
    """The owner's signal asked about if the hit proof holds (rules 1-5 of the module's
    docstring), else None: the caller refuses all alike, so no answer says which failed."""
    listed = any(
        m.HasField("party") and m.party == me and request.signal_ref in m.signal_refs
        for m in notice.members
    )
    signal = facts.signal_facts(request.signal_ref)
    if not listed or signal is None:
        return None
    if request.signal_ref not in facts.hit_own_refs(notice.hit_group_id):
        return None
    key = facts.hit_proof_key(request.signal_ref)
    if key is None:
        return None
    message = _proof_message(
        covenant_id=covenant.id,
        request_id=request.request_id,
        requester=request.requester,
        owner=me,
        hit_group_id=notice.hit_group_id,
        signal_ref=request.signal_ref,
    )
    try:
        crypto.verify_mac(key, message, request.hit_proof)
    except InvalidSignature:  # refused like every other failure of the proof: no field named
        return None
    return signal


def _too_weak(
    covenant: Covenant,
    request: IncomingRequest,
    facts: OwnerFacts,
    signal: SignalFacts,
    min_person_score: float,
) -> Verdict | None:
    """A refusal (``SCORE_TOO_LOW``) of a request on a probable person hit whose score, as
    the owner computes it from its own hits with the requester, is below the covenant's
    ``disclosure_score`` or the owner's own higher minimum; None for any other hit."""
    evidence = facts.person_kinds(request.signal_ref, request.requester)
    if evidence is None:
        return None
    kinds, own = evidence
    rules_ = covenant.policy.person_matching
    needed = max(
        DEFAULT_DISCLOSURE_SCORE if rules_ is None else rules_.disclosure_score,
        min_person_score,
    )
    value = signal_score(kinds, own, rules_)
    if value >= needed:
        return None
    claimed = (
        "" if request.person_score is None else f" (the requester's: {request.person_score:.1f})"
    )
    return _refuse(
        Refusal.SCORE_TOO_LOW,
        f"a probable person hit scoring {value:.1f} bits{claimed}; "
        f"the owner answers from {needed:.1f}",
        signal,
    )


def decide(
    covenant: Covenant,
    me: str,
    request: IncomingRequest,
    facts: OwnerFacts,
    *,
    now: datetime,
    stale: str | None = None,
    min_person_score: float = 0.0,
) -> Verdict:
    """Decide a request at the owner's node (rules in the module's docstring, in order).

    ``stale`` says why the owner is stale (it holds no unexpired covenant timestamp for
    its version: the requester may have been removed by a version the broker withholds),
    None while it is fresh. A stale owner refuses, so that nothing waits to be released
    later under rules nobody looked at again; the requester may ask again."""
    if facts.disclosure_seen(request.request_id):
        return _refuse(Refusal.REPLAY, "this request id was seen before")
    if stale is not None:
        return _refuse(Refusal.COVENANT_STALE, stale)
    if request.covenant_id != covenant.id or request.covenant_version > covenant.version:
        return _refuse(
            Refusal.COVENANT_MISMATCH,
            f"the owner holds covenant {covenant.id} version {covenant.version}; "
            "retry once it has caught up",
        )
    if request.issued_at > now + MAX_CLOCK_SKEW:
        return _refuse(Refusal.NOT_ALLOWED, "the request is issued in the future: check the clock")
    try:
        notice = verify_hit_notice(covenant, request.requester, request.notice)
    except SamenloopError:
        notice = None
    if notice is None or notice.hit_group_id != request.hit_group_id:
        return _refuse(
            Refusal.INVALID_NOTICE,
            "the hit notice is not the broker's, or not for this covenant and requester",
        )
    signal = _proven(covenant, me, request, notice, facts)
    if signal is None:
        return _refuse(Refusal.NOT_IN_HIT, NOT_PROVEN)
    hit_open = (
        notice.kind != broker_pb2.HIT_NOTICE_KIND_CLOSED
        and not facts.hit_closed(notice.hit_group_id)
        and signal.active
    )
    if not hit_open:
        return _refuse(Refusal.HIT_CLOSED, "the hit is closed or the signal withdrawn", signal)
    gone = _still_shown(covenant, me, request.requester, notice.hit_group_id, facts, signal)
    if gone is not None:
        return gone
    weak = _too_weak(covenant, request, facts, signal, min_person_score)
    if weak is not None:
        return weak
    limit = covenant.policy.quotas.disclosure_requests_per_day
    if facts.requests_since(request.requester, _day_start(now)) >= limit:
        return _refuse(
            Refusal.QUOTA_EXCEEDED,
            f"the covenant allows {limit} disclosure requests per party per day",
            signal,
        )
    return _release(
        covenant,
        request.requester,
        request.purpose,
        request.fields,
        signal,
        hit_open,
        facts,
        now,
        approved=False,
    )


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A stored pending incoming request, as :func:`approve` and :func:`deny` need it."""

    request_id: bytes
    requester: str
    signal_ref: bytes
    hit_group_id: bytes | None
    purpose: str
    fields: tuple[str, ...]
    requester_officer: str
    decided_by: str | None


def officer_key(officer: str) -> str:
    """An officer's identity as four eyes compares it: Unicode NFKC, case folded, spaces
    stripped and runs of whitespace made one space. Officers are stored and shown as
    given; ``"Bd-Teamleider-7 "`` and ``"bd-teamleider-7"`` are one person."""
    return " ".join(unicodedata.normalize("NFKC", officer).casefold().split())


def check_officer(officer: object, field: str = "officer") -> str:
    """An officer's identity as an API call or another party's message gives it: 1 to
    ``MAX_NAME_BYTES`` bytes of UTF-8 of printable text, as the audit log takes an actor
    (:func:`~samenloop.policies.audit.check_actor`): ``Jürgen de Vries`` and
    ``Bd-Teamleider-7 `` are officers, a name with a control or format character (a bidi
    override) or of spaces only is not. Returned as given: stored and shown so, compared
    as :func:`officer_key` makes it. ``InvalidInput`` names ``field``."""
    if not isinstance(officer, str) or not officer.strip():
        raise InvalidInput("name the officer", field=field)
    if len(officer.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidInput(f"at most {MAX_NAME_BYTES} bytes of UTF-8", field=field)
    return check_actor(officer, field=field)


def _check_officer(pending: PendingRequest, officer: str) -> None:
    check_officer(officer)
    if officer_key(officer) == officer_key(pending.requester_officer):
        raise NotAllowed(
            "the officer who asked cannot decide on the request (four eyes)",
            field="officer",
            reason="disclosure.same_officer",
        )
    if pending.decided_by is not None and officer_key(officer) == officer_key(pending.decided_by):
        raise NotAllowed(
            "this officer already decided on the request (four eyes)",
            field="officer",
            reason="disclosure.same_officer",
        )


NO_LONGER_A_PARTY: Final = "the requester is no longer a party of the covenant"


def no_longer_a_party() -> Verdict:
    """The refusal recorded for a request whose requester a covenant version removed: it is
    not answered (the covenant no longer gives a key to seal the answer to)."""
    return _refuse(Refusal.NOT_ALLOWED, NO_LONGER_A_PARTY)


def approve(
    covenant: Covenant,
    pending: PendingRequest,
    officer: str,
    facts: OwnerFacts,
    *,
    me: str,
    now: datetime,
) -> Verdict:
    """A second officer approves: decide again under the covenant and facts of now.

    ``NotAllowed`` (field ``officer``) if this officer may not decide. The
    result is a grant or a refusal, never pending again: refused if the
    requester is no longer a party (:func:`no_longer_a_party`), the request has
    no hit group to check (``NOT_IN_HIT``: it fails closed), the signal is
    withdrawn or the hit closed (``HIT_CLOSED``), the owner's own latest notice
    of the group no longer lists the signal or the requester may no longer see
    the owner in the hit (``NOT_IN_HIT``, as :func:`decide`), or the release
    rule no longer allows it.
    """
    _check_officer(pending, officer)
    if not covenant.is_party(pending.requester):
        return no_longer_a_party()
    group = pending.hit_group_id
    if group is None or len(group) != ID_BYTES:
        return _refuse(Refusal.NOT_IN_HIT, "the request names no hit group the owner can check")
    signal = facts.signal_facts(pending.signal_ref)
    if signal is None:
        return _refuse(Refusal.HIT_CLOSED, "the signal is no longer held")
    hit_open = signal.active and not facts.hit_closed(group)
    if not hit_open:
        return _refuse(Refusal.HIT_CLOSED, "the hit is closed or the signal withdrawn", signal)
    if pending.signal_ref not in facts.hit_own_refs(group):
        return _refuse(
            Refusal.NOT_IN_HIT,
            "the owner's latest notice of the hit no longer lists the signal",
            signal,
        )
    gone = _still_shown(covenant, me, pending.requester, group, facts, signal)
    if gone is not None:
        return gone
    return _release(
        covenant,
        pending.requester,
        pending.purpose,
        pending.fields,
        signal,
        hit_open,
        facts,
        now,
        approved=True,
    )


def deny(pending: PendingRequest, officer: str, reason: str) -> Verdict:
    """A second officer denies: refused, with the officer's reason for the requester."""
    _check_officer(pending, officer)
    _check_justification(reason, "reason")
    if not reason.strip():
        raise InvalidInput("say why", field="reason", reason="disclosure.reason_missing")
    return _refuse(Refusal.DENIED_BY_OFFICER, reason)


# --- answering --------------------------------------------------------------------------------


def respond(
    keys: PartyKeys,
    covenant: Covenant,
    *,
    request_id: bytes,
    requester: str,
    verdict: Verdict,
    approved_by_second_officer: bool,
    message_id: bytes,
    now: datetime,
) -> Envelope:
    """The signed answer, sealed to the requester: the grant, a pending notice or a refusal."""
    response = disclosure_pb2.DisclosureResponse(
        request_id=request_id,
        owner=keys.party,
        requester=requester,
        covenant_version=covenant.version,
    )
    response.issued_at.FromDatetime(now.astimezone(UTC))
    if verdict.outcome is Outcome.GRANTED:
        response.granted.CopyFrom(
            disclosure_pb2.DisclosureGrant(
                fields=dict(verdict.values or {}),
                withheld_fields=list(verdict.withheld),
                category=verdict.category or "",
                approved_by_second_officer=approved_by_second_officer,
            )
        )
    elif verdict.outcome is Outcome.PENDING:
        response.pending.message = verdict.message
    else:
        assert verdict.reason is not None
        response.refused.reason = refusal_to_proto(verdict.reason)
        response.refused.message = verdict.message
    return _seal(
        keys,
        covenant,
        requester,
        SignatureContext.DISCLOSURE_RESPONSE,
        response.SerializeToString(),
        message_id,
    )


@dataclass(frozen=True, slots=True, repr=False)
class ResponseUpdate:
    """An owner's answer as the requester applies it to its outgoing request."""

    request_id: bytes
    owner: str
    outcome: Outcome
    values: Mapping[str, str] | None = None
    withheld: tuple[str, ...] = ()
    reason: Refusal | None = None
    message: str = ""

    def __repr__(self) -> str:
        return f"ResponseUpdate(outcome={self.outcome.value}, reason={self.reason})"


def parse_response(body: bytes, *, sender: str, me: str) -> ResponseUpdate:
    """Parse a verified response body; ``InvalidInput`` if malformed or misaddressed."""
    response = disclosure_pb2.DisclosureResponse()
    try:
        response.ParseFromString(body)
    except DecodeError as error:
        raise InvalidInput("not a DisclosureResponse", field="body") from error
    if len(response.request_id) != ID_BYTES:
        raise InvalidInput(f"a request id is {ID_BYTES} bytes", field="request_id")
    if response.owner != sender or response.requester != me:
        raise InvalidInput("owner or requester does not match the envelope", field="owner")
    outcome = response.WhichOneof("outcome")
    if outcome == "granted":
        grant = response.granted
        return ResponseUpdate(
            bytes(response.request_id),
            sender,
            Outcome.GRANTED,
            values=dict(grant.fields),
            withheld=tuple(grant.withheld_fields),
        )
    if outcome == "pending":
        return ResponseUpdate(
            bytes(response.request_id), sender, Outcome.PENDING, message=response.pending.message
        )
    if outcome == "refused":
        reason = refusal_from_proto(response.refused.reason)
        if reason is None:
            raise InvalidInput("unknown refusal reason", field="refused.reason")
        return ResponseUpdate(
            bytes(response.request_id),
            sender,
            Outcome.REFUSED,
            reason=reason,
            message=_check_justification(response.refused.message, "refused.message"),
        )
    raise InvalidInput("a response needs an outcome", field="outcome")
