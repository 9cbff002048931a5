"""``PictureCollect`` and ``PictureShow`` of the local API: protobuf in, the desk's calls out.

Parsed at the boundary: the period, measures and dimensions become
:mod:`samenloop.node.picture.arithmetic` values here, each error naming its field
(``period.first_month``, ``measures[1]``, ``dimensions[0]``).
"""

from __future__ import annotations

from collections.abc import Iterable

from samenloop.node.picture.arithmetic import Dimension, Measure, Period
from samenloop.node.picture.desk import PictureDesk
from samenloop.node.picture.protocol import PictureAsk, released_to_proto
from samenloop.policies.errors import InvalidInput
from samenloop.v1 import node_pb2

__all__ = ["collect", "show"]


def _dimensions(values: Iterable[int]) -> tuple[Dimension, ...]:
    return tuple(Dimension.from_proto(v, field=f"dimensions[{i}]") for i, v in enumerate(values))


def collect(
    desk: PictureDesk, request: node_pb2.PictureCollectRequest
) -> node_pb2.PictureCollectResponse:
    """Start a collection for the period, measures and dimensions asked, saying what it
    costs of the privacy budget; a dry run only says what it would cost."""
    if not request.HasField("period"):
        raise InvalidInput("give the period", field="period", reason="picture.period")
    ask = PictureAsk(
        Period.from_proto(request.period),
        tuple(
            Measure.from_proto(m, field=f"measures[{i}]") for i, m in enumerate(request.measures)
        ),
        _dimensions(request.dimensions),
    )
    planned = request.planned_requests or 1
    cost = desk.plan(ask, planned_requests=planned)
    response = node_pb2.PictureCollectResponse(
        noisy=cost.noisy, epsilon_needed=cost.needed, epsilon_remaining=cost.remaining
    )
    if request.dry_run:
        return response
    request_id, asked = desk.collect(ask, officer=request.officer, planned_requests=planned)
    response.request_id = request_id
    response.asked.extend(asked)
    return response


def show(desk: PictureDesk, request: node_pb2.PictureShowRequest) -> node_pb2.PictureShowResponse:
    """The released table of a collection, with who contributed, refused or is missing."""
    period = Period.from_proto(request.period) if request.HasField("period") else None
    view = desk.show(
        measure=Measure.from_proto(request.measure, field="measure"),
        dimensions=_dimensions(request.dimensions),
        period=period,
        request_id=request.request_id or None,
    )
    response = node_pb2.PictureShowResponse(
        table=released_to_proto(view.table),
        contributors=list(view.contributors),
        missing=list(view.missing),
        min_cell_count=view.table.min_count,
    )
    for party, reason, message in view.refusals:
        note = response.refusals.add(contributor=party)
        note.refusal.reason = reason.to_proto()
        note.refusal.message = message
    return response
