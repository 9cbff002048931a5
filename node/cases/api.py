"""The ``Case*`` calls of the node's local API: protobuf in, :class:`CaseDesk` calls, protobuf out.

A thin adapter that :class:`~samenloop.node.daemon.api.NodeApiService` delegates to:
requests are parsed here (bad input raises naming the field, before anything
is stored or sent), the desk does the work, and cases are shown as
``samenloop.v1.Case`` messages. Nothing here logs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from samenloop.node.cases import machine as cases
from samenloop.node.cases.desk import CaseDesk
from samenloop.node.cases.machine import Case
from samenloop.policies.errors import InvalidInput, UnknownType
from samenloop.v1 import node_pb2

__all__ = ["CaseApi", "case_to_proto"]


def _stamp(moment: datetime, message: object) -> None:
    message.FromDatetime(moment.astimezone(UTC))  # type: ignore[attr-defined]


def case_to_proto(case: Case, *, history: bool = False) -> node_pb2.Case:
    """A case as the API shows it; its history only if asked (``CaseShow``)."""
    message = node_pb2.Case(
        case_id=case.case_id,
        title=case.title,
        coordinator=case.coordinator,
        hit_group_id=case.hit_group_id,
        state=cases.STATE_TO_PROTO[case.state],
        members=list(case.members),
        actions=[a.to_proto() for a in case.actions],
        outcome=case.outcome or "",
        linked_hit_group_ids=list(case.linked_group_ids),
    )
    _stamp(case.opened_at, message.opened_at)
    if case.closed_at is not None:
        _stamp(case.closed_at, message.closed_at)
    if history:
        for entry in case.history:
            shown = message.history.add(
                author=entry.author,
                author_officer=entry.author_officer,
                kind=cases.KIND_TO_PROTO[entry.kind],
                summary=entry.summary,
            )
            _stamp(entry.issued_at, shown.issued_at)
    return message


def _deadline(message: object, field: str) -> datetime:
    try:
        return message.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined,no-any-return]
    except (ValueError, OverflowError) as error:
        raise InvalidInput("out of range", field=field) from error


class CaseApi:
    """The case calls, given the node's desk (``None``: the node runs without its keys)."""

    def __init__(self, desk: Callable[[], CaseDesk]) -> None:
        self._desk = desk

    def open(self, request: node_pb2.CaseOpenRequest) -> node_pb2.CaseOpenResponse:
        case = self._desk().open(
            hit_group_id=request.hit_group_id,
            title=request.title,
            invite=list(request.invite),
            officer=request.officer,
            linked_hit_group_ids=list(request.linked_hit_group_ids),
        )
        return node_pb2.CaseOpenResponse(case=case_to_proto(case))

    def invite(self, request: node_pb2.CaseInviteRequest) -> node_pb2.CaseInviteResponse:
        case = self._desk().invite(request.case_id, list(request.parties), officer=request.officer)
        return node_pb2.CaseInviteResponse(case=case_to_proto(case))

    def remove(self, request: node_pb2.CaseRemoveRequest) -> node_pb2.CaseRemoveResponse:
        case = self._desk().remove(request.case_id, list(request.parties), officer=request.officer)
        return node_pb2.CaseRemoveResponse(case=case_to_proto(case))

    def list(self, request: node_pb2.CaseListRequest) -> node_pb2.CaseListResponse:
        state: cases.CaseState | None = None
        if request.state:
            state = cases.PROTO_STATES.get(request.state)
            if state is None:
                raise UnknownType("unknown case state", field="state")
        found = self._desk().cases(state)
        return node_pb2.CaseListResponse(cases=[case_to_proto(c) for c in found])

    def show(self, request: node_pb2.CaseShowRequest) -> node_pb2.CaseShowResponse:
        case = self._desk().case(request.case_id, history=True)
        return node_pb2.CaseShowResponse(case=case_to_proto(case, history=True))

    def act(self, request: node_pb2.CaseActRequest) -> node_pb2.CaseActResponse:
        action = request.action
        if not action.HasField("deadline"):
            raise InvalidInput("an action needs a deadline", field="action.deadline")
        case = self._desk().add_action(
            request.case_id,
            owner=action.owner,
            intervention_type=cases.intervention_from_proto(
                action.intervention_type, "action.intervention_type"
            ),
            measure=action.measure,
            description=action.description,
            deadline=_deadline(action.deadline, "action.deadline"),
            officer=request.officer,
        )
        return node_pb2.CaseActResponse(case=case_to_proto(case))

    def update(self, request: node_pb2.CaseUpdateRequest) -> node_pb2.CaseUpdateResponse:
        status = (
            None
            if request.status == 0
            else cases.status_from_proto(request.status, "status")  # UNSPECIFIED keeps it
        )
        deadline = _deadline(request.deadline, "deadline") if request.HasField("deadline") else None
        case = self._desk().update_action(
            request.case_id,
            request.action_id,
            status=status,
            deadline=deadline,
            note=request.note,
            officer=request.officer,
        )
        return node_pb2.CaseUpdateResponse(case=case_to_proto(case))

    def close(self, request: node_pb2.CaseCloseRequest) -> node_pb2.CaseCloseResponse:
        case = self._desk().close(request.case_id, outcome=request.outcome, officer=request.officer)
        return node_pb2.CaseCloseResponse(case=case_to_proto(case))

    def board(self, request: node_pb2.CaseBoardRequest) -> node_pb2.CaseBoardResponse:
        entries = self._desk().board(overdue_only=request.overdue_only)
        return node_pb2.CaseBoardResponse(
            entries=[
                node_pb2.CaseBoardEntry(
                    case_id=e.case.case_id,
                    case_title=e.case.title,
                    action=e.action.to_proto(),
                    overdue=e.overdue,
                )
                for e in entries
            ]
        )
