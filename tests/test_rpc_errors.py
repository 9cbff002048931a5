"""Errors become gRPC statuses with the offending field, in one interceptor, and back."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from samenloop.policies import errors, rpc
from samenloop.policies.errors import InvalidIdentifier, Status
from samenloop.v1 import common_pb2

SERVICE = "samenloop.test.Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"bad-bsn":
        raise InvalidIdentifier(
            "BSN fails the 11-test", field="signal.identifiers[0].value", reason="bsn.check_digit"
        )
    if request == b"quota":
        raise errors.QuotaExceeded("daily OPRF quota used up", field="requester")
    if request == b"crash":
        raise RuntimeError("secret value 123456782 in an unexpected error")
    return b"ok:" + request


def _stream(request: bytes, context: grpc.ServicerContext):
    yield b"first"
    raise errors.NotAllowed("not a member of this case", field="case_id")


def _chat(requests, context: grpc.ServicerContext):
    for request in requests:
        if request == b"again":
            raise errors.Replay("message id seen before", field="client_message_id")
        yield b"ack:" + request


def _count(requests, context: grpc.ServicerContext) -> bytes:
    total = 0
    for request in requests:
        if not request:
            raise errors.InvalidInput("empty batch entry", field=f"entries[{total}]")
        total += 1
    return str(total).encode()


@pytest.fixture(scope="module")
def channel():
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[rpc.ErrorInterceptor()]
    )
    identity = lambda b: b  # noqa: E731
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo, identity, identity),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream, identity, identity),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat, identity, identity),
        "Count": grpc.stream_unary_rpc_method_handler(_count, identity, identity),
        "Typed": grpc.unary_unary_rpc_method_handler(
            lambda request, context: request.SerializeToString(),
            request_deserializer=common_pb2.Signed.FromString,
            response_serializer=identity,
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(None)


def call(channel, payload: bytes) -> bytes:
    return channel.unary_unary(f"/{SERVICE}/Echo")(payload, timeout=5)


def test_invalid_input_maps_to_invalid_argument_with_field(channel):
    with pytest.raises(grpc.RpcError) as info:
        call(channel, b"bad-bsn")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    back = rpc.error_from_rpc(info.value)
    assert isinstance(back, errors.InvalidInput)
    assert back.field == "signal.identifiers[0].value"
    assert back.reason == "bsn.check_digit"
    assert back.message == "BSN fails the 11-test"


def test_quota_maps_to_resource_exhausted(channel):
    with pytest.raises(grpc.RpcError) as info:
        call(channel, b"quota")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(rpc.error_from_rpc(info.value), errors.QuotaExceeded)


def test_unexpected_error_is_internal_and_leaks_nothing(channel):
    with pytest.raises(grpc.RpcError) as info:
        call(channel, b"crash")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "123456782" not in info.value.details()
    assert "123456782" not in str(rpc.error_from_rpc(info.value))


def test_server_keeps_serving_after_errors(channel):
    for payload in (b"bad-bsn", b"crash", b"quota"):
        with pytest.raises(grpc.RpcError):
            call(channel, payload)
    assert call(channel, b"hello") == b"ok:hello"


def test_streaming_errors_are_mapped(channel):
    stream = channel.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=5)
    assert next(stream) == b"first"
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc.error_from_rpc(info.value).field == "case_id"


def test_bidirectional_stream_errors_are_mapped(channel):
    replies = channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"one", b"again"]), timeout=5)
    assert next(replies) == b"ack:one"
    with pytest.raises(grpc.RpcError) as info:
        next(replies)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert rpc.error_from_rpc(info.value).field == "client_message_id"


def test_client_stream_errors_are_mapped(channel):
    count = channel.stream_unary(f"/{SERVICE}/Count")
    assert count(iter([b"a", b"b"]), timeout=5) == b"2"
    with pytest.raises(grpc.RpcError) as info:
        count(iter([b"a", b""]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.error_from_rpc(info.value).field == "entries[1]"


@pytest.mark.parametrize("status", list(Status))
def test_every_status_hint_is_a_grpc_code(status):
    assert rpc.status_code(status).name == status.value


def test_garbage_on_the_wire_is_invalid_argument_naming_the_request(channel):
    typed = channel.unary_unary(f"/{SERVICE}/Typed")
    valid = common_pb2.Signed(body=b"x", signer="gemeente").SerializeToString()
    assert typed(valid, timeout=5) == valid
    with pytest.raises(grpc.RpcError) as info:
        typed(b"\xff\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.error_from_rpc(info.value).field == "request"
    assert typed(valid, timeout=5) == valid  # still serving
