"""Who may call the node's local API: the holder of the node's API token.

A loopback port is open to every account on the machine, and gRPC Python does
not expose a Unix socket's peer credentials, so the node authenticates every
``NodeApi`` call by a bearer token: 32 random bytes (``secrets``), base64url,
in a 0600 file (``api_token`` in ``node.toml``, by default
``<data_dir>/api-token``) that the node makes at its first start and that only
its own account can read. The client library reads it where ``node.toml`` says
and sends it as call metadata ``authorization: Bearer <token>``.

:class:`TokenInterceptor` is the one check, before any handler runs: a call
with no token or another one gets UNAUTHENTICATED naming the metadata key, does
nothing, and is counted for the audit log (:class:`RefusedCalls`; the token
presented is never logged). The standard health service stays open: it says
only that the node serves. Failed attempts are not slowed down: guessing 256
random bits is hopeless at any rate, and a delay would hold the API's worker
threads for the node's own applications; instead the audit entries of a flood
are folded into at most one a minute, so that refused calls cannot grow the log
faster than that. The summing (:class:`Tally`) is the node's one way to audit a
flood: the key holder sums the OPRF requests it refuses the same way
(:mod:`samenloop.node.daemon.uplink`).
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Generic, NoReturn, TypeVar

import grpc
import structlog

from samenloop.policies import crypto, rpc
from samenloop.policies.audit import AuditKind
from samenloop.policies.errors import ConfigurationError, InvalidSignature
from samenloop.v1 import node_pb2

__all__ = [
    "METADATA_KEY",
    "OPEN_SERVICES",
    "RefusedCalls",
    "Tally",
    "TokenInterceptor",
    "bearer",
    "ensure_token",
    "new_token",
    "read_token",
]

log = structlog.get_logger(__name__)

#: The call metadata that carries the token (gRPC metadata keys are lower case).
METADATA_KEY: Final = "authorization"
SCHEME: Final = "Bearer"
TOKEN_BYTES: Final = 32
#: Methods that need no token: the standard health service reveals nothing.
OPEN_SERVICES: Final = ("/grpc.health.v1.Health/",)
#: How often, at most, refused calls get an audit entry of their own (the rest are counted).
AUDIT_EVERY: Final = timedelta(minutes=1)

# base64url of at least 32 bytes; any longer token an administrator sets is fine too.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43,256}")
_SERVICE = node_pb2.DESCRIPTOR.services_by_name["NodeApi"]
#: The API's methods by path, as the audit names them; any other path is ``unknown``.
_METHODS: Final = {f"/{_SERVICE.full_name}/{m.name}": m.name for m in _SERVICE.methods}

K = TypeVar("K", bound=Hashable)


# --- the token file ----------------------------------------------------------------------


def new_token() -> str:
    """A fresh API token: 32 random bytes, base64url (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends with every call."""
    return ((METADATA_KEY, f"{SCHEME} {token}"),)


def read_token(path: Path) -> str:
    """The token in ``path``, which must be this account's and 0600 (as key files are)."""
    text = crypto.read_secret_file(path, what="API token file", field="api_token")
    token = text.decode("ascii", errors="replace").strip()
    if not _TOKEN.fullmatch(token):
        raise ConfigurationError(
            f"API token file {path} does not hold a token (43 to 256 characters of "
            "A-Z a-z 0-9 _ -); remove it and the node makes a new one as it starts",
            field="api_token",
        )
    return token


def ensure_token(path: Path) -> str:
    """The node's token: made (0600, in a directory made 0700) if ``path`` does not exist
    yet, then read back."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        crypto.write_secret_file(path, (new_token() + "\n").encode("ascii"))
        log.info("API token made", path=str(path))
    return read_token(path)


# --- summed audit entries ----------------------------------------------------------------


class Tally(Generic[K]):
    """Counts events by key and hands the sums to ``write``, so that a flood of them costs a
    bounded number of audit entries: an event of a group that was quiet for ``every`` is
    written at once, the rest of that group summed, at most once per ``every`` (and whatever
    is left at :meth:`flush`, which the node's sweep calls each minute and once more as it
    stops). A group is ``group(key)``: by default each key on its own.

    ``write(counts, now)`` gets the counts of every group due, in one call, and writes them
    (one transaction); if it raises, the counts are kept for the next try. ``clock`` is the
    node's. Thread-safe. The keys (and groups) must come from a bounded set: who may
    send the events must not be able to make new ones up.
    """

    def __init__(
        self,
        write: Callable[[Mapping[K, int], datetime], object],
        clock: Callable[[], datetime],
        *,
        every: timedelta = AUDIT_EVERY,
        group: Callable[[K], Hashable] = lambda key: key,
    ) -> None:
        self._write = write
        self._clock = clock
        self._every = every
        self._group = group
        self._lock = threading.Lock()
        self._counts: dict[K, int] = {}
        self._written_at: dict[Hashable, datetime] = {}

    def add(self, key: K, count: int = 1) -> None:
        """Count ``count`` events of ``key``; write its group now if it was quiet."""
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + count
        self.flush(force=False)

    def pending(self) -> dict[K, int]:
        """What is counted and not written yet (a copy)."""
        with self._lock:
            return dict(self._counts)

    def flush(self, *, force: bool = True) -> None:
        """Write the counts now; without ``force`` only those of groups that were quiet for
        ``every``."""
        now = self._clock()
        with self._lock:
            # A group written longer than ``every`` ago is as good as never written.
            self._written_at = {
                g: at for g, at in self._written_at.items() if now - at < self._every
            }
            due = {
                key: count
                for key, count in self._counts.items()
                if force or self._group(key) not in self._written_at
            }
            if not due:
                return
            for key in due:
                del self._counts[key]
                self._written_at[self._group(key)] = now
        try:
            self._write(due, now)
        except Exception as error:  # the events happened all the same: keep them for later
            log.error("cannot write summed audit entries", error_type=type(error).__name__)
            with self._lock:
                for key, count in due.items():
                    self._counts[key] = self._counts.get(key, 0) + count


# --- refused calls, for the audit log -----------------------------------------------------

_WHY: Final = ("missing_token", "wrong_token")


class RefusedCalls:
    """Counts refused local calls and writes them to the audit log through a :class:`Tally`:
    one entry for both reasons, the first after a quiet spell at once, the rest summed, at
    most one entry per ``every`` (and whatever is left at :meth:`flush`).

    ``append`` is the store's ``audit_append``; ``clock`` the node's. Thread-safe.
    """

    def __init__(
        self,
        append: Callable[..., object],
        clock: Callable[[], datetime],
        *,
        every: timedelta = AUDIT_EVERY,
    ) -> None:
        self._append = append
        self._last_method = ""
        self._tally: Tally[str] = Tally(self._write, clock, every=every, group=lambda _: None)

    def refused(self, method: str, why: str) -> None:
        """Count one refused call (``why``: ``missing_token`` or ``wrong_token``)."""
        if why not in _WHY:
            raise ValueError(f"not a reason to refuse a local call: {why!r}")
        self._last_method = _METHODS.get(method, "unknown")
        self._tally.add(why)

    def flush(self, *, force: bool = True) -> None:
        """Write the counted refusals now; without ``force`` only if none was written for
        ``every``."""
        self._tally.flush(force=force)

    def _write(self, counts: Mapping[str, int], now: datetime) -> None:
        total = sum(counts.values())
        details: dict[str, object] = {
            "refused_calls": total,
            **{why: counts.get(why, 0) for why in _WHY},
            "last_method": self._last_method,
        }
        self._append(kind=AuditKind.LOCAL_API_REFUSED, details=details, now=now)
        log.warning(
            "local API calls refused: missing or wrong API token",
            refused_calls=total,
            last_method=details["last_method"],
        )


# --- the interceptor -----------------------------------------------------------------------


class TokenInterceptor(rpc.ServerInterceptor):
    """Lets through only calls that carry the node's token; install it first, before
    :class:`~samenloop.policies.rpc.ErrorInterceptor`, so that nothing of a refused call is
    read, not even its request."""

    def __init__(self, token: str, refused: RefusedCalls | None = None) -> None:
        if not _TOKEN.fullmatch(token):
            raise ConfigurationError("not an API token", field="api_token")
        self._expected = f"{SCHEME} {token}".encode("ascii")
        self._refused = refused

    def _why_refused(self, metadata: Any) -> str | None:
        values = [value for key, value in metadata or () if key == METADATA_KEY]
        if not values:
            return "missing_token"
        presented = values[0]
        if isinstance(presented, str):
            presented = presented.encode("utf-8", errors="replace")
        if len(values) != 1 or not crypto.equal(presented, self._expected):
            return "wrong_token"
        return None

    def intercept_service(
        self, continuation: rpc.Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> rpc.Handler | None:
        method = handler_call_details.method
        why = None
        if not method.startswith(OPEN_SERVICES):
            why = self._why_refused(handler_call_details.invocation_metadata)
        if why is None:
            return continuation(handler_call_details)
        error = InvalidSignature(
            "the node's local API takes calls only with the node's API token, as call "
            f"metadata '{METADATA_KEY}: {SCHEME} <token>' (the token is in the node's "
            "api_token file, readable by the node's account only)",
            field=METADATA_KEY,
            reason=f"api_token.{why.split('_')[0]}",
        )
        refused = self._refused

        # Runs in the call's worker thread, not in the server's dispatch (which called us).
        def refuse(context: grpc.ServicerContext) -> NoReturn:
            if refused is not None:
                refused.refused(method, why)
            context.abort_with_status(rpc.to_status(error))

        def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def refusing(request: Any, context: grpc.ServicerContext) -> Any:
                refuse(context)

            return refusing

        def streaming(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def refusing(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                refuse(context)
                yield  # pragma: no cover - refuse() aborts; this makes a generator

            return refusing

        handler = continuation(handler_call_details)
        if handler is None:  # no such method: refused all the same, without saying so
            return grpc.unary_unary_rpc_method_handler(unary(lambda *_: None))
        return rpc.wrap_handler(handler, unary=unary, streaming=streaming, tolerant=True)
