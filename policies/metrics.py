"""What broker and node share for their Prometheus endpoint (``metrics_listen``).

Each daemon keeps its metrics in a :class:`~prometheus_client.CollectorRegistry` of its
own, never the process-wide default one: tests run a broker and several nodes in one
process, and a library that registers there must not show up in a daemon's figures.
:func:`serve_registry` serves one over plain HTTP (``/metrics``) on a thread until
:meth:`MetricsEndpoint.stop`; no ``metrics_listen`` means no endpoint at all.

:class:`RpcMetrics` counts the gRPC calls a server answered, by method and status code,
and times those that answer once (a stream's duration says how long a peer stayed, not
how fast the server was). :class:`RpcMetricsInterceptor` feeds it: it is the outermost
interceptor, so that refusals of the interceptors inside it (token, party, errors) are
counted with the status they got. Only methods the server serves become labels, so a
caller cannot make new series by calling made-up paths.

What may be a label or a value anywhere in these metrics: party ids of the covenant,
method names, status codes and the fixed names of reasons and outcomes. Never a token,
a signal ref, an identifier, a category, a group, request or batch id
(docs/threat-model.md, "Whoever can reach a metrics endpoint").

This is an adapter (gRPC and HTTP); the sans-IO core never imports it.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from samenloop.policies import rpc
from samenloop.policies.covenant import parse_address
from samenloop.policies.errors import ConfigurationError, SamenloopError

log = structlog.get_logger(__name__)

#: Request latency buckets, in seconds: a local API call takes milliseconds, a batch of
#: tokens at the broker tens of them, an OPRF evaluation through the relay up to its timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class MetricsEndpoint:
    """A registry served over HTTP: the address and port it listens on, until ``stop``."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_registry(
    registry: CollectorRegistry, listen: str, *, field: str = "metrics_listen"
) -> MetricsEndpoint:
    """Serve ``registry`` at ``http://<listen>/metrics`` (port 0: any free port, see
    ``MetricsEndpoint.port``); ``ConfigurationError`` naming ``field`` if it cannot bind."""
    try:
        host, port = parse_address(listen, field=field, allow_port_zero=True)
        server, thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, SamenloopError) as error:
        message = f"cannot serve metrics on {listen}: {error}"
        raise ConfigurationError(message, field=field) from error
    return MetricsEndpoint(server, thread, host, int(server.server_address[1]))


class StoreFigures(Collector):
    """A daemon's state read from its store at each scrape (``_figures``), so that it
    survives a restart and costs nothing between scrapes."""

    def describe(self) -> list[Metric]:
        return []  # no queries at registration: the families are those of collect

    def collect(self) -> Iterator[Metric]:
        """The figures, or none when the store cannot be read (logged by error type only):
        the scrape still answers, with the counters, and the gauges go absent."""
        try:
            figures = list(self._figures())
        except Exception as error:  # a database outage must not break the endpoint
            log.error("metrics: the store could not be read", error_type=type(error).__name__)
            return
        yield from figures

    @abc.abstractmethod
    def _figures(self) -> Iterator[Metric]:
        """Each daemon's collector: the families it reads from its store."""


class RpcMetrics:
    """Calls answered by a gRPC server, by method and status, and their latency."""

    def __init__(self, registry: CollectorRegistry, namespace: str, server: str) -> None:
        """``namespace`` (``samenloop_broker``, ``samenloop_node``) prefixes each name;
        ``server`` says which server in the help text."""
        self.calls = Counter(
            f"{namespace}_rpc_calls",
            f"gRPC calls the {server} answered, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.errors = Counter(
            f"{namespace}_rpc_errors",
            f"gRPC calls the {server} answered with a status other than OK, by code",
            ["code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{namespace}_rpc_duration_seconds",
            f"Time the {server} took to answer a call with one response, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        """One call answered: its status, and (for a single response) how long it took."""
        self.calls.labels(method, code.name).inc()
        if code is not grpc.StatusCode.OK:
            self.errors.labels(code.name).inc()
        if seconds is not None:
            self.latency.labels(method).observe(seconds)


def _code(
    context: grpc.ServicerContext,
    failed: bool,
    otherwise: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
) -> grpc.StatusCode:
    """The status a call ended with: the one set or aborted with, else OK (or, for an
    exception that set none, ``otherwise``: UNKNOWN, as gRPC answers it)."""
    code = context.code()  # type: ignore[attr-defined]  # grpc's server context has it
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some gRPC versions keep the numeric code
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    return otherwise if failed else grpc.StatusCode.OK


class RpcMetricsInterceptor(rpc.ServerInterceptor):
    """Counts every call a server answers and times those with one response."""

    def __init__(
        self, metrics: RpcMetrics, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._metrics = metrics
        self._clock = clock

    def intercept_service(
        self, continuation: rpc.Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> rpc.Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:  # an unknown method: no label for it
            return None
        method = handler_call_details.method.lstrip("/")
        observe = self._metrics.observe
        clock = self._clock

        def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def timed(request: Any, context: grpc.ServicerContext) -> Any:
                started = clock()
                failed = True
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                finally:
                    observe(method, _code(context, failed), clock() - started)

            return timed

        def streaming(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def counted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from behaviour(request, context)
                except GeneratorExit:  # the peer went away, or the server stops
                    observe(method, _code(context, True, grpc.StatusCode.CANCELLED), None)
                    raise
                except BaseException:
                    observe(method, _code(context, True), None)
                    raise
                observe(method, _code(context, False), None)

            return counted

        return rpc.wrap_handler(handler, unary=unary, streaming=streaming)
