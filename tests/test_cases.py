"""Case coordination (casusregie, DESIGN flow 9).

Part one drives the sans-IO machine (:mod:`samenloop.node.cases.machine`) with real
keys and broker-signed notices: every allowed and refused transition, who may
author what, sequence replays and gaps, sealing to each member (with the hit
notice only where it tips nobody off), overdue actions and the board, and the
composers' input checks naming the field.

Part two runs a real broker and six real nodes in this process and drives them
with the client library: the RIEC opens a case on a hit it sees, invites the
hit's partners, adds two actions (one overdue on its board); a partner updates
its own action from its node and cannot update another's; an outsider cannot be
invited and receives nothing; a removed member gets no further updates and its
node refuses changes; the broker's database and logs hold no title, measure or
note; every change is in the audit logs; the coordinator's case activity feeds
the picture's accountability.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from samenloop.node.cases import machine as cases
from samenloop.node.cases.machine import (
    TRANSITIONS,
    Access,
    ActionStatus,
    Applied,
    Case,
    CaseActivity,
    CaseChange,
    CaseState,
    ChangeKind,
    InterventionType,
    Phase,
    Refused,
)
from samenloop.node.disclosure.protocol import open_envelope
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.policies.audit import AuditKind
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import InvalidInput, MessageTooLarge, NotAllowed, NotFound
from samenloop.v1 import broker_pb2, common_pb2

from in_process import Cluster, running_cluster, wait_for

NOW = datetime(2026, 12, 9, 12, 0, tzinfo=UTC)
RIEC, GEMEENTE, WOCO, BELASTING, POLITIE, PROVINCIE = (
    "riec",
    "gemeente",
    "woco",
    "belastingdienst",
    "politie",
    "provincie",
)
SPECS = (
    PartySpec(RIEC, "RIEC Test", Role.RIEC),
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),
    PartySpec(BELASTING, "Belastingdienst Test", Role.BELASTINGDIENST),
    PartySpec(POLITIE, "Politie Test", Role.POLITIE),
    PartySpec(PROVINCIE, "Provincie Test", Role.PROVINCIE),
)
GROUP = b"\x33" * 16
CASE = b"\x44" * 16


# --- part one: the sans-IO machine ---------------------------------------------------------------


@dataclass
class World:
    provisioned: Provisioned
    keys: dict[str, PartyKeys]
    broker_keys: PartyKeys

    @property
    def covenant(self) -> Covenant:
        return self.provisioned.covenant


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("cases-core")
    provisioned = provision(root, "riec-cases", SPECS, [GEMEENTE, WOCO], 2, now=NOW)
    return World(
        provisioned,
        {p.id: PartyKeys.load(root / p.id / "party-keys.json") for p in SPECS},
        PartyKeys.load(root / "broker" / "signing-keys.json"),
    )


def notice(
    world: World,
    members: Sequence[str] = (GEMEENTE, WOCO, BELASTING),
    *,
    recipient: str = RIEC,
    signer: PartyKeys | None = None,
    kind: broker_pb2.HitNoticeKind.ValueType = broker_pb2.HIT_NOTICE_KIND_NEW,
) -> common_pb2.Signed:
    """The RIEC's notice of GROUP as the broker signs it (or ``signer`` forges it)."""
    message = broker_pb2.HitNotice(
        covenant_id=world.covenant.id,
        covenant_version=1,
        hit_group_id=GROUP,
        revision=1,
        kind=kind,
        recipient=recipient,
        visibility=broker_pb2.HitVisibility(
            parties=True, roles=True, party_count=True, categories=True
        ),
    )
    for party in members:
        message.members.add(
            party=party,
            role=world.covenant.role_of(party).value,
            signal_refs=[secrets.token_bytes(16)],
        )
    body = message.SerializeToString()
    return common_pb2.Signed(
        body=body,
        signer=world.covenant.broker.id,
        context=SignatureContext.HIT_NOTICE.value,
        signature=(signer or world.broker_keys).sign(SignatureContext.HIT_NOTICE, body),
    )


def mid() -> bytes:
    return secrets.token_bytes(16)


def opened(world: World, invite: Sequence[str] = (GEMEENTE, WOCO)) -> CaseChange:
    return cases.open_case(
        world.covenant,
        RIEC,
        notice(world),
        case_id=CASE,
        message_id=mid(),
        title="Casus Dorpsstraat",
        invite=invite,
        officer="a.analist@riec",
        now=NOW,
    )


def step(world: World, me: str, case: Case | None, change: CaseChange, **kw: Any) -> Case:
    result = cases.apply(world.covenant, me, case, change, now=NOW, **kw)
    assert isinstance(result, Applied), result
    return result.case


def refused(world: World, me: str, case: Case | None, change: CaseChange, **kw: Any) -> str:
    result = cases.apply(world.covenant, me, case, change, now=NOW, **kw)
    assert isinstance(result, Refused), result
    return result.reason.value


def with_action(world: World, owner: str = GEMEENTE, *, deadline: datetime = NOW) -> Case:
    case = step(world, RIEC, None, opened(world))
    change = cases.add_action(
        world.covenant,
        RIEC,
        case,
        message_id=mid(),
        action_id=b"\x55" * 16,
        owner=owner,
        intervention_type=InterventionType.BESTUURLIJK,
        measure="bibob-screening",
        description="",
        deadline=deadline,
        officer="a.analist@riec",
        now=NOW,
    )
    return step(world, RIEC, case, change)


ACTION = b"\x55" * 16


def change_by(author: str, kind: ChangeKind, sequence: int = 1, **fields: Any) -> CaseChange:
    return CaseChange(
        case_id=CASE,
        message_id=mid(),
        author=author,
        author_officer="x@" + author,
        author_sequence=sequence,
        issued_at=NOW,
        kind=kind,
        coordinator=fields.pop("coordinator", RIEC),
        **fields,
    )


def updated(case: Case, author: str, sequence: int, **changes: Any) -> CaseChange:
    action = case.action(ACTION)
    assert action is not None
    new = replace(action, updated_by=author, **changes)
    return change_by(author, ChangeKind.ACTION_UPDATE, sequence, action=new)


def test_a_case_travels_sealed_from_the_coordinator_to_each_member(world: World) -> None:
    """Open, invite, add, update, remove, close: folded the same at the author and at
    each recipient, from what each recipient can open."""
    copies: dict[str, Case | None] = {p: None for p in (RIEC, GEMEENTE, WOCO, BELASTING)}

    def send(author: str, change: CaseChange) -> None:
        before = copies[author]
        result = cases.apply(world.covenant, author, before, change, now=NOW)
        assert isinstance(result, Applied), result
        copies[author] = result.case
        ids = iter(secrets.token_bytes(16) for _ in range(10))
        for envelope in cases.seal(
            world.keys[author], world.covenant, before, result, ids.__next__
        ):
            context, body = open_envelope(
                world.keys[envelope.recipient], world.covenant, envelope.sealed
            )
            assert context is SignatureContext.CASE_MESSAGE
            received = cases.parse_change(body, sender=author)
            copies[envelope.recipient] = step(
                world, envelope.recipient, copies[envelope.recipient], received
            )

    send(RIEC, opened(world))
    assert copies[BELASTING] is None  # not invited: receives nothing
    riec = copies[RIEC]
    assert riec is not None
    send(
        RIEC,
        cases.add_action(
            world.covenant,
            RIEC,
            riec,
            message_id=mid(),
            action_id=ACTION,
            owner=GEMEENTE,
            intervention_type=InterventionType.BESTUURLIJK,
            measure="sluiting-pand",
            description="pand sluiten",
            deadline=NOW + timedelta(days=7),
            officer="a@riec",
            now=NOW,
        ),
    )
    send(
        RIEC,
        cases.invite(
            world.covenant,
            RIEC,
            copies[RIEC],
            [BELASTING],
            message_id=mid(),
            officer="a@riec",
            now=NOW,
            signed_notice=notice(world),
        ),
    )
    late = copies[BELASTING]
    assert late is not None
    assert late.members == (RIEC, GEMEENTE, WOCO, BELASTING)
    assert [a.measure for a in late.actions] == ["sluiting-pand"]  # caught up
    send(
        GEMEENTE,
        cases.update_action(
            world.covenant,
            GEMEENTE,
            copies[GEMEENTE],
            ACTION,
            message_id=mid(),
            status=ActionStatus.IN_PROGRESS,
            deadline=None,
            note="gestart",
            officer="b@gemeente",
            now=NOW,
        ),
    )
    send(
        RIEC,
        cases.remove_members(
            world.covenant, RIEC, copies[RIEC], [WOCO], message_id=mid(), officer="a@riec", now=NOW
        ),
    )
    woco = copies[WOCO]
    assert woco is not None
    assert woco.access is Access.REMOVED
    assert woco.phase is Phase.REMOVED
    send(
        RIEC,
        cases.close_case(
            world.covenant,
            RIEC,
            copies[RIEC],
            outcome="pand gesloten",
            message_id=mid(),
            officer="a@riec",
            now=NOW,
        ),
    )
    for party in (RIEC, GEMEENTE, BELASTING):
        held = copies[party]
        assert held is not None
        assert (held.state, held.outcome) == (CaseState.CLOSED, "pand gesloten")
        action = held.action(ACTION)
        assert action is not None
        assert (action.status, action.note) == (
            ActionStatus.IN_PROGRESS,
            "gestart",
        )
    woco = copies[WOCO]
    assert woco is not None
    assert woco.state is CaseState.OPEN
    riec = copies[RIEC]
    assert riec is not None
    assert [h.kind for h in riec.history] == [
        ChangeKind.OPEN,
        ChangeKind.ACTION_ADD,
        ChangeKind.INVITE,
        ChangeKind.ACTION_UPDATE,
        ChangeKind.MEMBER_REMOVE,
        ChangeKind.CLOSE,
    ]
    assert dict(riec.sequences) == {RIEC: 5, GEMEENTE: 1}


def _in_phase(world: World, phase: Phase, me: str = GEMEENTE) -> Case | None:
    if phase is Phase.NONE:
        return None
    case = with_action(world)
    if phase is Phase.CLOSED:
        return replace(case, state=CaseState.CLOSED, closed_at=NOW, outcome="klaar")
    if phase is Phase.REMOVED:
        return replace(case, access=Access.REMOVED)
    return case


def _any_change(kind: ChangeKind) -> CaseChange:
    return change_by(RIEC, kind, 9, members=(RIEC, GEMEENTE), title="t", hit_group_id=GROUP)


@pytest.mark.parametrize(
    ("phase", "kind"),
    [(p, k) for p in Phase for k in ChangeKind if (p, k) not in TRANSITIONS],
)
def test_every_move_outside_the_table_is_refused(
    world: World, phase: Phase, kind: ChangeKind
) -> None:
    expected = {
        Phase.NONE: "unknown_case",
        Phase.OPEN: "already_open",
        Phase.CLOSED: "case_closed",
        Phase.REMOVED: "removed",
    }[phase]
    assert refused(world, GEMEENTE, _in_phase(world, phase), _any_change(kind)) == expected


def test_the_table_has_one_way_in_and_only_the_coordinator_changes_the_case(world: World) -> None:
    assert {k for (p, k) in TRANSITIONS if p is Phase.NONE} == {ChangeKind.OPEN, ChangeKind.INVITE}
    for (_, kind), rule in TRANSITIONS.items():
        allowed = {cases.Right.COORDINATOR}
        if kind is ChangeKind.ACTION_UPDATE:
            allowed.add(cases.Right.OWNER)
        assert rule.authors == allowed


def test_received_open_and_invite_are_checked(world: World) -> None:
    good = opened(world)
    assert step(world, GEMEENTE, None, good).members == (RIEC, GEMEENTE, WOCO)
    # Not for this node; not a coordinator's role; a forged or closed notice.
    assert refused(world, BELASTING, None, good) == "not_a_member"
    by_gemeente = replace(good, author=GEMEENTE, coordinator=GEMEENTE)
    assert refused(world, WOCO, None, by_gemeente) == "not_coordinator"
    forged = replace(good, hit_notice=notice(world, signer=world.keys[GEMEENTE]))
    assert refused(world, GEMEENTE, None, forged) == "invalid_notice"
    closed = replace(good, hit_notice=notice(world, kind=broker_pb2.HIT_NOTICE_KIND_CLOSED))
    assert refused(world, GEMEENTE, None, closed) == "invalid_notice"
    addressed = replace(good, hit_notice=notice(world, recipient=GEMEENTE))
    assert refused(world, GEMEENTE, None, addressed) == "invalid_notice"
    # A member outside the hit; two members one of which the other may not see.
    outsider = replace(good, members=(RIEC, GEMEENTE, PROVINCIE))
    assert refused(world, GEMEENTE, None, outsider) == "not_in_hit"
    hidden = replace(
        good,
        members=(RIEC, GEMEENTE, POLITIE),
        hit_notice=notice(world, (GEMEENTE, POLITIE)),
    )
    assert refused(world, GEMEENTE, None, hidden) == "hidden_role"
    # Without the notice (a recipient it would tell too much) the coordinator's word counts.
    assert step(world, WOCO, None, replace(good, hit_notice=None)).hit_notice is None
    # ... but the coordinator itself must have one.
    assert refused(world, RIEC, None, replace(good, hit_notice=None)) == "invalid_notice"


@pytest.mark.parametrize(
    ("case_", "reason"),
    [
        ("member adds an action", "not_author"),
        ("member updates another's action", "not_author"),
        ("owner moves the deadline", "not_author"),
        ("owner not a member", "not_a_member"),
        ("unknown action", "unknown_action"),
        ("done back to planned", "invalid_change"),
        ("update changes the measure", "invalid_change"),
        ("update changes nothing", "invalid_change"),
        ("another coordinator", "not_author"),
        ("author no longer a member", "not_a_member"),
        ("removal of the coordinator", "invalid_change"),
        ("close without outcome", "invalid_change"),
        ("invite that removes", "invalid_change"),
    ],
)
def test_author_rights_and_change_rules(world: World, case_: str, reason: str) -> None:
    case = with_action(world)
    action = case.action(ACTION)
    assert action is not None
    if case_ == "member adds an action":
        change = change_by(GEMEENTE, ChangeKind.ACTION_ADD, action=replace(action, action_id=mid()))
    elif case_ == "member updates another's action":
        change = updated(case, WOCO, 1, status=ActionStatus.DONE)
    elif case_ == "owner moves the deadline":
        change = updated(case, GEMEENTE, 1, deadline=NOW + timedelta(days=30))
    elif case_ == "owner not a member":
        new = replace(action, action_id=mid(), owner=BELASTING)
        change = change_by(RIEC, ChangeKind.ACTION_ADD, 3, action=new)
    elif case_ == "unknown action":
        change = change_by(
            RIEC, ChangeKind.ACTION_UPDATE, 3, action=replace(action, action_id=mid())
        )
    elif case_ == "done back to planned":
        case = step(world, RIEC, case, updated(case, RIEC, 3, status=ActionStatus.DONE))
        change = updated(case, RIEC, 4, status=ActionStatus.PLANNED)
    elif case_ == "update changes the measure":
        change = updated(case, GEMEENTE, 1, measure="iets anders", note="x")
    elif case_ == "update changes nothing":
        change = updated(case, GEMEENTE, 1)
    elif case_ == "another coordinator":
        change = replace(updated(case, RIEC, 3, note="x"), coordinator=GEMEENTE)
    elif case_ == "author no longer a member":
        case = replace(case, members=(RIEC, WOCO))
        change = updated(case, GEMEENTE, 1, status=ActionStatus.DONE)
    elif case_ == "removal of the coordinator":
        change = change_by(RIEC, ChangeKind.MEMBER_REMOVE, 3, members=(GEMEENTE, WOCO))
    elif case_ == "close without outcome":
        change = change_by(RIEC, ChangeKind.CLOSE, 3, outcome=" ")
    else:
        change = change_by(
            RIEC,
            ChangeKind.INVITE,
            3,
            members=(RIEC, BELASTING),
            hit_group_id=GROUP,
            title="t",
            hit_notice=notice(world),
        )
    assert refused(world, RIEC, case, change) == reason


def test_the_owner_and_the_coordinator_update_an_action(world: World) -> None:
    case = with_action(world)
    case = step(world, RIEC, case, updated(case, GEMEENTE, 1, status=ActionStatus.IN_PROGRESS))
    case = step(world, RIEC, case, updated(case, RIEC, 3, deadline=NOW + timedelta(days=9)))
    action = case.action(ACTION)
    assert action is not None
    assert (action.status, action.deadline, action.updated_by) == (
        ActionStatus.IN_PROGRESS,
        NOW + timedelta(days=9),
        RIEC,
    )


def test_replays_are_refused_and_gaps_reported(world: World) -> None:
    case = with_action(world)
    first = updated(case, GEMEENTE, 1, status=ActionStatus.IN_PROGRESS)
    after = step(world, RIEC, case, first)
    assert refused(world, RIEC, after, first) == "replay"  # same sequence again
    again = replace(updated(after, GEMEENTE, 2, note="n"), message_id=first.message_id)
    assert refused(world, RIEC, after, again, seen=True) == "replay"  # same message id
    older = updated(after, GEMEENTE, 1, note="n")
    assert refused(world, RIEC, after, older) == "replay"
    skipped = cases.apply(
        world.covenant, RIEC, after, updated(after, GEMEENTE, 4, note="n"), now=NOW
    )
    assert isinstance(skipped, Applied)
    assert skipped.gap == 2
    # A late member's first message from an author is a baseline, not a gap.
    first_contact = cases.apply(
        world.covenant, RIEC, case, updated(case, GEMEENTE, 7, note="n"), now=NOW
    )
    assert isinstance(first_contact, Applied)
    assert first_contact.gap == 0
    future = replace(updated(case, GEMEENTE, 1, note="n"), issued_at=NOW + timedelta(minutes=5))
    assert refused(world, RIEC, case, future) == "issued_in_future"


def test_overdue_actions_and_the_board(world: World) -> None:
    late = with_action(world, deadline=NOW - timedelta(days=1))
    action = late.action(ACTION)
    assert action is not None
    assert action.overdue(NOW)
    assert not action.overdue(NOW - timedelta(days=2))
    assert not replace(action, status=ActionStatus.DONE).overdue(NOW)
    assert not replace(action, status=ActionStatus.CANCELLED).overdue(NOW)
    assert late.overdue(NOW) == (action,)
    later = replace(
        late,
        case_id=b"\x66" * 16,
        actions=(replace(action, deadline=NOW + timedelta(days=3)),),
    )
    done = replace(late, case_id=b"\x77" * 16, actions=(replace(action, status=ActionStatus.DONE),))
    elsewhere = replace(late, case_id=b"\x88" * 16, coordinator=GEMEENTE)
    entries = cases.board([later, late, done, elsewhere], RIEC, NOW)
    assert [(e.case.case_id, e.overdue) for e in entries] == [(CASE, True), (b"\x66" * 16, False)]
    assert [e.case.case_id for e in cases.board([later, late], RIEC, NOW, overdue_only=True)] == [
        CASE
    ]


def test_composers_refuse_bad_input_naming_the_field(world: World) -> None:
    def field_of(call: Callable[[], Any]) -> tuple[str | None, str]:
        with pytest.raises((InvalidInput, NotAllowed, NotFound, MessageTooLarge)) as error:
            call()
        return error.value.field, error.value.reason

    assert field_of(lambda: opened(world, invite=[PROVINCIE])) == ("invite[0]", "case.not_in_hit")
    assert field_of(lambda: opened(world, invite=[GEMEENTE, GEMEENTE])) == (
        "invite",
        "case.duplicate",
    )
    with_politie = notice(world, (GEMEENTE, POLITIE))
    assert field_of(
        lambda: cases.open_case(
            world.covenant,
            RIEC,
            with_politie,
            case_id=CASE,
            message_id=mid(),
            title="t",
            invite=[GEMEENTE, POLITIE],
            officer="a",
            now=NOW,
        )
    ) == ("invite[1]", "case.hidden_role")
    assert field_of(
        lambda: cases.open_case(
            world.covenant,
            GEMEENTE,
            notice(world, recipient=GEMEENTE),
            case_id=CASE,
            message_id=mid(),
            title="t",
            invite=[],
            officer="a",
            now=NOW,
        )
    ) == (None, "case.not_coordinator")
    assert (
        field_of(
            lambda: cases.open_case(
                world.covenant,
                RIEC,
                notice(world),
                case_id=CASE,
                message_id=mid(),
                title=" ",
                invite=[],
                officer="a",
                now=NOW,
            )
        )[0]
        == "title"
    )
    case = with_action(world)

    def add(**changes: Any) -> CaseChange:
        values: dict[str, Any] = {
            "message_id": mid(),
            "action_id": mid(),
            "owner": WOCO,
            "intervention_type": InterventionType.FISCAAL,
            "measure": "boekenonderzoek",
            "description": "",
            "deadline": NOW,
            "officer": "a",
            "now": NOW,
        }
        values.update(changes)
        return cases.add_action(world.covenant, RIEC, case, **values)

    assert add().action is not None
    assert field_of(lambda: add(owner=BELASTING))[0] == "action.owner"
    assert field_of(lambda: add(measure=""))[0] == "action.measure"
    assert field_of(lambda: add(description="x" * 5000))[0] == "action.description"
    assert field_of(lambda: add(deadline=datetime(2026, 1, 1)))[0] == "action.deadline"
    assert field_of(lambda: add(officer=""))[0] == "officer"
    assert field_of(
        lambda: cases.add_action(
            world.covenant,
            GEMEENTE,
            case,
            **{
                "message_id": mid(),
                "action_id": mid(),
                "owner": WOCO,
                "intervention_type": InterventionType.ZORG,
                "measure": "m",
                "description": "",
                "deadline": NOW,
                "officer": "a",
                "now": NOW,
            },
        )
    ) == ("case_id", "case.not_coordinator")

    def update(me: str, held: Case = case, **changes: Any) -> CaseChange:
        values: dict[str, Any] = {
            "message_id": mid(),
            "status": None,
            "deadline": None,
            "note": "",
            "officer": "b",
            "now": NOW,
        }
        values.update(changes)
        return cases.update_action(world.covenant, me, held, ACTION, **values)

    assert field_of(lambda: update(WOCO, status=ActionStatus.DONE)) == (
        "action_id",
        "case.not_owner",
    )
    assert field_of(lambda: update(GEMEENTE)) == ("status", "case.no_change")
    assert field_of(lambda: update(GEMEENTE, deadline=NOW + timedelta(days=1))) == (
        "deadline",
        "case.deadline",
    )
    removed = replace(case, access=Access.REMOVED)
    assert field_of(lambda: update(GEMEENTE, removed, note="x")) == ("case_id", "case.removed")
    closed = replace(case, state=CaseState.CLOSED, closed_at=NOW, outcome="o")
    assert field_of(lambda: update(GEMEENTE, closed, note="x")) == ("case_id", "case.closed")
    assert field_of(lambda: update(GEMEENTE, None, note="x")) == ("case_id", "not_found")

    def remove(me: str, parties: Sequence[str], held: Case = case) -> CaseChange:
        return cases.remove_members(
            world.covenant, me, held, parties, message_id=mid(), officer="a", now=NOW
        )

    assert set(remove(RIEC, [WOCO]).members) == {GEMEENTE, RIEC}
    assert field_of(lambda: remove(RIEC, [])) == ("parties", "invalid_input")
    assert field_of(lambda: remove(RIEC, [WOCO, BELASTING])) == ("parties[1]", "case.not_member")
    assert field_of(lambda: remove(RIEC, [RIEC])) == ("parties[0]", "case.coordinator")
    assert field_of(lambda: remove(RIEC, [WOCO, WOCO])) == ("parties", "case.duplicate")
    assert field_of(lambda: remove(RIEC, [""]))[0] == "parties[0]"
    assert field_of(lambda: remove(GEMEENTE, [WOCO])) == ("case_id", "case.not_coordinator")


def test_the_coordinators_notice_goes_only_where_it_tips_nobody_off(world: World) -> None:
    plain = notice(world)
    assert cases.notice_fits(world.covenant, GEMEENTE, plain)
    assert cases.notice_fits(world.covenant, BELASTING, plain)
    assert not cases.notice_fits(world.covenant, WOCO, plain)  # woco does not see categories
    with_politie = notice(world, (GEMEENTE, WOCO, POLITIE))
    assert not cases.notice_fits(world.covenant, GEMEENTE, with_politie)
    assert cases.notice_fits(world.covenant, POLITIE, with_politie)


def test_case_activity_records_have_no_subject() -> None:
    fact = CaseActivity("intervention", "bestuurlijk", "2026-12")
    assert set(vars(fact) if hasattr(fact, "__dict__") else fact.__slots__) <= {
        "kind",
        "intervention_type",
        "month",
    }


def _notice_of(world: World, group: bytes, members: Sequence[str], recipient: str = RIEC) -> Any:
    """``notice`` for another hit group, signed by the broker."""
    message = broker_pb2.HitNotice.FromString(notice(world, members, recipient=recipient).body)
    message.hit_group_id = group
    body = message.SerializeToString()
    return common_pb2.Signed(
        body=body,
        signer=world.covenant.broker.id,
        context=SignatureContext.HIT_NOTICE.value,
        signature=world.broker_keys.sign(SignatureContext.HIT_NOTICE, body),
    )


def test_a_case_on_a_component_invites_the_parties_of_any_of_its_hits(world: World) -> None:
    other = b"\x35" * 16
    first = _notice_of(world, GROUP, (GEMEENTE, WOCO))
    second = _notice_of(world, other, (WOCO, BELASTING))
    open_on = dict(case_id=CASE, message_id=mid(), title="Netwerk", officer="a@riec", now=NOW)
    # One hit alone does not show the belastingdienst: refused naming the invitee.
    with pytest.raises(InvalidInput) as alone:
        cases.open_case(world.covenant, RIEC, first, invite=[GEMEENTE, BELASTING], **open_on)
    assert alone.value.field == "invite[1]"
    change = cases.open_case(
        world.covenant,
        RIEC,
        first,
        invite=[GEMEENTE, BELASTING],
        linked_notices=[second],
        **open_on,
    )
    case = step(world, RIEC, None, change)
    assert case.linked_group_ids == (other,)
    # The message carries both notices; a member checks its members against both.
    received = cases.parse_change(change.to_proto().SerializeToString(), sender=RIEC)
    assert len(received.linked_notices) == 1
    assert step(world, BELASTING, None, received).members == (RIEC, GEMEENTE, BELASTING)
    # A member not shown by any attached notice, or a notice attached twice: refused.
    stranger = replace(received, members=(RIEC, GEMEENTE, BELASTING, WOCO, PROVINCIE))
    assert refused(world, GEMEENTE, None, stranger) == "not_in_hit"
    twice = replace(received, linked_notices=(first,))
    assert refused(world, GEMEENTE, None, twice) == "invalid_notice"
    forged = replace(received, linked_notices=(notice(world, signer=world.keys[WOCO]),))
    assert refused(world, GEMEENTE, None, forged) == "invalid_notice"
    with pytest.raises(InvalidInput) as repeated:
        cases.open_case(
            world.covenant, RIEC, first, invite=[GEMEENTE], linked_notices=[first], **open_on
        )
    assert repeated.value.field == "linked_hit_group_ids"


# --- part two: real daemons ----------------------------------------------------------------------

BSN = "111222333"
TITLE = "Casus TITEL-GEHEIM-7731"
MEASURE = "MAATREGEL-GEHEIM-4410"
NOTE = "NOTITIE-GEHEIM-9902"
OUTCOME = "UITKOMST-GEHEIM-1234"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cases-e2e")
    with running_cluster(root, "riec-cases", SPECS, [GEMEENTE, WOCO]) as cluster:
        for party in (GEMEENTE, WOCO, BELASTING):
            cluster.clients[party].add_signal(f"{party}-1", "woonfraude", [("bsn", BSN)])
        cluster.clients[PROVINCIE].add_signal("P-1", "woonfraude", [("kvk", "01234567")])
        yield cluster


def riec_hit(cluster: Cluster) -> bytes:
    hits = wait_for(
        "the RIEC's hit with three partners",
        lambda: [
            h
            for h in cluster.clients[RIEC].hits()
            if {m.party for m in h.members} >= {GEMEENTE, WOCO, BELASTING}
        ],
    )
    return bytes(hits[0].group_id)


def held(cluster: Cluster, party: str, case_id: bytes, check: Callable[[Any], bool]) -> Any:
    def found() -> Any:
        try:
            case = cluster.clients[party].case(case_id)
        except NotFound:
            return None
        return case if check(case) else None

    return wait_for(f"{party}'s copy of the case", found)


def case_events(cluster: Cluster, party: str, case_id: bytes) -> list[dict[str, Any]]:
    entries = cluster.nodes[party].repositories.shared.audit_entries(
        kind=AuditKind.CASE_EVENT, subject=case_id.hex()
    )
    return [dict(e.details) for e in entries]


def test_case_coordination_end_to_end(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    group = riec_hit(cluster)
    riec = cluster.clients[RIEC]
    officer = "a.analist@riec"

    # Only a coordinator opens; an outsider of the hit cannot be invited.
    wait_for("gemeente's hit", lambda: cluster.clients[GEMEENTE].hits())
    gemeente_group = bytes(cluster.clients[GEMEENTE].hits()[0].group_id)
    with pytest.raises(NotAllowed) as not_riec:
        cluster.clients[GEMEENTE].open_case(gemeente_group, "x", officer="g")
    assert not_riec.value.reason == "case.not_coordinator"
    with pytest.raises(InvalidInput) as outsider:
        riec.open_case(group, TITLE, officer=officer, invite=[GEMEENTE, PROVINCIE])
    assert (outsider.value.field, outsider.value.reason) == ("invite[1]", "case.not_in_hit")
    with pytest.raises(NotFound) as unknown:
        riec.open_case(b"\x01" * 16, TITLE, officer=officer)
    assert unknown.value.field == "hit_group_id"
    assert riec.cases() == []  # nothing stored

    case = riec.open_case(group, TITLE, officer=officer, invite=[GEMEENTE, WOCO])
    case_id = case.case_id
    assert (case.coordinator, case.members, case.state) == (
        RIEC,
        (GEMEENTE, RIEC, WOCO),
        CaseState.OPEN,
    )
    with pytest.raises(InvalidInput) as still_outside:
        riec.invite_to_case(case_id, [PROVINCIE], officer=officer)
    assert still_outside.value.field == "parties[0]"

    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    case = riec.add_action(
        case_id,
        owner=GEMEENTE,
        intervention_type="bestuurlijk",
        measure=MEASURE,
        deadline=yesterday,
        officer=officer,
    )
    late_action = case.actions[0].action_id
    with pytest.raises(InvalidInput) as bad_owner:
        riec.add_action(
            case_id,
            owner=BELASTING,
            intervention_type="fiscaal",
            measure="m",
            deadline=yesterday,
            officer=officer,
        )
    assert bad_owner.value.field == "action.owner"
    case = riec.invite_to_case(case_id, [BELASTING], officer=officer)
    case = riec.add_action(
        case_id,
        owner=BELASTING,
        intervention_type="fiscaal",
        measure="boekenonderzoek",
        deadline=datetime.now(UTC) + timedelta(days=30),
        officer=officer,
    )
    tax_action = next(a.action_id for a in case.actions if a.owner == BELASTING)

    board = riec.case_board()
    assert [(e.action.action_id, e.overdue) for e in board] == [
        (late_action, True),
        (tax_action, False),
    ]
    assert [e.action.action_id for e in riec.case_board(overdue_only=True)] == [late_action]

    # Each member's node holds the case; the late member caught up with the whole plan.
    for party in (GEMEENTE, WOCO, BELASTING):
        copy = held(cluster, party, case_id, lambda c: len(c.actions) == 2)
        assert copy.title == TITLE
        assert copy.members == (BELASTING, GEMEENTE, RIEC, WOCO)
    assert cluster.clients[PROVINCIE].cases() == []  # the outsider received nothing
    assert cluster.clients[POLITIE].cases() == []

    # A partner updates its own action from its node; not another's; a member adds nothing.
    gemeente = cluster.clients[GEMEENTE]
    gemeente.update_action(
        case_id, late_action, status="in_progress", note=NOTE, officer="b.bibob@gemeente"
    )
    with pytest.raises(NotAllowed) as not_owner:
        gemeente.update_action(case_id, tax_action, status="done", officer="b.bibob@gemeente")
    assert (not_owner.value.field, not_owner.value.reason) == ("action_id", "case.not_owner")
    with pytest.raises(NotAllowed):
        gemeente.add_action(
            case_id,
            owner=GEMEENTE,
            intervention_type="zorg",
            measure="m",
            deadline=yesterday,
            officer="b",
        )
    with pytest.raises(NotAllowed) as no_deadline:
        gemeente.update_action(
            case_id, late_action, deadline=yesterday + timedelta(days=5), officer="b"
        )
    assert no_deadline.value.field == "deadline"
    updated_ = held(
        cluster, RIEC, case_id, lambda c: c.action(late_action).status.value == "in_progress"
    )
    assert updated_.action(late_action).note == NOTE
    assert riec.case_board()[0].overdue  # in progress and late: still overdue
    held(cluster, BELASTING, case_id, lambda c: c.action(late_action).note == NOTE)

    # Only the coordinator removes, and only members; a refused removal stores nothing.
    before = len(riec.case(case_id).history)
    with pytest.raises(NotAllowed) as not_coordinator:
        gemeente.remove_from_case(case_id, [WOCO], officer="b.bibob@gemeente")
    assert (not_coordinator.value.field, not_coordinator.value.reason) == (
        "case_id",
        "case.not_coordinator",
    )
    with pytest.raises(InvalidInput) as not_member:
        riec.remove_from_case(case_id, [WOCO, PROVINCIE], officer=officer)
    assert (not_member.value.field, not_member.value.reason) == ("parties[1]", "case.not_member")
    with pytest.raises(InvalidInput) as no_officer:
        riec.remove_from_case(case_id, [WOCO], officer="")
    assert no_officer.value.field == "officer"
    with pytest.raises(InvalidInput) as bad_id:
        riec.remove_from_case(b"\x01", [WOCO], officer=officer)
    assert bad_id.value.field == "case_id"
    assert len(riec.case(case_id).history) == before
    assert len(gemeente.case(case_id).history) == before
    assert WOCO in cluster.clients[WOCO].case(case_id).members

    # A removed member gets no further updates, and its node refuses changes.
    removed_case = riec.remove_from_case(case_id, [WOCO], officer=officer)
    assert removed_case.members == (BELASTING, GEMEENTE, RIEC)
    assert len(riec.case(case_id).history) == before + 1
    wait_for(
        "woco's removal",
        lambda: cluster.nodes[WOCO].repositories.cases.case(case_id).access is Access.REMOVED,  # type: ignore[union-attr]
    )
    with pytest.raises(NotAllowed) as removed:
        cluster.clients[WOCO].update_action(case_id, late_action, note="x", officer="w")
    assert removed.value.reason == "case.removed"
    riec.update_action(case_id, tax_action, status="done", officer=officer)
    closed = riec.close_case(case_id, outcome=OUTCOME, officer=officer)
    assert closed.state is CaseState.CLOSED
    for party in (GEMEENTE, BELASTING):
        copy = held(cluster, party, case_id, lambda c: c.state is CaseState.CLOSED)
        assert copy.outcome == OUTCOME
    time.sleep(0.5)
    woco = cluster.clients[WOCO].case(case_id)
    assert woco.state is CaseState.OPEN
    assert woco.members == (BELASTING, GEMEENTE, RIEC)
    assert woco.action(tax_action).status.value == "planned"  # kept, read-only, not updated
    with pytest.raises(NotAllowed) as closed_now:
        riec.add_action(
            case_id,
            owner=GEMEENTE,
            intervention_type="zorg",
            measure="m",
            deadline=yesterday,
            officer=officer,
        )
    assert closed_now.value.reason == "case.closed"
    assert riec.case_board() == []

    # Every change is in the audit logs, without free text.
    riec_events = case_events(cluster, RIEC, case_id)
    assert [e["kind"] for e in riec_events] == [
        "open",
        "action_add",
        "invite",
        "action_add",
        "action_update",  # gemeente's, received
        "member_remove",
        "action_update",
        "close",
    ]
    assert [e["received"] for e in riec_events].count(True) == 1
    assert riec_events[-1]["state"] == "closed"
    assert [e["kind"] for e in case_events(cluster, WOCO, case_id)] == [
        "open",
        "action_add",
        "invite",
        "action_add",
        "action_update",
        "member_remove",
    ]
    for party in (RIEC, GEMEENTE, WOCO, BELASTING):
        exported = "\n".join(
            repr(dict(e.details)) for e in cluster.nodes[party].repositories.shared.audit_entries()
        )
        for secret in (TITLE, MEASURE, NOTE, OUTCOME):
            assert secret not in exported

    # The broker's database and logs hold no title, measure, note or outcome in the clear.
    files = [
        cluster.broker_database,
        cluster.broker_database.with_name(cluster.broker_database.name + "-wal"),
    ]
    scanned = b"".join(p.read_bytes() for p in files if p.exists())
    assert scanned
    printed = capsys.readouterr()
    for secret in (TITLE, MEASURE, NOTE, OUTCOME, "TITEL-GEHEIM", "GEHEIM"):
        assert secret.encode() not in scanned
        assert secret not in printed.out + printed.err

    # The coordinator's accountability facts: opened, closed, two interventions.
    month = datetime.now(UTC).strftime("%Y-%m")
    facts = cluster.nodes[RIEC].repositories.picture.case_activity(month, month)
    assert sorted((f.kind, f.intervention_type) for f in facts) == [
        ("closed", None),
        ("intervention", "bestuurlijk"),
        ("intervention", "fiscaal"),
        ("opened", None),
    ]
    assert cluster.nodes[GEMEENTE].repositories.picture.case_activity(month, month) == []
    with pytest.raises(InvalidInput) as bad_month:
        cluster.nodes[RIEC].repositories.picture.case_activity("2026-13", month)
    assert bad_month.value.field == "first_month"


def test_officers_named_with_spaces_and_accents_act_and_are_shown_as_given(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """An officer's identity in any script and with spaces is taken in every case call,
    shown by ``case show`` as given, and names this node's own case events in its audit
    log; an invalid one is refused naming ``officer``, and nothing is sent."""
    from samenloop.policies.cli import main  # the CLI as a partner runs it

    riec = cluster.clients[RIEC]
    group = riec_hit(cluster)
    for bad in ("  ", "a\x1b[2J", "a\u202eb", "ü" * 33):
        with pytest.raises(InvalidInput) as caught:
            riec.open_case(group, "Vierde casus", officer=bad, invite=[GEMEENTE])
        assert caught.value.field == "officer"
    case = riec.open_case(group, "Vierde casus", officer="Jürgen de Vries", invite=[GEMEENTE])
    riec.add_action(
        case.case_id,
        owner=GEMEENTE,
        intervention_type="bestuurlijk",
        measure="bibob-toets",
        deadline=datetime.now(UTC) + timedelta(days=30),
        officer="Bd-Teamleider-7 ",
    )
    copy = held(cluster, GEMEENTE, case.case_id, lambda c: len(c.actions) == 1)
    assert [e.author_officer for e in copy.history] == ["Jürgen de Vries", "Bd-Teamleider-7 "]
    # The RIEC's own events name its officers; the gemeente's name the author party (the
    # officer only in plain ASCII, as audit details are).
    own = cluster.nodes[RIEC].repositories.shared.audit_entries(
        kind=AuditKind.CASE_EVENT, subject=case.case_id.hex()
    )
    assert [e.actor for e in own] == ["Jürgen de Vries", "Bd-Teamleider-7 "]
    assert all("officer" not in e.details for e in own)
    received = cluster.nodes[GEMEENTE].repositories.shared.audit_entries(
        kind=AuditKind.CASE_EVENT, subject=case.case_id.hex()
    )
    assert [(e.actor, e.details.get("officer")) for e in received] == [
        (RIEC, None),
        (RIEC, "Bd-Teamleider-7 "),
    ]
    capsys.readouterr()
    gemeente = str(cluster.provisioned.node_configs[GEMEENTE])
    assert main(["case", "show", case.case_id.hex(), "--node", gemeente]) == 0
    shown = capsys.readouterr().out
    assert f"{RIEC} (Jürgen de Vries): " in shown
    assert f"{RIEC} (Bd-Teamleider-7 ): " in shown


def test_a_replayed_case_message_is_stored_once(cluster: Cluster) -> None:
    riec = cluster.clients[RIEC]
    group = riec_hit(cluster)
    case = riec.open_case(group, "Tweede casus", officer="a", invite=[GEMEENTE])
    held(cluster, GEMEENTE, case.case_id, lambda c: True)
    import sqlalchemy as sa

    from samenloop.node.daemon import models  # the envelope as the RIEC's node sent it

    e = models.EnvelopeOutboxItem
    with cluster.nodes[RIEC].repositories.engine.connect() as conn:
        sealed = (
            conn.execute(sa.select(e.sealed).where(e.recipient == GEMEENTE).order_by(e.id.desc()))
            .scalars()
            .first()
        )
    assert sealed is not None
    with cluster.nodes[RIEC].repositories.engine.begin() as conn:
        conn.execute(
            sa.insert(e).values(
                client_message_id=secrets.token_bytes(16),
                recipient=GEMEENTE,
                sealed=sealed,
                created_at=datetime.now(UTC),
            )
        )
    cluster.nodes[RIEC].uplink.wake.set()
    events = wait_for(
        "the replay's refusal",
        lambda: [e for e in case_events(cluster, GEMEENTE, case.case_id) if e.get("refused")],
    )
    assert events[0]["refused"] == "replay"
    assert len(cluster.clients[GEMEENTE].case(case.case_id).history) == 1


def test_the_coordinator_removes_a_member_from_the_command_line(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    from samenloop.policies.cli import main  # the CLI as a partner runs it

    riec = cluster.clients[RIEC]
    case = riec.open_case(riec_hit(cluster), "Derde casus", officer="a", invite=[GEMEENTE, WOCO])
    case_id = case.case_id
    for party in (GEMEENTE, WOCO):
        held(cluster, party, case_id, lambda c: True)
    riec_api = str(cluster.provisioned.node_configs[RIEC])
    prefix = case_id.hex()[:8]

    def run(node: str, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["case", "remove", prefix, *argv, "--officer", "a@riec", "--node", node])
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    # A non-coordinator cannot remove; a non-member is refused naming the field.
    code, _, err = run(str(cluster.provisioned.node_configs[GEMEENTE]), WOCO)
    assert code != 0
    assert "case_id" in err
    assert "only the case's coordinator" in err
    code, _, err = run(riec_api, BELASTING)
    assert code != 0
    assert "parties[0]" in err
    assert len(riec.case(case_id).history) == 1  # nothing stored

    code, out, _ = run(riec_api, WOCO, "--json")
    assert code == 0
    shown = json.loads(out[out.index("{\n") :])  # after any of the nodes' log lines
    assert shown["case_id"] == case_id.hex()
    assert shown["members"] == [GEMEENTE, RIEC]
    wait_for(
        "woco's removal",
        lambda: cluster.nodes[WOCO].repositories.cases.case(case_id).access is Access.REMOVED,  # type: ignore[union-attr]
    )
    held(cluster, GEMEENTE, case_id, lambda c: c.members == (GEMEENTE, RIEC))

    # After the removal woco receives nothing: gemeente gets the next action, woco does not.
    riec.add_action(
        case_id,
        owner=GEMEENTE,
        intervention_type="zorg",
        measure="huisbezoek",
        deadline=datetime.now(UTC) + timedelta(days=7),
        officer="a",
    )
    held(cluster, GEMEENTE, case_id, lambda c: len(c.actions) == 1)
    time.sleep(0.5)
    woco = cluster.clients[WOCO].case(case_id)
    assert woco.actions == ()
    assert woco.members == (GEMEENTE, RIEC)
    assert [e["kind"] for e in case_events(cluster, WOCO, case_id)] == ["open", "member_remove"]
    with pytest.raises(NotAllowed) as refused_:
        cluster.clients[WOCO].update_action(case_id, b"\x02" * 16, note="x", officer="w")
    assert refused_.value.reason == "case.removed"
