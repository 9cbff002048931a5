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
7. covenant and key epoch are this share's, in force now,  else UNKNOWN_EPOCH
8. it is for this holder's index, with a valid responding
   set of ``t`` known holders that contains it,            else WRONG_HOLDER
9. 1..LIMITS_MAX_BLINDED_ELEMENTS_PER_REQUEST valid
   non-identity ristretto255 elements,                      else INVALID_ELEMENT
10. issued_at at most LIMITS_MAX_REQUEST_AGE_SECONDS old and
    at most LIMITS_MAX_CLOCK_SKEW_SECONDS in the future,     else STALE
11. (requester, request id, holder index) not yet answered, else REPLAY
12. the requester's daily quota of evaluated elements,     else QUOTA_EXCEEDED

and answers with its partial evaluation and DLEQ proof, or with a refusal,
always as a ``Signed`` ``EvaluationResponse`` (context ``oprf-response``) for
the requester as audience. Only answered requests are counted.

Sans-IO and in memory: the replay cache needs to outlive a request only by
LIMITS_MAX_REQUEST_AGE_SECONDS, and the counters are for the quota and for
status and audit. Nothing here logs a blinded element, an evaluation or the share.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType

from google.protobuf.message import DecodeError

from samenloop.node import oprf, threshold
from samenloop.node.evaluation import (
    MAX_ELEMENTS,
    REQUEST_ID_BYTES,
    Directory,
    RefusalReason,
    check_responding_set,
)
from samenloop.node.threshold import KeyEpoch, Share
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

#: Evaluated elements a requesting party may have per UTC day, unless configured otherwise.
DEFAULT_DAILY_QUOTA = 1_000_000


class _Refuse(Exception):
    """A check failed: refuse with this reason. Internal to ``KeyHolder.handle``."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
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


class KeyHolder:
    """One holder's seat in one key epoch, answering evaluation requests.

    ``daily_quota`` is the number of elements each requesting party may have
    evaluated per UTC day. ``directory`` may be a callable that gives the
    covenant held now (``HeldCovenant``): then parties and keys are looked up
    in the current version, and without an explicit ``daily_quota`` the quota
    is its ``oprf_evaluations_per_day``, so an update takes effect at once.
    The state (replay cache, counters) is in memory and guarded by a lock, so
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
        self._keys = keys
        self._share = share
        self._epoch = epoch
        self._covenant_id = covenant_id
        self._directory = directory
        self._daily_quota = daily_quota
        if daily_quota is None and not callable(directory):
            self._daily_quota = DEFAULT_DAILY_QUOTA
        self._lock = threading.Lock()
        self._answered: set[tuple[str, bytes, int]] = set()
        self._expiries: list[tuple[datetime, tuple[str, bytes, int]]] = []
        # What the node's store says was already evaluated today, so that a restart
        # does not reset the quota.
        self._day: date | None = today if used_today else None
        self._used_today: dict[str, int] = dict(used_today or {})
        self._served: dict[str, int] = {}

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

    @property
    def daily_quota(self) -> int:
        """The quota in force: the one given, else the current covenant's."""
        if self._daily_quota is not None:
            return self._daily_quota
        assert callable(self._directory)
        return self._directory().policy.quotas.oprf_evaluations_per_day

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

        Raises ``InvalidInput`` only when the bytes name no requester to answer
        (not a ``Signed``, or no valid signer).
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
            self._admit(verified, now)
        except _Refuse as refusal:
            logger.info(
                "refused evaluation for %r (holder %d, epoch %d): %s: %s",
                requester,
                self._share.index,
                self._epoch.epoch,
                refusal.reason.name,
                refusal.message,
            )
            return self._refusal(requester, refusal, now)
        try:
            partial = threshold.evaluate_partial(
                self._share, verified.blinded_elements, verified.responding_set
            )
        except BaseException:
            self._release(verified)
            raise
        logger.info(
            "evaluated %d element(s) for %r (holder %d, epoch %d, request %s)",
            len(verified.blinded_elements),
            requester,
            self._share.index,
            self._epoch.epoch,
            verified.request_id.hex(),
        )
        response = self._response(requester, verified.request_id, verified.key_epoch, now)
        response.evaluation.evaluated_elements.extend(partial.evaluated_elements)
        response.evaluation.proof = partial.proof
        return self._sign(response, requester)

    def _verify(self, signed: common_pb2.Signed, now: datetime) -> _Verified:
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
                f"signature does not verify for {requester!r} with this holder as audience",
            ) from error
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
            return self._check(requester, request, now)
        except _Refuse as refusal:
            refusal.request_id, refusal.key_epoch = request.request_id, request.key_epoch
            raise

    def _check(
        self, requester: str, request: keyholder_pb2.EvaluationRequest, now: datetime
    ) -> _Verified:
        """The checks on a request whose signature verified, in order."""
        if request.requester != requester:
            raise _Refuse(RefusalReason.BAD_SIGNATURE, "requester is not the signer")
        if request.covenant_id != self._covenant_id:
            raise _Refuse(
                RefusalReason.UNKNOWN_EPOCH,
                f"no share for covenant {request.covenant_id[:MAX_PARTY_ID_BYTES]!r}",
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
        )

    def _admit(self, request: _Verified, now: datetime) -> None:
        """Replay and quota checks, and the bookkeeping of an admitted request, in one step."""
        key = (request.requester, request.request_id, self._share.index)
        count = len(request.blinded_elements)
        day = now.date()
        try:
            self._admit_locked(request, key, count, day, now)
        except _Refuse as refusal:
            refusal.request_id, refusal.key_epoch = request.request_id, request.key_epoch
            raise

    def _admit_locked(
        self,
        request: _Verified,
        key: tuple[str, bytes, int],
        count: int,
        day: date,
        now: datetime,
    ) -> None:
        quota = self.daily_quota
        with self._lock:
            while self._expiries and self._expiries[0][0] < now:
                _, expired = heapq.heappop(self._expiries)
                self._answered.discard(expired)
            if key in self._answered:
                raise _Refuse(RefusalReason.REPLAY, "this request was already answered")
            if day != self._day:
                self._day = day
                self._used_today = {}
            used = self._used_today.get(request.requester, 0)
            try:
                # Used up, or this request would go past it: the quota counts elements.
                rules.check_quota(used, quota, what="OPRF evaluations", field="blinded_elements")
                rules.check_quota(
                    used + count - 1, quota, what="OPRF evaluations", field="blinded_elements"
                )
            except QuotaExceeded as error:
                resets = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
                raise _Refuse(
                    RefusalReason.QUOTA_EXCEEDED,
                    f"quota of {quota} evaluations per UTC day: {used} used, "
                    f"{count} asked; resets at {resets.isoformat()}",
                ) from error
            self._answered.add(key)
            heapq.heappush(self._expiries, (request.issued_at + MAX_REQUEST_AGE, key))
            self._used_today[request.requester] = used + count
            self._served[request.requester] = self._served.get(request.requester, 0) + count

    def _release(self, request: _Verified) -> None:
        """Undo ``_admit`` when the evaluation failed after all: only answers are counted."""
        count = len(request.blinded_elements)
        with self._lock:
            self._answered.discard((request.requester, request.request_id, self._share.index))
            used = self._used_today.get(request.requester, 0)
            self._used_today[request.requester] = max(0, used - count)
            self._served[request.requester] = max(0, self._served.get(request.requester, 0) - count)

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
