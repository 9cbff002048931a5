"""Covenant timestamps: the short-lived, signed word that a covenant version is current.

The broker is the only channel to the nodes, so it can always withhold a new
covenant version (one that removes a party, say). What it must not be able to
do is keep the nodes acting on the old version for long without anyone
noticing. TUF's timestamp role answers this, and so does this module: the
covenant names a *timestamp key* (``[signing] timestamp_ed25519``, held by an
administrator or a job of theirs, never by the broker's operator) and a
*freshness period* (``signing.freshness_seconds``). A **covenant timestamp**
is a ``Signed`` ``CovenantTimestamp`` (context ``covenant-timestamp``, signer
``timestamp``) over the covenant id, a version, the SHA-256 of that version's
canonical bytes, when it was issued and when it expires — at most the
freshness period later. The timestamp job issues one again before the last
expires (hourly, from cron); the broker relays it and cannot make one.

:class:`FreshnessState` holds the newest timestamp a party verified and
decides, with ``now`` from the caller and no I/O:

* :meth:`~FreshnessState.observe` — what a received timestamp means, given
  the covenant held (:class:`Observed`): it names a *newer* version
  (``ANNOUNCES``: fetch that version and verify it as any new version, then
  observe the timestamp again — its signature can only be checked with the
  key of the version it names), an *older* one (``OLDER``: ignored), or the
  version held: then, in this order, each failure raising
  :class:`~samenloop.policies.errors.TimestampRejected` with its reason,

  =========================================================  =========================
  rule                                                       else
  =========================================================  =========================
  a ``Signed`` of context ``covenant-timestamp`` by signer
  ``timestamp`` around a well-formed ``CovenantTimestamp``    ``timestamp.malformed``
  for the covenant held                                      ``timestamp.wrong_covenant``
  signed with the held version's timestamp key               ``timestamp.bad_signature``
  over the held version's bytes (SHA-256)                    ``timestamp.wrong_digest``
  issued_at < expires_at <= issued_at + freshness_seconds     ``timestamp.too_long``
  issued_at at most LIMITS_MAX_CLOCK_SKEW_SECONDS ahead      ``timestamp.issued_in_future``
  =========================================================  =========================

  and it becomes the newest (``NEWER``) if it was issued after the newest
  held for that version, else it is a repeat (``KNOWN``). An expired one is
  kept too if it is the newest: it then says *when* the party went stale.
* :meth:`~FreshnessState.check` — whether the party is **fresh**: it holds a
  timestamp for exactly the version it holds (same bytes) that expires after
  ``now``. While it is not (stale), a node seals and releases nothing new
  (:meth:`~FreshnessState.require` raises
  :class:`~samenloop.policies.errors.CovenantStale`).

The bound this gives: a broker operator that withholds a version keeps the
nodes on the old one for at most the freshness period after the last
timestamp it passed on; then they stop and say why. An operator that also
holds the timestamp key can keep them there until the old version's
``valid_until``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from google.protobuf.message import DecodeError

from samenloop.policies import crypto
from samenloop.policies.covenant import Covenant, check_id
from samenloop.policies.crypto import SignatureContext
from samenloop.policies.errors import (
    CovenantStale,
    InvalidInput,
    InvalidSignature,
    MessageTooLarge,
    TimestampRejected,
)
from samenloop.policies.times import received_time
from samenloop.v1 import common_pb2

__all__ = [
    "TIMESTAMP_SIGNER",
    "CovenantTimestamp",
    "Freshness",
    "FreshnessState",
    "Observed",
    "covenant_digest",
    "issue_timestamp",
    "verify_current",
    "verify_timestamp",
]

#: ``Signed.signer`` of every covenant timestamp: the covenant's timestamp role.
TIMESTAMP_SIGNER: Final = "timestamp"
#: The file form's ``kind`` (``covenant timestamp --out``; the broker's first timestamp).
FILE_KIND: Final = "samenloop.covenant-timestamp.v1"
MAX_CLOCK_SKEW: Final = timedelta(seconds=common_pb2.LIMITS_MAX_CLOCK_SKEW_SECONDS)
DIGEST_BYTES: Final = 32
#: A serialized timestamp is about 150 bytes; anything much larger is not one.
MAX_SIGNED_BYTES: Final = 1024
FIELD: Final = "covenant_timestamp"


def covenant_digest(body: bytes) -> bytes:
    """The SHA-256 of a covenant version's canonical bytes, as a timestamp names it."""
    return crypto.digest(body)


def _rejected(reason: str, message: str, field: str) -> TimestampRejected:
    return TimestampRejected(message, field=field, reason=f"timestamp.{reason}")


@dataclass(frozen=True, slots=True)
class CovenantTimestamp:
    """A covenant timestamp, parsed (:meth:`parse`) but not yet verified, with the exact
    ``Signed`` bytes it came in (stored and handed on unchanged)."""

    covenant_id: str
    version: int
    covenant_sha256: bytes
    issued_at: datetime
    expires_at: datetime
    signed: bytes

    @classmethod
    def parse(cls, message: common_pb2.Signed | bytes, *, field: str = FIELD) -> CovenantTimestamp:
        """The timestamp in ``message``; ``TimestampRejected`` (``timestamp.malformed``,
        naming ``field``) if it is not one. Checks the form only, not the signature."""
        if isinstance(message, bytes):
            if len(message) > MAX_SIGNED_BYTES:
                raise MessageTooLarge(
                    f"a covenant timestamp is at most {MAX_SIGNED_BYTES} bytes", field=field
                )
            try:
                message = common_pb2.Signed.FromString(message)
            except DecodeError:
                raise _rejected("malformed", "not a signed message", field) from None
        signed = message.SerializeToString()
        if len(signed) > MAX_SIGNED_BYTES:
            raise _rejected("malformed", f"at most {MAX_SIGNED_BYTES} bytes", field)
        if message.context != SignatureContext.COVENANT_TIMESTAMP.value:
            raise _rejected("malformed", "not a covenant timestamp", f"{field}.context")
        if message.signer != TIMESTAMP_SIGNER:
            raise _rejected(
                "malformed",
                f"a covenant timestamp's signer is {TIMESTAMP_SIGNER!r}",
                f"{field}.signer",
            )
        try:
            body = common_pb2.CovenantTimestamp.FromString(message.body)
        except DecodeError:
            raise _rejected("malformed", "not a CovenantTimestamp", f"{field}.body") from None
        try:
            check_id(body.covenant_id, field=f"{field}.covenant_id")
            issued_at = received_time(body.issued_at, field=f"{field}.issued_at")
            expires_at = received_time(body.expires_at, field=f"{field}.expires_at")
        except InvalidInput as error:
            raise _rejected("malformed", error.message, error.field or field) from error
        if body.version < 1:
            raise _rejected("malformed", "a version is at least 1", f"{field}.version")
        if len(body.covenant_sha256) != DIGEST_BYTES:
            raise _rejected(
                "malformed", f"must be {DIGEST_BYTES} bytes", f"{field}.covenant_sha256"
            )
        return cls(
            covenant_id=body.covenant_id,
            version=body.version,
            covenant_sha256=bytes(body.covenant_sha256),
            issued_at=issued_at,
            expires_at=expires_at,
            signed=signed,
        )

    def to_proto(self) -> common_pb2.Signed:
        return common_pb2.Signed.FromString(self.signed)

    def newer_than(self, other: CovenantTimestamp | None) -> bool:
        """Whether this one supersedes ``other``: a higher version, or the same version
        issued later."""
        if other is None:
            return True
        return (self.version, self.issued_at) > (other.version, other.issued_at)

    # The file form: what ``covenant timestamp --out`` writes and the broker reads at start.

    def to_json(self) -> bytes:
        doc = {
            "kind": FILE_KIND,
            "covenant_id": self.covenant_id,
            "version": self.version,
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "signed": crypto.b64encode(self.signed),
        }
        return json.dumps(doc, indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> CovenantTimestamp:
        """Parse the file form; only its ``signed`` bytes count (the rest is for people)."""
        try:
            doc: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidInput(f"{source} is not JSON", field=source) from error
        if not isinstance(doc, dict) or doc.get("kind") != FILE_KIND:
            raise InvalidInput(f"{source} is not a covenant timestamp ({FILE_KIND})", field=source)
        try:
            signed = crypto.b64decode(doc.get("signed"))
        except ValueError as error:
            raise InvalidInput("must be standard base64", field=f"{source}: signed") from error
        return cls.parse(signed, field=f"{source}: signed")


def issue_timestamp(
    signing_key: crypto.SigningKey,
    covenant: Covenant,
    body: bytes,
    *,
    now: datetime,
    lifetime: timedelta | None = None,
) -> CovenantTimestamp:
    """Sign a timestamp for ``covenant`` (whose canonical bytes are ``body``), issued at
    ``now`` and expiring ``lifetime`` later (the covenant's freshness period unless
    shorter). ``InvalidInput`` naming ``key`` if the key is not the covenant's timestamp
    key, ``lifetime`` if it is not in (0, freshness period]."""
    if crypto.signing_public_key(signing_key) != covenant.signing.timestamp_ed25519:
        raise InvalidInput(
            f"this key is not the timestamp key of covenant {covenant.id} version "
            f"{covenant.version}",
            field="key",
        )
    period = timedelta(seconds=covenant.signing.freshness_seconds)
    lifetime = period if lifetime is None else lifetime
    if not timedelta(0) < lifetime <= period:
        raise InvalidInput(
            f"must be more than 0 and at most the covenant's freshness period "
            f"({covenant.signing.freshness_seconds} s)",
            field="lifetime",
        )
    message = common_pb2.CovenantTimestamp(
        covenant_id=covenant.id, version=covenant.version, covenant_sha256=covenant_digest(body)
    )
    message.issued_at.FromDatetime(now)
    message.expires_at.FromDatetime(now + lifetime)
    encoded = message.SerializeToString()
    signed = common_pb2.Signed(
        body=encoded,
        signer=TIMESTAMP_SIGNER,
        context=SignatureContext.COVENANT_TIMESTAMP.value,
        signature=crypto.sign(signing_key, SignatureContext.COVENANT_TIMESTAMP, encoded),
    )
    return CovenantTimestamp.parse(signed)


def verify_timestamp(
    timestamp: CovenantTimestamp,
    covenant: Covenant,
    body: bytes,
    *,
    now: datetime,
    field: str = FIELD,
) -> None:
    """Check a timestamp of the version held (``covenant``, canonical bytes ``body``): the
    rules of the module's table after the version check. Expiry is not checked here."""
    if timestamp.covenant_id != covenant.id:
        raise _rejected(
            "wrong_covenant", f"a timestamp of covenant {timestamp.covenant_id!r}", field
        )
    if timestamp.version != covenant.version:
        raise _rejected(
            "wrong_version",
            f"a timestamp of version {timestamp.version}, not {covenant.version}",
            field,
        )
    signed = common_pb2.Signed.FromString(timestamp.signed)
    try:
        crypto.verify(
            covenant.signing.timestamp_ed25519,
            SignatureContext.COVENANT_TIMESTAMP,
            signed.body,
            signed.signature,
        )
    except InvalidSignature as error:
        raise _rejected(
            "bad_signature",
            f"not signed with the timestamp key of version {covenant.version}",
            f"{field}.signature",
        ) from error
    if not crypto.equal(timestamp.covenant_sha256, covenant_digest(body)):
        raise _rejected(
            "wrong_digest",
            f"names other bytes than version {covenant.version}'s",
            f"{field}.covenant_sha256",
        )
    period = timedelta(seconds=covenant.signing.freshness_seconds)
    if not timestamp.issued_at < timestamp.expires_at <= timestamp.issued_at + period:
        raise _rejected(
            "too_long",
            f"must expire after it is issued and at most the freshness period "
            f"({covenant.signing.freshness_seconds} s) later",
            f"{field}.expires_at",
        )
    if timestamp.issued_at > now + MAX_CLOCK_SKEW:
        raise _rejected(
            "issued_in_future", "issued in the future: check the clocks", f"{field}.issued_at"
        )


def verify_current(
    timestamp: CovenantTimestamp,
    covenant: Covenant,
    body: bytes,
    *,
    now: datetime,
    field: str = FIELD,
) -> None:
    """What the broker checks before it takes a timestamp to hand out: for exactly the
    version it holds (``timestamp.unknown_version`` for a newer one: publish that version
    first; ``timestamp.older_version``), :func:`verify_timestamp`'s rules, and not
    expired (``timestamp.expired``)."""
    if timestamp.covenant_id == covenant.id and timestamp.version > covenant.version:
        raise _rejected(
            "unknown_version",
            f"this broker holds version {covenant.version}: publish version "
            f"{timestamp.version} first",
            f"{field}.version",
        )
    if timestamp.covenant_id == covenant.id and timestamp.version < covenant.version:
        raise _rejected(
            "older_version",
            f"version {timestamp.version} is not the current version {covenant.version}",
            f"{field}.version",
        )
    verify_timestamp(timestamp, covenant, body, now=now, field=field)
    if now >= timestamp.expires_at:
        raise _rejected(
            "expired", f"expired at {timestamp.expires_at.isoformat()}", f"{field}.expires_at"
        )


class Observed(enum.Enum):
    """What a received timestamp meant (:meth:`FreshnessState.observe`)."""

    #: Verified, and now the newest held (it may have expired already).
    NEWER = "newer"
    #: Verified, but not newer than the newest held: a repeat.
    KNOWN = "known"
    #: For an older version than the one held: ignored.
    OLDER = "older"
    #: For a newer version than the one held: fetch that version, then observe it again.
    ANNOUNCES = "announces"


@dataclass(frozen=True, slots=True)
class Freshness:
    """Whether a party is fresh now: ``until`` is when the newest timestamp for the version
    held expires (None if it holds none); ``reason`` says why it is stale (empty if not)."""

    fresh: bool
    version: int
    until: datetime | None
    reason: str


class FreshnessState:
    """The newest covenant timestamp a party verified, and whether it is fresh. No I/O."""

    def __init__(self) -> None:
        self._newest: CovenantTimestamp | None = None

    @property
    def newest(self) -> CovenantTimestamp | None:
        return self._newest

    def observe(
        self, timestamp: CovenantTimestamp, covenant: Covenant, body: bytes, *, now: datetime
    ) -> Observed:
        """Decide on a received timestamp, given the covenant held and its canonical bytes
        (rules in the module's docstring); ``TimestampRejected`` if it fails one."""
        if timestamp.covenant_id != covenant.id:
            raise _rejected(
                "wrong_covenant",
                f"a timestamp of covenant {timestamp.covenant_id!r}, not {covenant.id!r}",
                FIELD,
            )
        if timestamp.version > covenant.version:
            return Observed.ANNOUNCES
        if timestamp.version < covenant.version:
            return Observed.OLDER
        verify_timestamp(timestamp, covenant, body, now=now)
        if not timestamp.newer_than(self._newest):
            return Observed.KNOWN
        self._newest = timestamp
        return Observed.NEWER

    def check(self, covenant: Covenant, body: bytes, *, now: datetime) -> Freshness:
        """Whether an unexpired timestamp vouches for exactly the version held now."""
        newest = self._newest
        if (
            newest is None
            or newest.version != covenant.version
            or not crypto.equal(newest.covenant_sha256, covenant_digest(body))
        ):
            return Freshness(
                False,
                covenant.version,
                None,
                f"no covenant timestamp for version {covenant.version} has arrived: nothing "
                "is sealed or released until the broker passes one on",
            )
        if now >= newest.expires_at:
            return Freshness(
                False,
                covenant.version,
                newest.expires_at,
                f"the covenant timestamp for version {covenant.version} expired at "
                f"{newest.expires_at.isoformat()} and the broker passed on no newer one "
                "(a newer covenant version may be withheld): nothing is sealed or released "
                "until one arrives",
            )
        return Freshness(True, covenant.version, newest.expires_at, "")

    def require(self, covenant: Covenant, body: bytes, *, now: datetime) -> None:
        """``CovenantStale`` (with the reason) unless :meth:`check` says fresh."""
        freshness = self.check(covenant, body, now=now)
        if not freshness.fresh:
            raise CovenantStale(freshness.reason, field="covenant")
