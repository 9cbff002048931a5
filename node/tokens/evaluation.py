"""The threshold OPRF as signed protocol messages: the requesting node's side.

A node tokenises a batch by asking a responding set of ``t`` key holders to
evaluate its blinded elements (see ``proto/samenloop/v1/keyholder.proto``):

1. ``build_requests`` signs one ``EvaluationRequest`` per holder of the set
   (context ``oprf-request``), each for that holder alone: the signature covers
   the holder's party id as its audience, so the broker, which relays them,
   can neither forge a request nor send one holder's request to another.
2. The broker relays them (``relay``: any callable, so tests drive this
   module with an in-memory broker) and returns the holders' replies.
3. ``read_replies`` verifies each holder's signed ``EvaluationResponse``
   (context ``oprf-response``, for this node as audience) and sorts the
   replies into answers, refusals (with their reason) and faults. It never
   raises for one bad holder: a reply that fails any check marks that holder
   faulty, exactly like a wrong DLEQ proof.
4. ``tokenise_with_proof_keys`` runs the whole pipeline: blind
   (``tokens.start``), choose a set and how many elements to ask of it
   (``threshold.HolderPlanner``: a holder party's own seat always, then the
   holders with the most of the day's quota left, as their answers say),
   build, relay, read, verify the proofs and combine (``threshold.combine``),
   unblind and derive the tokens and their hit proof keys
   (``tokens.finish_with_proof_keys``); ``tokenise`` keeps the tokens only. A
   faulty, refusing or unreachable holder is left out and the evaluation is
   asked again of a new set, under a new request id. A holder whose reply
   did not arrive is first sent the same signed request again (``RESENDS``
   times): it answers that again uncounted, so a dropped answer costs no
   quota. After a round that lost answers anyway, requests ask one element
   and grow only with what is answered (``threshold.DailyUse.window``).

Sans-IO: no network, no database; time and request ids are passed in.
Nothing here logs a blinded element, an evaluation or an identifier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from google.protobuf.message import DecodeError

from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import oprf
from samenloop.node.tokens.arithmetic import IN_PROCESS, Arithmetic, Outcome
from samenloop.node.tokens.derive import TokenDomain, Tokenisable
from samenloop.node.tokens.threshold import (
    DailyUse,
    FaultyHolders,
    HolderPlanner,
    KeyEpoch,
    PartialEvaluation,
)
from samenloop.policies import crypto, rules
from samenloop.policies.crypto import PartyKeys, PublicKeys, SignatureContext
from samenloop.policies.errors import (
    InvalidInput,
    InvalidSignature,
    LocalError,
    MessageTooLarge,
    NotAllowed,
    NotEnoughHolders,
)
from samenloop.policies.policy import Quotas
from samenloop.v1 import common_pb2, keyholder_pb2

logger = logging.getLogger(__name__)

#: The protocol's limits, from the wire format.
REQUEST_ID_BYTES: int = common_pb2.LIMITS_ID_BYTES
MAX_ELEMENTS: int = common_pb2.LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST
#: How often a node sends the same signed request again to a holder whose reply did not
#: arrive, before it leaves that holder out; and how often a holder answers an identical
#: request again, uncounted, before it refuses it as a REPLAY (``holder.KeyHolder``).
RESENDS = 2


class Directory(Protocol):
    """Who the covenant's parties are and their public keys.

    The covenant model satisfies it; tests use a dict-backed one.
    """

    def public_keys(self, party: str, /) -> PublicKeys:
        """The party's public keys; raises ``NotAllowed`` for a party the covenant does not list."""
        ...

    def is_party(self, party: str, /) -> bool:
        """Whether the covenant lists ``party``."""
        ...


class RefusalReason(enum.IntEnum):
    """Why a key holder did not evaluate: ``samenloop.v1.EvaluationRefusalReason``."""

    UNSPECIFIED = keyholder_pb2.EVALUATION_REFUSAL_REASON_UNSPECIFIED
    BAD_SIGNATURE = keyholder_pb2.EVALUATION_REFUSAL_REASON_BAD_SIGNATURE
    UNKNOWN_PARTY = keyholder_pb2.EVALUATION_REFUSAL_REASON_UNKNOWN_PARTY
    STALE = keyholder_pb2.EVALUATION_REFUSAL_REASON_STALE
    REPLAY = keyholder_pb2.EVALUATION_REFUSAL_REASON_REPLAY
    QUOTA_EXCEEDED = keyholder_pb2.EVALUATION_REFUSAL_REASON_QUOTA_EXCEEDED
    UNKNOWN_EPOCH = keyholder_pb2.EVALUATION_REFUSAL_REASON_UNKNOWN_EPOCH
    WRONG_HOLDER = keyholder_pb2.EVALUATION_REFUSAL_REASON_WRONG_HOLDER
    INVALID_ELEMENT = keyholder_pb2.EVALUATION_REFUSAL_REASON_INVALID_ELEMENT
    MALFORMED_REQUEST = keyholder_pb2.EVALUATION_REFUSAL_REASON_MALFORMED_REQUEST
    COVENANT_STALE = keyholder_pb2.EVALUATION_REFUSAL_REASON_COVENANT_STALE

    @classmethod
    def from_wire(cls, value: int) -> RefusalReason:
        """A reason from the wire; a value this version does not know reads as ``UNSPECIFIED``."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class Refusal:
    """A holder's signed refusal to evaluate; ``remaining`` as in ``Replies``."""

    holder_index: int
    reason: RefusalReason
    message: str
    remaining: int | None = None


@dataclass(frozen=True, slots=True)
class Replies:
    """The holders' replies to one evaluation, sorted.

    ``answers`` are signed partial evaluations whose proofs are still to be
    checked (``threshold.combine`` does that); ``refusals`` are signed
    refusals; ``faulty`` maps a holder whose reply failed a check to what
    failed; ``missing`` are the holders of the set that did not reply.
    ``remaining`` is what each holder that said so (``remaining_today``, in
    an answer or a quota refusal) still evaluates for the requester today.
    """

    answers: Mapping[int, PartialEvaluation] = field(default_factory=dict)
    refusals: Mapping[int, Refusal] = field(default_factory=dict)
    faulty: Mapping[int, str] = field(default_factory=dict)
    missing: frozenset[int] = frozenset()
    remaining: Mapping[int, int] = field(default_factory=dict)

    @property
    def unusable(self) -> frozenset[int]:
        """Holders to leave out of the next set: refused, faulty or unreachable."""
        return frozenset(self.refusals) | frozenset(self.faulty) | self.missing


# --- requests ------------------------------------------------------------------------


def check_responding_set(epoch: KeyEpoch, responding_set: Sequence[int]) -> tuple[int, ...]:
    """A responding set as the protocol requires: ``t`` distinct holders of the epoch, ascending.

    Raises ``InvalidInput`` naming ``responding_set`` otherwise.
    """
    indices = tuple(responding_set)
    known = {h.index for h in epoch.holders}
    if list(indices) != sorted(set(indices)):
        raise InvalidInput("responding set must be ascending and distinct", field="responding_set")
    if len(indices) != epoch.threshold:
        raise InvalidInput(
            f"responding set has {len(indices)} holders; the threshold is {epoch.threshold}",
            field="responding_set",
        )
    unknown = [i for i in indices if i not in known]
    if unknown:
        raise InvalidInput(f"no key holder with index {unknown[0]}", field="responding_set")
    return indices


def build_requests(
    keys: PartyKeys,
    covenant_id: str,
    epoch: KeyEpoch,
    responding_set: tuple[int, ...],
    blinded: Sequence[bytes],
    *,
    request_id: bytes,
    now: datetime,
) -> dict[int, bytes]:
    """One signed ``EvaluationRequest`` per holder of the set, keyed by holder index.

    Each value is a serialized ``samenloop.v1.Signed`` (context ``oprf-request``,
    signer ``keys.party``) whose signature names the target holder's party id
    as its audience.
    """
    if covenant_id != epoch.covenant_id:
        raise InvalidInput(
            f"key epoch belongs to covenant {epoch.covenant_id!r}, not {covenant_id!r}",
            field="covenant_id",
        )
    if len(request_id) != REQUEST_ID_BYTES:
        raise InvalidInput(f"request id must be {REQUEST_ID_BYTES} bytes", field="request_id")
    if now.tzinfo is None:
        raise LocalError("the time must be timezone-aware (UTC)", field="now")
    indices = check_responding_set(epoch, responding_set)
    if not blinded:
        raise InvalidInput("no blinded elements", field="blinded_elements")
    if len(blinded) > MAX_ELEMENTS:
        raise MessageTooLarge(
            f"{len(blinded)} blinded elements; at most {MAX_ELEMENTS} per request",
            field="blinded_elements",
        )
    requests: dict[int, bytes] = {}
    for index in indices:
        message = keyholder_pb2.EvaluationRequest(
            request_id=request_id,
            covenant_id=covenant_id,
            key_epoch=epoch.epoch,
            requester=keys.party,
            holder_index=index,
            responding_set=indices,
            blinded_elements=blinded,
        )
        message.issued_at.FromDatetime(now)
        body = message.SerializeToString()
        signed = common_pb2.Signed(
            body=body,
            signer=keys.party,
            context=SignatureContext.OPRF_REQUEST.value,
            signature=keys.sign(
                SignatureContext.OPRF_REQUEST, body, audience=epoch.holder(index).party
            ),
        )
        requests[index] = signed.SerializeToString()
    return requests


# --- replies -------------------------------------------------------------------------


class _BadReply(Exception):
    """A reply failed a check; the holder is faulty. Internal to ``read_replies``."""


def read_replies(
    directory: Directory,
    epoch: KeyEpoch,
    responding_set: Sequence[int],
    blinded: Sequence[bytes],
    request_id: bytes,
    replies: Mapping[int, bytes],
    *,
    requester: str,
) -> Replies:
    """Verify and sort the holders' replies to the request ``request_id`` of ``requester``.

    A reply counts only if it is a ``Signed`` with context ``oprf-response``,
    signed by the party that holds that index, for ``requester`` as audience,
    and its ``EvaluationResponse`` names this request, holder, epoch and
    requester. A refusal that the holder made before it could verify the
    request carries no request id and epoch (it cannot know them) and is
    accepted with those fields empty. Replies for holders outside the set are
    ignored. Proofs are not checked here: ``threshold.combine`` does that.
    """
    responding_set = check_responding_set(epoch, responding_set)
    answers: dict[int, PartialEvaluation] = {}
    refusals: dict[int, Refusal] = {}
    faulty: dict[int, str] = {}
    missing: set[int] = set()
    remaining: dict[int, int] = {}
    for index in responding_set:
        reply = replies.get(index)
        if reply is None:
            missing.add(index)
            continue
        try:
            outcome_and_left = _read_reply(
                directory, epoch, index, len(blinded), request_id, reply, requester=requester
            )
        except _BadReply as error:
            faulty[index] = str(error)
            continue
        outcome, left = outcome_and_left
        if left is not None:
            remaining[index] = left
        if isinstance(outcome, Refusal):
            refusals[index] = outcome
        else:
            answers[index] = outcome
    return Replies(
        answers=answers,
        refusals=refusals,
        faulty=faulty,
        missing=frozenset(missing),
        remaining=remaining,
    )


def _read_reply(
    directory: Directory,
    epoch: KeyEpoch,
    index: int,
    count: int,
    request_id: bytes,
    reply: bytes,
    *,
    requester: str,
) -> tuple[PartialEvaluation | Refusal, int | None]:
    """One holder's reply, checked, and what it says remains of the quota (if it does)."""
    signed = common_pb2.Signed()
    try:
        signed.ParseFromString(reply)
    except DecodeError as error:
        raise _BadReply("reply is not a Signed message") from error
    if signed.context != SignatureContext.OPRF_RESPONSE.value:
        raise _BadReply(f"reply has context {signed.context!r}, not an oprf-response")
    holder = epoch.holder(index).party
    if signed.signer != holder:
        raise _BadReply(f"reply is signed by {signed.signer!r}, not by holder {holder!r}")
    try:
        public = directory.public_keys(holder)
        crypto.verify(
            public.ed25519,
            SignatureContext.OPRF_RESPONSE,
            signed.body,
            signed.signature,
            audience=requester,
        )
    except NotAllowed as error:
        raise _BadReply(f"holder {holder!r} is not a party of the covenant") from error
    except InvalidSignature as error:
        raise _BadReply("reply signature does not verify") from error
    response = keyholder_pb2.EvaluationResponse()
    try:
        response.ParseFromString(signed.body)
    except DecodeError as error:
        raise _BadReply("reply body is not an EvaluationResponse") from error
    if response.holder != holder or response.holder_index != index:
        raise _BadReply("reply names another holder")
    if response.requester != requester:
        raise _BadReply("reply is for another requester")
    left = response.remaining_today if response.HasField("remaining_today") else None
    kind = response.WhichOneof("result")
    if kind == "refusal":
        # A holder that refused before verifying the request knows neither its id nor epoch.
        if response.request_id not in (b"", request_id) or response.key_epoch not in (
            0,
            epoch.epoch,
        ):
            raise _BadReply("refusal is for another request")
        refusal = Refusal(
            holder_index=index,
            reason=RefusalReason.from_wire(response.refusal.reason),
            message=response.refusal.message,
            remaining=left,
        )
        return refusal, left
    if not crypto.equal(response.request_id, request_id) or response.key_epoch != epoch.epoch:
        raise _BadReply("answer is for another request or key epoch")
    if kind != "evaluation":
        raise _BadReply("reply carries neither an evaluation nor a refusal")
    evaluation = response.evaluation
    if len(evaluation.evaluated_elements) != count:
        raise _BadReply(
            f"answer has {len(evaluation.evaluated_elements)} elements, the request had {count}"
        )
    if len(evaluation.proof) != oprf.PROOF_BYTES:
        raise _BadReply("answer has a malformed proof")
    partial = PartialEvaluation(
        holder_index=index,
        evaluated_elements=tuple(evaluation.evaluated_elements),
        proof=evaluation.proof,
    )
    return partial, left


# --- the pipeline --------------------------------------------------------------------

#: What carries the signed requests to the holders and their replies back: the
#: broker's Evaluate call in the daemon, an in-memory broker in tests. It returns
#: the replies it got, keyed by holder index; a missing holder is unreachable.
Relay = Callable[[dict[int, bytes]], Mapping[int, bytes]]


def new_request_id() -> bytes:
    """A fresh random request id (16 bytes)."""
    return os.urandom(REQUEST_ID_BYTES)


def daily_use(quotas: Quotas, epoch: KeyEpoch, party: str) -> DailyUse:
    """What each holder of ``epoch`` evaluates for ``party`` per UTC day, nothing used yet."""
    seats = [h.party for h in epoch.holders]
    return DailyUse(
        {
            h.index: rules.oprf_allowance(
                quotas, seats, epoch.threshold, requester=party, holder=h.party
            )
            for h in epoch.holders
        }
    )


def own_seat(epoch: KeyEpoch, party: str) -> int | None:
    """The index of ``party``'s seat in ``epoch``, if it holds one."""
    return next((h.index for h in epoch.holders if h.party == party), None)


def tokenise(
    keys: PartyKeys,
    directory: Directory,
    domain: TokenDomain,
    epoch: KeyEpoch,
    identifiers: Sequence[Tokenisable],
    relay: Relay,
    *,
    now: datetime,
    planner: HolderPlanner | None = None,
    request_ids: Callable[[], bytes] = new_request_id,
    workers: Arithmetic = IN_PROCESS,
) -> list[bytes]:
    """The tokens of :func:`tokenise_with_proof_keys`, without their hit proof keys."""
    made = tokenise_with_proof_keys(
        keys,
        directory,
        domain,
        epoch,
        identifiers,
        relay,
        now=now,
        planner=planner,
        request_ids=request_ids,
        workers=workers,
    )
    return [m.token for m in made]


def tokenise_with_proof_keys(
    keys: PartyKeys,
    directory: Directory,
    domain: TokenDomain,
    epoch: KeyEpoch,
    identifiers: Sequence[Tokenisable],
    relay: Relay,
    *,
    now: datetime,
    planner: HolderPlanner | None = None,
    request_ids: Callable[[], bytes] = new_request_id,
    workers: Arithmetic = IN_PROCESS,
) -> list[tokens.TokenKeys]:
    """Tokenise ``identifiers`` with the covenant's key holders, through ``relay``; each
    token comes with its hit proof key (:mod:`samenloop.node.tokens.derive`).

    Returns the tokens of ``identifiers`` in order, or of a first part of them
    when the holders run out midway (the quota is used up, too many holders
    are gone): what they evaluated and counted is not thrown away.

    Batches larger than ``LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST`` are split,
    and so is a batch that the holders' daily allowances (``planner.use``)
    cannot take at once. A requester that holds a seat always includes it.
    A holder that refuses, does not reply, replies wrongly or proves a wrong
    evaluation is left out (``planner`` remembers it across the chunks of this
    call, and across calls if the caller keeps the planner) and the chunk is
    asked of the next set under a new request id; a holder whose quota refusal
    says it has less left than was asked is asked again for less. Raises
    ``NotEnoughHolders`` when no set of ``t`` usable holders is left before
    any token was made (also when the quota is used up), and ``NotAllowed``
    when the key epoch is not in force at ``now``; whatever ``relay`` raises
    (the broker is unreachable) propagates.

    ``workers`` is where the blinding, the proof checks and the unblinding run:
    here, or in slices over the machine's cores (:mod:`samenloop.node.tokens.workers`);
    the tokens are the same.
    """
    if (epoch.covenant_id, epoch.epoch) != (domain.covenant_id, domain.key_epoch):
        raise InvalidInput("key epoch does not belong to this token domain", field="key_epoch")
    if not identifiers:
        raise InvalidInput("no identifiers to tokenise", field="identifiers")
    if now.tzinfo is None:
        raise LocalError("the time must be timezone-aware (UTC)", field="now")
    epoch.check_in_force(now)
    planner = planner if planner is not None else HolderPlanner(epoch)
    planner.own = own_seat(epoch, keys.party)
    # A pipeline. While the holders evaluate one request, the proofs of the request before
    # are checked, the next chunk blinded and the chunk before unblinded: in the workers,
    # or in this thread one after the other with ``IN_PROCESS``.
    chunks = [identifiers[i : i + MAX_ELEMENTS] for i in range(0, len(identifiers), MAX_ELEMENTS)]
    blinding = workers.start_later(domain, chunks[0])
    pendings: list[tokens.PendingTokens] = []
    evaluated: list[list[bytes]] = []  # of each chunk, as checked so far
    finishing: list[Outcome[list[tokens.TokenKeys]]] = []
    in_flight: tuple[int, _Asked, Outcome[list[bytes]]] | None = None

    def settle(chunk: int, asked: _Asked, combined: Outcome[list[bytes]]) -> None:
        """Check a request's proofs; ask again (at once) what a faulty holder spoiled."""
        checked = _check(asked, planner, combined)
        if checked is None:
            checked = []
            while len(checked) < len(asked.asked):
                checked.extend(
                    _evaluate(
                        keys,
                        directory,
                        epoch,
                        asked.asked[len(checked) :],
                        relay,
                        planner,
                        now,
                        request_ids,
                        workers,
                    )
                )
        evaluated[chunk].extend(checked)
        if len(evaluated[chunk]) == len(pendings[chunk].blinded_elements):
            finishing.append(workers.finish_later(pendings[chunk], evaluated[chunk]))

    def recovering(use: DailyUse) -> bool:
        return use.window < MAX_ELEMENTS

    chunk, asked_so_far = 0, 0
    following: tuple[int, _Asked, Outcome[list[bytes]]] | None = None
    try:
        while chunk < len(chunks) or in_flight is not None:
            following = None
            if in_flight is not None and (
                not workers.parallel or (planner.use is not None and recovering(planner.use))
            ):
                # In this thread nothing overlaps: check a request before asking the next.
                # After a round that lost answers, each request waits for the one before
                # to be checked, so that the window grows as docs/crypto.md says.
                previous, in_flight = in_flight, None
                settle(*previous)
            if chunk < len(chunks):
                if len(pendings) == chunk:
                    pendings.append(blinding.result())
                    evaluated.append([])
                    if chunk + 1 < len(chunks):
                        blinding = workers.start_later(domain, chunks[chunk + 1])
                blinded = pendings[chunk].blinded_elements
                asked = _ask(
                    keys,
                    directory,
                    epoch,
                    blinded[asked_so_far:],
                    relay,
                    planner,
                    now,
                    request_ids,
                    {},
                )
                combined = workers.combine_later(
                    epoch, asked.responding_set, asked.asked, asked.answers
                )
                following = (chunk, asked, combined)
                asked_so_far += len(asked.asked)
                if asked_so_far == len(blinded):
                    chunk, asked_so_far = chunk + 1, 0
            if in_flight is not None:
                settle(*in_flight)
            in_flight = following
    except NotEnoughHolders as error:
        if in_flight is not None and following is None:
            # The holders answered the request before this one: keep what it gave.
            with contextlib.suppress(NotEnoughHolders):
                settle(*in_flight)
        if not finishing and not any(evaluated):
            raise
        # The holders counted what they evaluated: keep those tokens, not only whole chunks.
        partial = len(finishing)
        if partial < len(evaluated) and evaluated[partial]:
            finishing.append(
                workers.finish_later(
                    _first(pendings[partial], len(evaluated[partial])), evaluated[partial]
                )
            )
        result = [t for f in finishing for t in f.result()]
        logger.warning(
            "%d of %d identifiers tokenised: %s", len(result), len(identifiers), error.message
        )
        return result
    return [t for f in finishing for t in f.result()]


def _first(pending: tokens.PendingTokens, count: int) -> tokens.PendingTokens:
    """The first ``count`` identifiers of a blinded batch."""
    return dataclasses.replace(
        pending,
        types=pending.types[:count],
        inputs=pending.inputs[:count],
        blinds=pending.blinds[:count],
        blinded_elements=pending.blinded_elements[:count],
    )


@dataclass(frozen=True, slots=True)
class _Asked:
    """One request a responding set answered, its proofs still to be checked."""

    responding_set: tuple[int, ...]
    asked: Sequence[bytes]
    answers: Mapping[int, PartialEvaluation]
    request_id: bytes
    problems: dict[int, str]
    losses: int  # DailyUse.losses when it was asked


def _evaluate(
    keys: PartyKeys,
    directory: Directory,
    epoch: KeyEpoch,
    blinded: Sequence[bytes],
    relay: Relay,
    planner: HolderPlanner,
    now: datetime,
    request_ids: Callable[[], bytes],
    workers: Arithmetic = IN_PROCESS,
) -> list[bytes]:
    """Evaluate the first elements of ``blinded``, as many as the planner asks of one set.

    Asks sets of holders until one answers correctly; each round excludes at
    least one holder or learns that one has less quota left than asked.
    """
    problems: dict[int, str] = {}  # why each holder left out in this evaluation was left out
    while True:
        asked = _ask(keys, directory, epoch, blinded, relay, planner, now, request_ids, problems)
        checked = _check(
            asked,
            planner,
            workers.combine_later(epoch, asked.responding_set, asked.asked, asked.answers),
        )
        if checked is not None:
            return checked


def _ask(
    keys: PartyKeys,
    directory: Directory,
    epoch: KeyEpoch,
    blinded: Sequence[bytes],
    relay: Relay,
    planner: HolderPlanner,
    now: datetime,
    request_ids: Callable[[], bytes],
    problems: dict[int, str],
) -> _Asked:
    """Ask sets of holders for the first elements of ``blinded`` until one set answers
    them all (its proofs unchecked); leave out each holder that refuses, fails a check or
    stays silent, and say in ``problems`` why."""
    day = now.astimezone(UTC).date()
    while True:
        try:
            responding_set, count = planner.plan(len(blinded), day=day)
        except NotEnoughHolders as error:
            if not problems:
                raise
            why = "; ".join(f"holder {i}: {what}" for i, what in sorted(problems.items()))
            raise NotEnoughHolders(f"{error.message} ({why})", field=error.field) from None
        asked = blinded[:count]
        request_id = request_ids()
        requests = build_requests(
            keys,
            epoch.covenant_id,
            epoch,
            responding_set,
            asked,
            request_id=request_id,
            now=now,
        )
        replies = read_replies(
            directory,
            epoch,
            responding_set,
            asked,
            request_id,
            _relay_and_resend(relay, requests, request_id),
            requester=keys.party,
        )
        for index, refusal in sorted(replies.refusals.items()):
            logger.warning(
                "key holder %d refused request %s: %s (%s)",
                index,
                request_id.hex(),
                refusal.reason.name,
                refusal.message,
            )
        for index, what in sorted(replies.faulty.items()):
            logger.warning(
                "key holder %d is faulty on request %s: %s", index, request_id.hex(), what
            )
        if replies.missing:
            logger.warning(
                "key holder(s) %s did not answer request %s",
                sorted(replies.missing),
                request_id.hex(),
            )
        unusable = set(replies.unusable)
        if planner.use is not None:
            # Holders count what they answered even when the set as a whole failed.
            for index in replies.answers:
                if index not in replies.remaining:
                    planner.use.spend(index, count, day)
            for index, left in replies.remaining.items():
                planner.use.learn(index, left, day)
            unusable -= {
                i
                for i, r in replies.refusals.items()
                if r.reason is RefusalReason.QUOTA_EXCEEDED
                and r.remaining is not None
                and r.remaining < count
            }  # it has less left than asked: ask it again for less
        problems.update({i: f"refused, {r.reason.name}" for i, r in replies.refusals.items()})
        problems.update({i: f"faulty, {what}" for i, what in replies.faulty.items()})
        problems.update({i: "unreachable" for i in replies.missing})
        if replies.unusable:
            if planner.use is not None and (replies.answers or replies.missing or replies.faulty):
                planner.use.lost()  # holders may have counted what never became a token
            planner.exclude(unusable)
            continue
        losses = planner.use.losses if planner.use is not None else 0
        planner.advance()  # the next request starts at the next seat
        return _Asked(responding_set, asked, replies.answers, request_id, problems, losses)


def _check(
    asked: _Asked, planner: HolderPlanner, combined: Outcome[list[bytes]]
) -> list[bytes] | None:
    """The combined evaluations of an answered request, or None when a holder proved a
    wrong one: it is left out, and the elements must be asked again."""
    try:
        evaluated = combined.result()
    except FaultyHolders as faulty:
        logger.warning(
            "key holder(s) %s proved wrong evaluations for request %s",
            sorted(faulty.indices),
            asked.request_id.hex(),
        )
        asked.problems.update({i: "faulty, wrong evaluation proof" for i in faulty.indices})
        if planner.use is not None:
            planner.use.lost()
        planner.exclude(faulty.indices)
        return None
    if planner.use is not None and planner.use.losses == asked.losses:
        planner.use.answered(len(asked.asked))
    return evaluated


def _relay_and_resend(
    relay: Relay, requests: Mapping[int, bytes], request_id: bytes
) -> dict[int, bytes]:
    """Relay ``requests``; send the same signed bytes again, up to ``RESENDS`` times, to
    the holders whose reply did not come back.

    A holder that answered already answers the very same request again without
    counting it (``holder.KeyHolder``); one that never got it answers it once.
    So a broker that drops an answer now and then costs the party nothing; a
    new request id, which every holder of the set counts again, is used only
    once a holder stayed silent through every resend.
    """
    replies = {i: r for i, r in relay(dict(requests)).items() if i in requests}
    for _ in range(RESENDS):
        silent = {i: r for i, r in requests.items() if i not in replies}
        if not silent:
            break
        logger.info(
            "key holder(s) %s did not answer request %s: sending it again",
            sorted(silent),
            request_id.hex(),
        )
        replies.update({i: r for i, r in relay(silent).items() if i in silent})
    return replies
