"""The one error hierarchy of Samenloop.

Every error names the field it is about (where there is one) and carries a
status hint: the gRPC status code, by name, that the single server
interceptor (:mod:`samenloop.policies.rpc`) sends, and from which the single
CLI handler derives its exit code. This module is sans-IO: it imports neither
grpc nor a database driver, so the protocol core can raise these errors freely.

``PeerError`` subclasses mean the other side sent something wrong (bad input,
bad signature, replay); ``LocalError`` subclasses mean this side cannot do what
was asked (configuration, unavailable peer, internal fault).
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Status(enum.Enum):
    """gRPC status codes, by name, that our errors map to."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class SamenloopError(Exception):
    """Base of every error Samenloop raises on purpose.

    ``field`` is the dotted name of the offending input (``"identifier.value"``,
    ``"batch.tokens[3]"``) or ``None`` when the error is not about one field.
    ``reason`` is a short machine-readable code (``"bsn.check_digit"``); the
    message is for people.
    """

    status: ClassVar[Status] = Status.INTERNAL
    default_reason: ClassVar[str] = "error"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason or self.default_reason

    def __str__(self) -> str:
        if self.field:
            return f"{self.field}: {self.message}"
        return self.message


class PeerError(SamenloopError):
    """The other side (a caller, a peer node, a file a user gave us) is at fault."""

    status = Status.INVALID_ARGUMENT
    default_reason = "invalid"


class LocalError(SamenloopError):
    """This side cannot do what was asked; the caller did nothing wrong."""

    status = Status.INTERNAL
    default_reason = "internal"


# --- the peer's fault -------------------------------------------------------


class InvalidInput(PeerError):
    """A value does not have the form the protocol requires."""

    default_reason = "invalid_input"


class InvalidIdentifier(InvalidInput):
    """An identifier fails one of the rules of its type; ``reason`` names the rule."""

    default_reason = "identifier.invalid"


class UnknownType(InvalidInput):
    """An enum-like value (identifier type, message kind) is not one we know."""

    default_reason = "unknown_type"


class MessageTooLarge(PeerError):
    """A batch or envelope exceeds the protocol's size limits."""

    status = Status.RESOURCE_EXHAUSTED
    default_reason = "too_large"


class InvalidSignature(PeerError):
    """A signature does not verify. Deliberately says nothing about why."""

    status = Status.UNAUTHENTICATED
    default_reason = "signature.invalid"


class DecryptionFailed(PeerError):
    """A sealed message cannot be opened. Deliberately says nothing about why."""

    status = Status.INVALID_ARGUMENT
    default_reason = "decryption.failed"


class InvalidProof(PeerError):
    """A key holder's DLEQ proof does not verify: its partial evaluation is wrong."""

    status = Status.INVALID_ARGUMENT
    default_reason = "oprf.proof_invalid"


class Replay(PeerError):
    """A message was seen before (same nonce or request id)."""

    status = Status.ALREADY_EXISTS
    default_reason = "replay"


class NotAllowed(PeerError):
    """The covenant does not allow this party to do this."""

    status = Status.PERMISSION_DENIED
    default_reason = "not_allowed"


class NotFound(PeerError):
    """The thing asked for does not exist (or is not visible to the caller)."""

    status = Status.NOT_FOUND
    default_reason = "not_found"


class QuotaExceeded(PeerError):
    """The caller used up a quota that the covenant sets."""

    status = Status.RESOURCE_EXHAUSTED
    default_reason = "quota"


class CovenantRejected(PeerError):
    """A covenant version is not accepted; ``reason`` says why (``covenant.rollback``,
    ``covenant.expired``, ``covenant.bad_signature``, ``covenant.under_signed``...)."""

    status = Status.FAILED_PRECONDITION
    default_reason = "covenant.rejected"


class TimestampRejected(PeerError):
    """A covenant timestamp is not accepted; ``reason`` says why (``timestamp.bad_signature``,
    ``timestamp.wrong_digest``, ``timestamp.expired``...)."""

    status = Status.FAILED_PRECONDITION
    default_reason = "timestamp.rejected"


class AuditMismatch(PeerError):
    """An audit log fails verification: ``seq`` names the first entry altered or missing.

    Raised for a log (or an export of one) that was changed after the fact: the
    data is refused, as bad input is; ``seq`` is ``None`` when no entry can be named.
    """

    status = Status.INVALID_ARGUMENT
    default_reason = "audit.mismatch"

    def __init__(
        self,
        message: str,
        *,
        seq: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(message, field=field, reason=reason)
        self.seq = seq


# --- our own fault or situation --------------------------------------------


class ConfigurationError(LocalError):
    """Local configuration (a file, a key, a setting) is missing or wrong."""

    status = Status.FAILED_PRECONDITION
    default_reason = "config"


class CovenantStale(LocalError):
    """This node holds no unexpired covenant timestamp for its covenant version, so it
    cannot tell that the membership is current: it seals and releases nothing new until
    a fresh timestamp arrives (``samenloop.policies.freshness``)."""

    status = Status.FAILED_PRECONDITION
    default_reason = "covenant.stale"


class NotEnoughHolders(LocalError):
    """Fewer honest key holders answered than the OPRF threshold needs."""

    status = Status.UNAVAILABLE
    default_reason = "oprf.not_enough_holders"


class NotInThisVersion(LocalError):
    """A part of the protocol that this version of the software does not provide yet."""

    status = Status.UNIMPLEMENTED
    default_reason = "unimplemented"


class Unavailable(LocalError):
    """A peer or service we need cannot be reached now; try again later."""

    status = Status.UNAVAILABLE
    default_reason = "unavailable"
