"""The key-holder role: answer signed OPRF evaluation requests with a share of the key.

A key holder is a node that the covenant names as one of the holders of an
OPRF key epoch. Requests reach it through the broker, which only relays, so
the holder trusts nothing the broker says: ``KeyHolder.handle`` takes the
signed bytes as they arrived and checks, in this order,

1. the message is a ``Signed`` with a signer (otherwise ``InvalidInput``: no
   requester can be told, so the transport answers with a gRPC status),
2. its context is ``oprf-request``,                        else BAD_SIGNATURE
3. the signer is a party of the covenant,                  else UNKNOWN_PARTY
4. the signature verifies with this holder as audience,    else BAD_SIGNATURE
5. the body is an ``EvaluationRequest`` with a 16-byte id, else MALFORMED_REQUEST
6. its requester is the signer,                            else BAD_SIGNATURE
   and the holder is fresh (an unexpired covenant timestamp
   vouches for the version it holds: ``stale``),           else COVENANT_STALE
7. covenant and key epoch are this share's, in force now,  else UNKNOWN_EPOCH
8. it is for this holder's index, with a valid responding
   set of ``t`` known holders that contains it,            else WRONG_HOLDER
9. 1..LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST valid
   non-identity ristretto255 elements,                      else INVALID_ELEMENT
10. issued_at at most LIMITS_MAX_REQUEST_AGE_SECONDS old and
    at most LIMITS_MAX_CLOCK_SKEW_SECONDS in the future,     else STALE
11. (requester, request id, holder index) not yet answered, else REPLAY
    — unless it is the very request answered before (the same signed body) and
    was answered again at most ``RESENDS`` times: then it is answered again,
    uncounted,
12. the requester's share of its daily cap at this holder,  else QUOTA_EXCEEDED

and answers with its partial evaluation and DLEQ proof, or with a refusal,
always as a ``Signed`` ``EvaluationResponse`` (context ``oprf-response``) for
the requester as audience. Only answered requests are counted.

Answering a request again costs no quota and tells nobody anything new: the
requester (and the broker, which relayed the first answer) already had that
partial evaluation; only the proof's randomness is fresh. It is what lets a
node whose answer the broker dropped ask again under the same request id
(``evaluation.RESENDS`` times) instead of under a new one that would count
again.

Only a verified signer is named. A refusal before the signature verified
(steps 2-4) is counted for ``UNVERIFIED``, never under the name the bytes
claim; refusals and answers given again are not recorded one by one but
summed (``HolderEvent``, for a ``Tally``), so that a flood of requests costs
the holder a bounded number of audit entries and writes.

The quota is the covenant's ``oprf_evaluations_per_day`` (C) per party across
all holders: holders cannot see each other's counts, so each allows a party
only its share (``rules.oprf_allowance``): floor(C*t/n) to a party without a
seat, floor(C*(t-1)/(n-1)) to another holder, and C to its own party. Whatever
sets a party asks, and even if it computes its own share locally, it gets at
most C tokens a day (docs/crypto.md). Evaluations and quota refusals tell the
requester what remains of its share today, so that an honest node spreads its
requests (``threshold.HolderPlanner``).

Sans-IO and in memory: the node makes it durable. ``answer`` decides and
returns a ``HolderReply`` with what to record (the count, and the answered
request for the replay cache until it can no longer be fresh, with the digest
of its body); the node commits that in one transaction before it sends the
reply, and hands the counts and the replay cache back at start
(``used_today``, ``answered``), so neither a restart nor a crash resets the
quota or lets a request be counted twice.
If the record fails, ``withdraw`` undoes the admission. Nothing here logs a
blinded element, an evaluation or the share.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Final

from google.protobuf.message import DecodeError

from samenloop.node.tokens import oprf, threshold
from samenloop.node.tokens.evaluation import (
    MAX_ELEMENTS,
    REQUEST_ID_BYTES,
    RESENDS,
    Directory,
    RefusalReason,
    check_responding_set,
)
from samenloop.node.tokens.threshold import KeyEpoch, Share
from samenloop.policies import crypto, rules
from samenloop.policies.covenant import Covenant
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    ConfigurationError,
    InvalidInput,
    InvalidSignature,
    LocalError,
    NotAllowed,
    QuotaExceeded,
)
from samenloop.v1 import common_pb2, keyholder_pb2

logger = logging.getLogger(__name__)

MAX_REQUEST_AGE = timedelta(seconds=common_pb2.LIMITS_MAX_REQUEST_AGE_SECONDS)
MAX_CLOCK_SKEW = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
MAX_PARTY_ID_BYTES: int = common_pb2.LIMITS_MAX_PARTY_ID_BYTES
#: How long an answered request is remembered after it was issued: while it could still
#: pass the freshness check, plus the clock skew in case this holder's clock is set back.
REPLAY_WINDOW = MAX_REQUEST_AGE + MAX_CLOCK_SKEW

#: Evaluated elements a requesting party may have per UTC day, unless configured otherwise.
DEFAULT_DAILY_QUOTA = 1_000_000
#: Who a refusal is counted for when the signature did not verify: never the name the bytes
#: claim. Not a party id (those are lower case), and a valid audit actor.
UNVERIFIED: Final = "Unverified"
#: The outcome of an identical request answered again, uncounted.
ANSWERED_AGAIN: Final = "ANSWERED_AGAIN"


@dataclass(frozen=True, slots=True)
class AnsweredRequest:
    """A request this holder answered: not counted again until ``keep_until``.

    ``digest`` (of the signed body) recognises the very request answered, which
    is answered again; any other request under its key is a REPLAY. Without it
    (an entry stored before digests were kept) every repeat is a REPLAY.
    """

    requester: str
    request_id: bytes
    holder_index: int
    keep_until: datetime
    digest: bytes | None = None

    @property
    def key(self) -> tuple[str, bytes, int]:
        return (self.requester, self.request_id, self.holder_index)


@dataclass(frozen=True, slots=True, order=True)
class HolderEvent:
    """What a holder sums rather than records one by one: a refusal (``outcome`` is the
    reason's name) or an identical request answered again (``ANSWERED_AGAIN``), for a
    verified ``requester`` or ``UNVERIFIED``, on a UTC ``day``. The set of these is
    bounded: parties of the covenant (and one more) times outcomes, per day."""

    requester: str
    outcome: str
    day: date


@dataclass(frozen=True, slots=True, repr=False)
class HolderReply:
    """What ``KeyHolder.answer`` decided, and what the node records before it sends ``reply``.

    ``requester`` is the verified signer, or ``UNVERIFIED``. ``elements`` is
    the number evaluated (0 for a refusal), ``refused`` the reason of a
    refusal, ``answered`` the replay-cache entry of a counted evaluation:
    count and entry go into the store in one transaction, and only then may
    ``reply`` leave, so a crash in between neither loses a count nor counts
    the request again. A refusal or an answer given again has no entry but a
    ``summed`` event, which the node adds to its tally before it sends.
    """

    reply: bytes
    requester: str
    elements: int
    refused: RefusalReason | None
    answered: AnsweredRequest | None
    summed: HolderEvent | None = None

    def __repr__(self) -> str:
        if self.refused is not None:
            outcome = self.refused.name
        elif self.answered is None:
            outcome = f"{self.elements} evaluated again"
        else:
            outcome = f"{self.elements} evaluated"
        return f"HolderReply(requester={self.requester!r}, {outcome})"


class _Refuse(Exception):
    """A check failed: refuse with this reason. Internal to ``KeyHolder.handle``."""

    def __init__(
        self, reason: RefusalReason, message: str, *, remaining: int | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.remaining = remaining
        # Whether the signature verified: only then is the signer named.
        self.verified = False
        # Known only once the signature verified and the body parsed; empty before.
        self.request_id = b""
        self.key_epoch = 0


@dataclass(frozen=True, slots=True)
class _Verified:
    """A request whose signature and fields passed every check but replay and quota."""

    requester: str
    request_id: bytes
    key_epoch: int
    responding_set: tuple[int, ...]
    blinded_elements: tuple[bytes, ...]
    issued_at: datetime
    digest: bytes


class KeyHolder:
    """One holder's seat in one key epoch, answering evaluation requests.

    ``directory`` may be the covenant, or a callable that gives the covenant
    held now (``HeldCovenant``): then parties and keys are looked up in the
    current version, and each requester's daily allowance is its share of the
    covenant's ``oprf_evaluations_per_day`` (``rules.oprf_allowance``), so an
    update takes effect at once. ``daily_quota`` sets one allowance for every
    requester instead (tests, and a plain directory; else
    ``DEFAULT_DAILY_QUOTA``). ``used_today`` (for the UTC day ``today``) and
    ``answered`` are what the node's store recorded before a restart.
    ``stale`` says why the node is stale (no unexpired covenant timestamp for
    the version it holds), None while it is fresh: the uplink sets it to its
    covenant keeper's, so that a party a withheld version removed gets no
    evaluations beyond the freshness period.
    The state (replay cache, how often each entry was answered again,
    counters) is in memory and guarded by a lock, so
    the transport may call ``handle`` from several threads; the evaluation
    itself runs outside the lock.
    """

    def __init__(
        self,
        keys: PartyKeys,
        share: Share,
        epoch: KeyEpoch,
        covenant_id: str,
        directory: Directory | Callable[[], Covenant],
        *,
        daily_quota: int | None = None,
        used_today: Mapping[str, int] | None = None,
        today: date | None = None,
        answered: Iterable[AnsweredRequest] = (),
    ) -> None:
        if epoch.covenant_id != covenant_id:
            raise ConfigurationError(
                f"key epoch belongs to covenant {epoch.covenant_id!r}, not {covenant_id!r}",
                field="covenant_id",
            )
        seat = epoch.holder(share.index)
        if seat.party != keys.party:
            raise ConfigurationError(
                f"seat {share.index} of key epoch {epoch.epoch} is {seat.party!r}'s, "
                f"not {keys.party!r}'s",
                field="share",
            )
        if not crypto.equal(share.commitment, seat.commitment):
            raise ConfigurationError("share does not match its commitment", field="share")
        if daily_quota is not None and daily_quota < 0:
            raise ConfigurationError("daily quota must not be negative", field="daily_quota")
        if used_today and today is None:
            raise ConfigurationError("counts of a day need the day", field="today")
        self._keys = keys
        self._share = share
        self._epoch = epoch
        #: Set once the covenant held no longer lists this epoch (``EpochHolders.adopt``):
        #: every request is refused UNKNOWN_EPOCH from then on.
        self.retired = False
        self._covenant_id = covenant_id
        self._directory = directory
        self._daily_quota = daily_quota
        self._seats = tuple(h.party for h in epoch.holders)
        self._lock = threading.Lock()
        # Each answered request's digest and how often it was answered again since.
        self._answered: dict[tuple[str, bytes, int], tuple[bytes | None, int]] = {}
        self._expiries: list[tuple[datetime, tuple[str, bytes, int]]] = []
        for entry in answered:
            self._remember(entry)
        # What the node's store says was already evaluated today, so that a restart
        # does not reset the quota.
        self._day: date | None = today if used_today else None
        self._used_today: dict[str, int] = dict(used_today or {})
        self._served: dict[str, int] = {}
        #: Why the node is stale, or None while it is fresh (see the class docstring).
        self.stale: Callable[[], str | None] = lambda: None
        #: What evaluates: ``threshold.evaluate_partial``, or a ``workers.Workers``' over cores.
        self.evaluate_partial: Callable[
            [Share, Sequence[bytes], Sequence[int]], threshold.PartialEvaluation
        ] = threshold.evaluate_partial

    def __repr__(self) -> str:
        return (
            f"KeyHolder(party={self._keys.party!r}, covenant={self._covenant_id!r}, "
            f"epoch={self._epoch.epoch}, index={self._share.index})"
        )

    # --- read-only state, for status and audit ---------------------------------------

    @property
    def party(self) -> str:
        return self._keys.party

    @property
    def index(self) -> int:
        return self._share.index

    @property
    def key_epoch(self) -> int:
        return self._epoch.epoch

    def _covenant(self) -> Covenant | None:
        if isinstance(self._directory, Covenant):
            return self._directory
        if callable(self._directory):
            return self._directory()
        return None

    def allowance(self, requester: str) -> int:
        """Elements this holder evaluates for ``requester`` per UTC day, as things stand now."""
        if self._daily_quota is not None:
            return self._daily_quota
        covenant = self._covenant()
        if covenant is None:
            return DEFAULT_DAILY_QUOTA
        return rules.oprf_allowance(
            covenant.policy.quotas,
            self._seats,
            self._epoch.threshold,
            requester=requester,
            holder=self._keys.party,
        )

    def _parties(self) -> Directory:
        return self._directory() if callable(self._directory) else self._directory

    @property
    def served(self) -> Mapping[str, int]:
        """Elements evaluated per requesting party since this holder started (a read-only copy)."""
        with self._lock:
            return MappingProxyType(dict(self._served))

    def used_today(self, party: str, *, now: datetime) -> int:
        """Elements evaluated for ``party`` on the UTC day of ``now``."""
        day = _utc(now).date()
        with self._lock:
            return self._used_today.get(party, 0) if day == self._day else 0

    # --- the protocol ----------------------------------------------------------------

    def handle(self, signed_request: bytes, *, now: datetime) -> bytes:
        """Answer one signed ``EvaluationRequest``: a signed evaluation or a signed refusal.

        For callers that keep nothing durable (tests, in-process holders);
        the node uses ``answer``. Raises ``InvalidInput`` only when the bytes
        name no requester to answer (not a ``Signed``, or no valid signer).
        """
        return self.answer(signed_request, now=now).reply

    def answer(self, signed_request: bytes, *, now: datetime) -> HolderReply:
        """Decide on one signed ``EvaluationRequest``: the signed reply and what to record.

        An admitted request is counted and remembered here at once (a second
        copy arriving meanwhile is a REPLAY); the caller records the returned
        count and entry durably before it sends the reply, or calls
        ``withdraw`` if it cannot. Raises ``InvalidInput`` as ``handle`` does.
        """
        now = _utc(now)
        signed = common_pb2.Signed()
        try:
            signed.ParseFromString(signed_request)
        except DecodeError as error:
            raise InvalidInput("not a signed evaluation request", field="signed_request") from error
        requester = signed.signer
        if not 0 < len(requester.encode("utf-8")) <= MAX_PARTY_ID_BYTES:
            raise InvalidInput(
                f"signer must be a party id of 1..{MAX_PARTY_ID_BYTES} bytes",
                field="signed_request.signer",
            )
        try:
            verified = self._verify(signed, now)
            remaining, again = self._admit(verified, now)
        except _Refuse as refusal:
            counted_as = requester if refusal.verified else UNVERIFIED
            logger.info(
                "refused evaluation for %r (holder %d, epoch %d): %s: %s",
                counted_as,
                self._share.index,
                self._epoch.epoch,
                refusal.reason.name,
                refusal.message,
            )
            return HolderReply(
                reply=self._refusal(requester, refusal, now),
                requester=counted_as,
                elements=0,
                refused=refusal.reason,
                answered=None,
                summed=HolderEvent(counted_as, refusal.reason.name, now.date()),
            )
        entry = AnsweredRequest(
            requester,
            verified.request_id,
            self._share.index,
            verified.issued_at + REPLAY_WINDOW,
            verified.digest,
        )
        count = len(verified.blinded_elements)
        try:
            partial = self.evaluate_partial(
                self._share, verified.blinded_elements, verified.responding_set
            )
        except BaseException:
            self._release(entry, 0 if again else count, again=again)
            raise
        logger.info(
            "evaluated %d element(s) for %r%s (holder %d, epoch %d, request %s)",
            count,
            requester,
            " again, uncounted" if again else "",
            self._share.index,
            self._epoch.epoch,
            verified.request_id.hex(),
        )
        response = self._response(requester, verified.request_id, verified.key_epoch, now)
        response.evaluation.evaluated_elements.extend(partial.evaluated_elements)
        response.evaluation.proof = partial.proof
        response.remaining_today = remaining
        return HolderReply(
            reply=self._sign(response, requester),
            requester=requester,
            elements=count,
            refused=None,
            answered=None if again else entry,
            summed=HolderEvent(requester, ANSWERED_AGAIN, now.date()) if again else None,
        )

    def admitted(self, reply: HolderReply) -> bool:
        """Whether ``reply``'s evaluation was admitted by this holder (and not withdrawn)."""
        if reply.answered is None:
            return False
        with self._lock:
            return reply.answered.key in self._answered

    def withdraw(self, reply: HolderReply) -> None:
        """Undo the admission of an evaluation whose record failed: it was never sent."""
        if reply.answered is not None:
            self._release(reply.answered, reply.elements)

    def _verify(self, signed: common_pb2.Signed, now: datetime) -> _Verified:
        self._check_signature(signed)
        try:
            return self._parse(signed, now)
        except _Refuse as refusal:
            refusal.verified = True
            raise

    def _check_signature(self, signed: common_pb2.Signed) -> None:
        """Steps 2-4: a refusal here names nobody (the signer is what the bytes claim)."""
        requester = signed.signer
        if signed.context != SignatureContext.OPRF_REQUEST.value:
            raise _Refuse(
                RefusalReason.BAD_SIGNATURE,
                f"context is {signed.context[:MAX_PARTY_ID_BYTES]!r}, not oprf-request",
            )
        directory = self._parties()
        if not directory.is_party(requester):
            raise _Refuse(RefusalReason.UNKNOWN_PARTY, "requester is not a party of the covenant")
        try:
            public = directory.public_keys(requester)
            crypto.verify(
                public.ed25519,
                SignatureContext.OPRF_REQUEST,
                signed.body,
                signed.signature,
                audience=self._keys.party,
            )
        except NotAllowed as error:
            raise _Refuse(
                RefusalReason.UNKNOWN_PARTY, "requester is not a party of the covenant"
            ) from error
        except InvalidSignature as error:
            raise _Refuse(
                RefusalReason.BAD_SIGNATURE,
                "signature does not verify for the signer with this holder as audience",
            ) from error

    def _parse(self, signed: common_pb2.Signed, now: datetime) -> _Verified:
        """Steps 5-10, on a request whose signature verified."""
        requester = signed.signer
        request = keyholder_pb2.EvaluationRequest()
        try:
            request.ParseFromString(signed.body)
        except DecodeError as error:
            raise _Refuse(
                RefusalReason.MALFORMED_REQUEST, "body is not an EvaluationRequest"
            ) from error
        if len(request.request_id) != REQUEST_ID_BYTES:
            raise _Refuse(
                RefusalReason.MALFORMED_REQUEST, f"request_id must be {REQUEST_ID_BYTES} bytes"
            )
        try:
            return self._check(requester, request, crypto.digest(signed.body), now)
        except _Refuse as refusal:
            refusal.request_id, refusal.key_epoch = request.request_id, request.key_epoch
            raise

    def _check(
        self,
        requester: str,
        request: keyholder_pb2.EvaluationRequest,
        digest: bytes,
        now: datetime,
    ) -> _Verified:
        """The checks on a request whose signature verified, in order."""
        if request.requester != requester:
            raise _Refuse(RefusalReason.BAD_SIGNATURE, "requester is not the signer")
        stale = self.stale()
        if stale is not None:
            raise _Refuse(RefusalReason.COVENANT_STALE, stale)
        if request.covenant_id != self._covenant_id:
            raise _Refuse(
                RefusalReason.UNKNOWN_EPOCH,
                f"no share for covenant {request.covenant_id[:MAX_PARTY_ID_BYTES]!r}",
            )
        if self.retired:
            raise _Refuse(
                RefusalReason.UNKNOWN_EPOCH,
                f"key epoch {self._epoch.epoch} is retired; this holder serves no epoch",
            )
        if request.key_epoch != self._epoch.epoch:
            raise _Refuse(
                RefusalReason.UNKNOWN_EPOCH,
                f"no share for key epoch {request.key_epoch}; this holder has {self._epoch.epoch}",
            )
        try:
            self._epoch.check_in_force(now)
        except NotAllowed as error:
            raise _Refuse(RefusalReason.UNKNOWN_EPOCH, error.message) from error
        if request.holder_index != self._share.index:
            raise _Refuse(
                RefusalReason.WRONG_HOLDER,
                f"request is for holder {request.holder_index}, this is holder {self._share.index}",
            )
        try:
            responding_set = check_responding_set(self._epoch, request.responding_set)
        except InvalidInput as error:
            raise _Refuse(RefusalReason.WRONG_HOLDER, error.message) from error
        if self._share.index not in responding_set:
            raise _Refuse(
                RefusalReason.WRONG_HOLDER,
                f"holder {self._share.index} is not in the responding set",
            )
        count = len(request.blinded_elements)
        if not 1 <= count <= MAX_ELEMENTS:
            raise _Refuse(
                RefusalReason.INVALID_ELEMENT,
                f"{count} blinded elements; 1..{MAX_ELEMENTS} per request",
            )
        try:
            elements = tuple(
                oprf.deserialize_element(b, field=f"blinded_elements[{j}]")
                for j, b in enumerate(request.blinded_elements)
            )
        except InvalidInput as error:
            raise _Refuse(RefusalReason.INVALID_ELEMENT, str(error)) from error
        if not request.HasField("issued_at"):
            raise _Refuse(RefusalReason.STALE, "request has no issued_at")
        try:
            issued_at = request.issued_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as error:
            raise _Refuse(RefusalReason.STALE, "issued_at is out of range") from error
        if issued_at < now - MAX_REQUEST_AGE:
            raise _Refuse(
                RefusalReason.STALE,
                f"request is {int((now - issued_at).total_seconds())} s old; "
                f"at most {int(MAX_REQUEST_AGE.total_seconds())} s",
            )
        if issued_at > now + MAX_CLOCK_SKEW:
            raise _Refuse(
                RefusalReason.STALE,
                f"request is issued {int((issued_at - now).total_seconds())} s in the future; "
                f"at most {int(MAX_CLOCK_SKEW.total_seconds())} s",
            )
        return _Verified(
            requester=requester,
            request_id=request.request_id,
            key_epoch=request.key_epoch,
            responding_set=responding_set,
            blinded_elements=elements,
            issued_at=issued_at,
            digest=digest,
        )

    def _admit(self, request: _Verified, now: datetime) -> tuple[int, bool]:
        """Replay and quota checks, and the bookkeeping of an admitted request, in one step.

        Returns what remains of the requester's allowance today after this request,
        and whether it is a request answered before, to answer again uncounted.
        """
        try:
            return self._admit_locked(request, now)
        except _Refuse as refusal:
            refusal.request_id, refusal.key_epoch = request.request_id, request.key_epoch
            refusal.verified = True
            raise

    def _admit_locked(self, request: _Verified, now: datetime) -> tuple[int, bool]:
        key = (request.requester, request.request_id, self._share.index)
        count = len(request.blinded_elements)
        day = now.date()
        allowance = self.allowance(request.requester)
        with self._lock:
            while self._expiries and self._expiries[0][0] < now:
                _, expired = heapq.heappop(self._expiries)
                self._answered.pop(expired, None)
            if day != self._day:
                self._day = day
                self._used_today = {}
            used = self._used_today.get(request.requester, 0)
            if key in self._answered:
                digest, repeats = self._answered[key]
                if digest is None or not crypto.equal(digest, request.digest) or repeats >= RESENDS:
                    raise _Refuse(RefusalReason.REPLAY, "this request was already answered")
                self._answered[key] = (digest, repeats + 1)
                return max(0, allowance - used), True
            try:
                # Used up, or this request would go past it: the quota counts elements.
                rules.check_quota(
                    used, allowance, what="OPRF evaluations", field="blinded_elements"
                )
                rules.check_quota(
                    used + count - 1, allowance, what="OPRF evaluations", field="blinded_elements"
                )
            except QuotaExceeded as error:
                resets = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
                raise _Refuse(
                    RefusalReason.QUOTA_EXCEEDED,
                    f"this holder's share of the daily OPRF quota is {allowance} evaluations "
                    f"for {request.requester}: {used} used, {count} asked; "
                    f"resets at {resets.isoformat()}",
                    remaining=max(0, allowance - used),
                ) from error
            self._remember_locked(
                AnsweredRequest(
                    request.requester,
                    request.request_id,
                    self._share.index,
                    request.issued_at + REPLAY_WINDOW,
                    request.digest,
                )
            )
            self._used_today[request.requester] = used + count
            self._served[request.requester] = self._served.get(request.requester, 0) + count
            return allowance - used - count, False

    def _remember(self, entry: AnsweredRequest) -> None:
        with self._lock:
            self._remember_locked(entry)

    def _remember_locked(self, entry: AnsweredRequest) -> None:
        if entry.key not in self._answered:
            self._answered[entry.key] = (entry.digest, 0)
            heapq.heappush(self._expiries, (entry.keep_until, entry.key))

    def _release(self, entry: AnsweredRequest, count: int, *, again: bool = False) -> None:
        """Undo ``_admit``: the request was not answered after all, and only answers count.

        Its heap entry stays and expires harmlessly; a request admitted again
        pushes a second one. A request that was to be answered again only
        gives back that repeat.
        """
        with self._lock:
            if again:
                if entry.key in self._answered:
                    digest, repeats = self._answered[entry.key]
                    self._answered[entry.key] = (digest, max(0, repeats - 1))
                return
            self._answered.pop(entry.key, None)
            used = self._used_today.get(entry.requester, 0)
            self._used_today[entry.requester] = max(0, used - count)
            self._served[entry.requester] = max(0, self._served.get(entry.requester, 0) - count)

    def _response(
        self, requester: str, request_id: bytes, key_epoch: int, now: datetime
    ) -> keyholder_pb2.EvaluationResponse:
        response = keyholder_pb2.EvaluationResponse(
            request_id=request_id,
            holder=self._keys.party,
            holder_index=self._share.index,
            key_epoch=key_epoch,
            requester=requester,
        )
        response.answered_at.FromDatetime(now)
        return response

    def _refusal(self, requester: str, refusal: _Refuse, now: datetime) -> bytes:
        response = self._response(requester, refusal.request_id, refusal.key_epoch, now)
        response.refusal.reason = keyholder_pb2.EvaluationRefusalReason.ValueType(refusal.reason)
        response.refusal.message = refusal.message
        if refusal.remaining is not None:
            response.remaining_today = refusal.remaining
        return self._sign(response, requester)

    def _sign(self, response: keyholder_pb2.EvaluationResponse, requester: str) -> bytes:
        body = response.SerializeToString()
        return common_pb2.Signed(
            body=body,
            signer=self._keys.party,
            context=SignatureContext.OPRF_RESPONSE.value,
            signature=self._keys.sign(SignatureContext.OPRF_RESPONSE, body, audience=requester),
        ).SerializeToString()


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise LocalError("the time must be timezone-aware (UTC)", field="now")
    return now.astimezone(UTC)
