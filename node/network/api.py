"""The ``Network*`` calls of the node's local API: the subject network as this node holds it.

A thin adapter that :class:`~samenloop.node.daemon.api.NodeApiService` delegates to:
the request is checked here (bad input raises naming the field), the store builds the
network, :mod:`~samenloop.node.network.graph` splits it, and the result is shown as
``samenloop.v1.Network*`` messages. Reads only; nothing here logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC

from samenloop.node.network.graph import Component, Edge, Vertex, components
from samenloop.node.network.store import NetworkStore
from samenloop.policies.errors import InvalidInput, NotFound
from samenloop.v1 import common_pb2, node_pb2

__all__ = ["components_response", "edge_to_proto", "show", "vertex_to_proto"]

ID_BYTES = common_pb2.LIMITS_ID_BYTES


def vertex_to_proto(vertex: Vertex) -> node_pb2.NetworkVertex:
    message = node_pb2.NetworkVertex(
        hit_group_id=vertex.group_id,
        identifier_type=vertex.identifier_type,
        parties=sorted(vertex.parties),
    )
    message.first_seen.FromDatetime(vertex.first_seen.astimezone(UTC))
    message.last_seen.FromDatetime(vertex.last_seen.astimezone(UTC))
    if vertex.score is not None:
        message.person_score = vertex.score
    return message


def edge_to_proto(edge: Edge) -> node_pb2.NetworkEdge:
    message = node_pb2.NetworkEdge(a=edge.a, b=edge.b, reporter=edge.reporter, count=edge.count)
    if edge.first_reported is not None:
        message.first_reported.FromDatetime(edge.first_reported.astimezone(UTC))
    if edge.last_reported is not None:
        message.last_reported.FromDatetime(edge.last_reported.astimezone(UTC))
    return message


def _component(component: Component) -> node_pb2.NetworkComponent:
    return node_pb2.NetworkComponent(
        vertices=[vertex_to_proto(v) for v in component.vertices],
        edges=[edge_to_proto(e) for e in component.edges],
    )


def show(store: NetworkStore, request: node_pb2.NetworkShowRequest) -> node_pb2.NetworkShowResponse:
    """The whole network, or with ``hit_group_id`` the component of that group."""
    vertices, edges = store.network()
    group = request.hit_group_id
    if group:
        if len(group) != ID_BYTES:
            raise InvalidInput(f"a hit group id is {ID_BYTES} bytes", field="hit_group_id")
        found = [c for c in components(vertices, edges) if group in c.group_ids]
        if not found:
            raise NotFound("this node holds no open hit with this group id", field="hit_group_id")
        vertices, edges = list(found[0].vertices), list(found[0].edges)
    return node_pb2.NetworkShowResponse(
        vertices=[vertex_to_proto(v) for v in sorted(vertices, key=lambda v: v.group_id)],
        edges=[edge_to_proto(e) for e in sorted(edges, key=lambda e: (e.a, e.b, e.reporter))],
    )


def _ranked(found: Iterable[Component], *, limit: int, with_singletons: bool) -> list[Component]:
    kept = [c for c in found if with_singletons or c.edges]
    return kept[:limit] if limit else kept


def components_response(
    store: NetworkStore, request: node_pb2.NetworkComponentsRequest
) -> node_pb2.NetworkComponentsResponse:
    """The connected components, largest first (single groups only if asked)."""
    vertices, edges = store.network()
    ranked = _ranked(
        components(vertices, edges),
        limit=request.limit,
        with_singletons=request.with_singletons,
    )
    return node_pb2.NetworkComponentsResponse(components=[_component(c) for c in ranked])
