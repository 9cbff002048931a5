"""The one place where Samenloop errors become gRPC statuses, and back.

Servers install ``ErrorInterceptor``: a handler raises a ``SamenloopError`` and
the caller gets its status code with a ``google.rpc.Status`` carrying
``BadRequest.FieldViolation`` (the offending field) and ``ErrorInfo`` (the
machine-readable reason). Anything else becomes a bare INTERNAL with no
detail, so an unexpected failure never leaks data; it is logged by type only.
Clients call ``error_from_rpc`` to get the typed error back.

This is an adapter: the sans-IO core never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from samenloop.policies import errors
from samenloop.policies.errors import InvalidInput, SamenloopError, Status

ERROR_DOMAIN = "samenloop.nl"

log = structlog.get_logger(__name__)

_BY_STATUS: dict[Status, type[SamenloopError]] = {
    Status.INVALID_ARGUMENT: errors.InvalidInput,
    Status.NOT_FOUND: errors.NotFound,
    Status.ALREADY_EXISTS: errors.Replay,
    Status.PERMISSION_DENIED: errors.NotAllowed,
    Status.UNAUTHENTICATED: errors.InvalidSignature,
    Status.RESOURCE_EXHAUSTED: errors.QuotaExceeded,
    Status.FAILED_PRECONDITION: errors.ConfigurationError,
    Status.UNAVAILABLE: errors.Unavailable,
    Status.UNIMPLEMENTED: errors.NotInThisVersion,
    Status.INTERNAL: errors.LocalError,
}


def status_code(status: Status) -> grpc.StatusCode:
    return grpc.StatusCode[status.value]


def to_status(error: SamenloopError) -> grpc.Status:
    """The rich gRPC status for an error: code, message, field violation, reason."""
    details = []
    if error.field:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=error.field, description=error.message
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    details.append(info)
    code = status_code(error.status)
    message = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=str(error), details=details
    )
    return rpc_status.to_status(message)


_INTERNAL = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def error_from_rpc(error: grpc.RpcError) -> SamenloopError:
    """Turn a failed call back into the typed error (field and reason preserved)."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    field: str | None = None
    reason: str | None = None
    rich = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if rich is not None:
        for detail in rich.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                if bad_request.field_violations:
                    field = bad_request.field_violations[0].field
                    message = bad_request.field_violations[0].description
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    try:
        status = Status(code.name)
    except ValueError:
        status = (
            Status.UNAVAILABLE if code == grpc.StatusCode.DEADLINE_EXCEEDED else Status.INTERNAL
        )
    cls = _BY_STATUS[status]
    return cls(message or code.name, field=field, reason=reason)


_T = TypeVar("_T")
_R = TypeVar("_R")


class Undecodable:
    """What a request that is not valid protobuf for its method decodes to.

    The interceptor decodes tolerantly so that garbage on the wire becomes a
    clear INVALID_ARGUMENT naming the request (gRPC itself would answer
    INTERNAL), and the handler never sees it.
    """

    __slots__ = ()


_UNDECODABLE = Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # any decoding failure is the caller's garbage
            return _UNDECODABLE

    return decode


def _checked(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise InvalidInput(
            "request is not a valid protobuf message for this method", field="request"
        )
    if isinstance(request, Iterator):
        return (_checked(item) for item in request)
    return request


def _guard_unary(behaviour: Callable[[_T, grpc.ServicerContext], _R]) -> Callable[..., _R]:
    def handler(request: _T, context: grpc.ServicerContext) -> _R:
        try:
            return behaviour(_checked(request), context)
        except SamenloopError as error:
            _abort(context, error)
        except Exception as error:  # the last line of defence: never leak details
            _abort_internal(context, error)

    return handler


def _guard_stream(
    behaviour: Callable[[_T, grpc.ServicerContext], Iterator[_R]],
) -> Callable[..., Iterator[_R]]:
    def handler(request: _T, context: grpc.ServicerContext) -> Iterator[_R]:
        try:
            yield from behaviour(_checked(request), context)
        except SamenloopError as error:
            _abort(context, error)
        except Exception as error:  # the last line of defence: never leak details
            _abort_internal(context, error)

    return handler


def _abort(context: grpc.ServicerContext, error: SamenloopError) -> NoReturn:
    log.info("request refused", status=error.status.value, reason=error.reason, field=error.field)
    context.abort_with_status(to_status(error))


def _abort_internal(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    log.error("unexpected error in handler", error_type=type(error).__name__)
    context.abort_with_status(rpc_status.to_status(_INTERNAL))


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:  # grpc's classes are not generic at run time; only the stubs are
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.ServerInterceptor

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]

#: The four kinds of gRPC method, how to rebuild each, and whether its responses stream.
_HANDLER_KINDS: tuple[tuple[str, Callable[..., Handler], bool], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def wrap_handler(
    handler: Handler, *, unary: Wrapper, streaming: Wrapper, tolerant: bool = False
) -> Handler:
    """Rebuild a method handler with its behaviour wrapped: the one place that knows the kinds.

    ``unary`` wraps behaviours that return one response, ``streaming`` those
    that yield responses (a generator wrapper must itself be a generator).
    With ``tolerant``, requests that do not decode reach the wrapper as
    :class:`Undecodable` instead of failing inside gRPC.
    """
    deserializer = handler.request_deserializer
    for kind, make_handler, streams in _HANDLER_KINDS:
        behaviour = getattr(handler, kind)
        if behaviour:
            return make_handler(
                (streaming if streams else unary)(behaviour),
                request_deserializer=_tolerant(deserializer) if tolerant else deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler  # pragma: no cover - grpc has no other kinds


Continuation = Callable[[grpc.HandlerCallDetails], Handler | None]


class ErrorInterceptor(ServerInterceptor):
    """Server interceptor that maps every error raised by a handler to a gRPC status."""

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, unary=_guard_unary, streaming=_guard_stream, tolerant=True)
