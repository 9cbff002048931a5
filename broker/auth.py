"""Who is calling: the party in the caller's client certificate, checked against the covenant.

TLS itself (``require_client_auth=True`` with the covenant CA as the only root)
refuses certificates from another CA, expired ones and missing ones before any
handler runs. This interceptor does the rest: a certificate without a party id
gets UNAUTHENTICATED, a party the current covenant does not list gets
PERMISSION_DENIED. Servicers then call ``caller(context)`` for the party id and
check every field that names the caller against it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from samenloop.policies import rpc
from samenloop.policies.certs import party_from_certificate
from samenloop.policies.covenant import Covenant
from samenloop.policies.errors import InvalidSignature, NotAllowed

#: Methods anyone with a valid certificate may call (standard health and reflection).
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@functools.lru_cache(maxsize=1024)
def _party_of(pem: bytes) -> str:
    return party_from_certificate(pem)


def caller(context: grpc.ServicerContext) -> str:
    """The party id in the caller's verified client certificate."""
    found: bytes | list[bytes] = context.auth_context().get("x509_pem_cert") or []
    certificates = [found] if isinstance(found, bytes) else list(found)
    if not certificates:
        raise InvalidSignature("no client certificate", field="certificate")
    try:
        return _party_of(certificates[0])
    except Exception as error:  # a certificate that passed TLS but names no party
        raise InvalidSignature(
            "client certificate does not name a party", field="certificate"
        ) from error


class PartyInterceptor(rpc.ServerInterceptor):
    """Refuses callers that the covenant in force does not list.

    ``covenant`` is a callable so that a new covenant version cuts a removed
    party off on its next call, without restarting the server.
    """

    def __init__(self, covenant: Callable[[], Covenant]) -> None:
        self._covenant = covenant

    def _check(self, context: grpc.ServicerContext) -> None:
        party = caller(context)
        if not self._covenant().is_party(party):
            raise NotAllowed(f"{party} is not a party of this covenant", field="certificate")

    def intercept_service(
        self, continuation: rpc.Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> rpc.Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        check = self._check

        def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                check(context)
                return behaviour(request, context)

            return guarded

        def streaming(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                check(context)
                yield from behaviour(request, context)

            return guarded

        return rpc.wrap_handler(handler, unary=unary, streaming=streaming)
