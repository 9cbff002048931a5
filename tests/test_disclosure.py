"""Disclosure (DESIGN flow 5): the sans-IO core and the owner's desk, directly.

The core (:mod:`samenloop.node.disclosure.protocol`) is driven with real keys and
broker-signed notices and an in-memory :class:`Facts`: every refusal reason
and its message, every way the hit proof fails (one message for all), a grant
with withheld fields, four eyes (pending, approve, deny, the asking officer
refused however the name is spelled, approval failing closed), quotas per rule
period and per day, forged envelopes, every malformed request and answer.
Then the path of a received request: built and sealed by the requester,
received by the owner's desk, decided pending and stored with its hit group on
SQLite, and approved, or refused at approval because the owner's notice of now
says the hit closed or the requester left. The same through real daemons is in
tests/test_disclosure_daemons.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from samenloop.node.daemon.repositories import Repositories
from samenloop.node.disclosure import protocol as disclosure
from samenloop.node.disclosure.desk import DisclosureDesk
from samenloop.node.disclosure.models import DisclosureState
from samenloop.node.disclosure.protocol import (
    IncomingRequest,
    Outcome,
    PendingRequest,
    SignalFacts,
    Verdict,
)
from samenloop.node.identifiers import person_score
from samenloop.node.identifiers.person_keys import PersonKeyKind
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.node.signals import models
from samenloop.node.signals.store import NewSignal
from samenloop.policies import database
from samenloop.policies.covenant import Covenant, Role
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import (
    CovenantStale,
    DecryptionFailed,
    InvalidInput,
    InvalidSignature,
    MessageTooLarge,
    NotAllowed,
    NotFound,
)
from samenloop.policies.policy import example_policy
from samenloop.policies.rules import Refusal
from samenloop.v1 import broker_pb2, common_pb2, disclosure_pb2

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
GEMEENTE, WOCO, POLITIE = "gemeente", "woco", "politie"
SPECS = (
    PartySpec(GEMEENTE, "Gemeente Test", Role.GEMEENTE),
    PartySpec(WOCO, "Woningcorporatie Test", Role.WONINGCORPORATIE),
    PartySpec(POLITIE, "Politie Test", Role.POLITIE),
)
PER_DAY = 5
BIBOB_PER_PERIOD = 2
DETAILS = {"naam": "J. de Vries", "adres": "Dorpsstraat 1", "omschrijving": "leegstand"}


def small_quota_policy() -> Any:
    """The example rules, with small quotas so that tests reach them."""
    policy = example_policy()
    release = tuple(
        dataclasses.replace(rule, max_per_period=BIBOB_PER_PERIOD)
        if rule.purpose == "bibob"
        else rule
        for rule in policy.release
    )
    quotas = dataclasses.replace(policy.quotas, disclosure_requests_per_day=PER_DAY)
    return dataclasses.replace(policy, release=release, quotas=quotas)


# --- part one: the sans-IO core -----------------------------------------------------------


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
    root = tmp_path_factory.mktemp("disclosure-core")
    provisioned = provision(
        root, "riec-disclosure", SPECS, [GEMEENTE, WOCO], 2, now=NOW, policy=small_quota_policy()
    )
    return World(
        provisioned,
        {p.id: PartyKeys.load(root / p.id / "party-keys.json") for p in SPECS},
        PartyKeys.load(root / "broker" / "signing-keys.json"),
    )


REF = b"\x11" * 16
OTHER_REF = b"\x22" * 16
GROUP = b"\x33" * 16
#: The hit proof key of the subject of the hit, as requester and owner both derive it.
PROOF_KEY = b"\x77" * 32


def notice(
    world: World,
    *,
    recipient: str = GEMEENTE,
    members: Sequence[tuple[str, Sequence[bytes]]] = ((WOCO, (REF,)),),
    kind: broker_pb2.HitNoticeKind.ValueType = broker_pb2.HIT_NOTICE_KIND_NEW,
    signer: PartyKeys | None = None,
    covenant_id: str | None = None,
    revision: int = 1,
    own_refs: Sequence[bytes] = (b"\x44" * 16,),
) -> common_pb2.Signed:
    """A hit notice as the broker signs it (or as ``signer`` forges it)."""
    message = broker_pb2.HitNotice(
        covenant_id=covenant_id or world.covenant.id,
        covenant_version=1,
        hit_group_id=GROUP,
        revision=revision,
        kind=kind,
        recipient=recipient,
        visibility=broker_pb2.HitVisibility(parties=True, roles=True, party_count=True),
        own_signal_refs=list(own_refs),
    )
    for party, refs in members:
        message.members.add(party=party, signal_refs=list(refs))
    body = message.SerializeToString()
    key = signer or world.broker_keys
    return common_pb2.Signed(
        body=body,
        signer=world.covenant.broker.id,
        context=SignatureContext.HIT_NOTICE.value,
        signature=key.sign(SignatureContext.HIT_NOTICE, body),
    )


def incoming(
    world: World,
    *,
    requester: str = GEMEENTE,
    owner: str = WOCO,
    hit_notice: common_pb2.Signed | None = None,
    ref: bytes = REF,
    purpose: str = "adresfraude",
    fields: Sequence[str] = ("naam", "adres"),
    officer: str = "a.asker@gemeente.nl",
    now: datetime = NOW,
    covenant: Covenant | None = None,
    proof_key: bytes = PROOF_KEY,
) -> IncomingRequest:
    """A request built, sealed, opened and parsed as the two nodes do it."""
    _, envelope = disclosure.build_request(
        world.keys[requester],
        covenant or world.covenant,
        hit_notice or notice(world, recipient=requester),
        request_id=secrets.token_bytes(16),
        owner=owner,
        signal_ref=ref,
        purpose=purpose,
        fields=fields,
        officer=officer,
        justification="onderzoek",
        proof_key=proof_key,
        now=now,
    )
    context, body = disclosure.open_envelope(world.keys[owner], world.covenant, envelope.sealed)
    assert context is SignatureContext.DISCLOSURE_REQUEST
    return disclosure.parse_request(body, sender=requester, me=owner)


@dataclass
class Facts:
    """The owner's records, in memory."""

    seen: set[bytes] = field(default_factory=set)
    signals: dict[bytes, SignalFacts] = field(default_factory=dict)
    proof_keys: dict[bytes, bytes] = field(default_factory=dict)
    own_refs: dict[bytes, frozenset[bytes]] = field(default_factory=dict)
    closed: set[bytes] = field(default_factory=set)
    members: dict[bytes, frozenset[str]] = field(default_factory=dict)
    requests: int = 0
    grants: int = 0
    #: (ref, requester) -> the kinds of a probable person hit; absent: not a person key.
    person: dict[tuple[bytes, str], tuple[frozenset[PersonKeyKind], frozenset[PersonKeyKind]]] = (
        field(default_factory=dict)
    )

    def disclosure_seen(self, request_id: bytes, /) -> bool:
        return request_id in self.seen

    def signal_facts(self, signal_ref: bytes, /) -> SignalFacts | None:
        return self.signals.get(signal_ref)

    def hit_proof_key(self, signal_ref: bytes, /) -> bytes | None:
        return self.proof_keys.get(signal_ref)

    def hit_own_refs(self, group_id: bytes, /) -> frozenset[bytes]:
        return self.own_refs.get(group_id, frozenset())

    def hit_closed(self, group_id: bytes, /) -> bool:
        return group_id in self.closed

    def hit_members(self, group_id: bytes, /) -> frozenset[str] | None:
        return self.members.get(group_id)

    def person_kinds(
        self, signal_ref: bytes, party: str, /
    ) -> tuple[frozenset[PersonKeyKind], frozenset[PersonKeyKind]] | None:
        return self.person.get((signal_ref, party))

    def requests_since(self, requester: str, since: datetime, /) -> int:
        return self.requests

    def grants_since(
        self, requester: str, purpose: str, rule_category: str, since: datetime, /
    ) -> int:
        return self.grants


def facts(category: str = "woonfraude", active: bool = True, **details: str) -> Facts:
    """The owner holds REF (with its proof key), and its own notice of GROUP lists it."""
    return Facts(
        signals={REF: SignalFacts(7, category, active, details or dict(DETAILS))},
        proof_keys={REF: PROOF_KEY},
        own_refs={GROUP: frozenset({REF})},
    )


def decide(world: World, request: IncomingRequest, owner_facts: Facts) -> Verdict:
    return disclosure.decide(world.covenant, WOCO, request, owner_facts, now=NOW)


def test_a_request_is_granted_exactly_the_allowed_fields_that_exist(world: World) -> None:
    request = incoming(world, fields=("naam", "adres", "dossier"))
    verdict = decide(world, request, facts(naam="J. de Vries", omschrijving="x"))
    assert verdict.outcome is Outcome.GRANTED
    # "adres" is allowed but the signal has none; "dossier" is not allowed.
    assert dict(verdict.values or {}) == {"naam": "J. de Vries"}
    assert verdict.withheld == ("dossier",)
    assert (verdict.rule_category, verdict.signal_id, verdict.category) == (
        "woonfraude",
        7,
        "woonfraude",
    )


def _replayed(world: World) -> tuple[IncomingRequest, Facts]:
    request = incoming(world)
    return request, Facts(seen={request.request_id}, signals=facts().signals)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("replay", Refusal.REPLAY),
        ("newer covenant", Refusal.COVENANT_MISMATCH),
        ("issued in the future", Refusal.NOT_ALLOWED),
        ("notice signed by another key", Refusal.INVALID_NOTICE),
        ("notice addressed to another party", Refusal.INVALID_NOTICE),
        ("notice of another covenant", Refusal.INVALID_NOTICE),
        ("ref not listed for the owner", Refusal.NOT_IN_HIT),
        ("owner not in the notice", Refusal.NOT_IN_HIT),
        ("owner holds no such signal", Refusal.NOT_IN_HIT),
        ("notice closed", Refusal.HIT_CLOSED),
        ("hit closed at the owner", Refusal.HIT_CLOSED),
        ("signal withdrawn", Refusal.HIT_CLOSED),
        ("daily quota used", Refusal.QUOTA_EXCEEDED),
        ("unknown purpose", Refusal.UNKNOWN_PURPOSE),
        ("no rule for the role", Refusal.NOT_ALLOWED),
        ("no allowed field", Refusal.NOT_ALLOWED),
        ("rule's period quota used", Refusal.QUOTA_EXCEEDED),
    ],
)
def test_every_refusal_reason(world: World, case: str, reason: Refusal) -> None:
    owner_facts = facts()
    if case == "replay":
        request, owner_facts = _replayed(world)
    elif case == "newer covenant":
        newer = dataclasses.replace(world.covenant, version=2)
        request = incoming(world, covenant=newer)
    elif case == "issued in the future":
        request = incoming(world, now=NOW + timedelta(minutes=5))
    elif case == "notice signed by another key":
        request = incoming(world, hit_notice=notice(world, signer=world.keys[GEMEENTE]))
    elif case == "notice addressed to another party":
        request = incoming(world, hit_notice=notice(world, recipient=POLITIE))
    elif case == "notice of another covenant":
        request = incoming(world, hit_notice=notice(world, covenant_id="riec-elders"))
    elif case == "ref not listed for the owner":
        request = incoming(world, ref=OTHER_REF)
        owner_facts.signals[OTHER_REF] = owner_facts.signals[REF]
    elif case == "owner not in the notice":
        request = incoming(world, hit_notice=notice(world, members=[(POLITIE, [REF])]))
    elif case == "owner holds no such signal":
        request, owner_facts = incoming(world), Facts()
    elif case == "notice closed":
        request = incoming(world, hit_notice=notice(world, kind=broker_pb2.HIT_NOTICE_KIND_CLOSED))
    elif case == "hit closed at the owner":
        request, owner_facts.closed = incoming(world), {GROUP}
    elif case == "signal withdrawn":
        request, owner_facts = incoming(world), facts(active=False)
    elif case == "daily quota used":
        request, owner_facts.requests = incoming(world), PER_DAY
    elif case == "unknown purpose":
        request = incoming(world, purpose="nieuwsgierigheid")
    elif case == "no rule for the role":
        # politie has no release rule; its notice shows woco.
        request = incoming(world, requester=POLITIE)
    elif case == "no allowed field":
        request = incoming(world, fields=("dossier",))
    else:
        request, owner_facts.grants = incoming(world, purpose="bibob"), BIBOB_PER_PERIOD
    verdict = decide(world, request, owner_facts)
    assert verdict.outcome is Outcome.REFUSED
    assert verdict.reason is reason, verdict.message
    assert verdict.values is None
    assert verdict.fields == ()
    assert verdict.message == REFUSAL_MESSAGES[case]


_NOT_THE_BROKERS = "the hit notice is not the broker's, or not for this covenant and requester"
_CLOSED = "the hit is closed or the signal withdrawn"
#: What the requester's officer reads for each case of test_every_refusal_reason.
REFUSAL_MESSAGES = {
    "replay": "this request id was seen before",
    "newer covenant": "the owner holds covenant riec-disclosure version 1; "
    "retry once it has caught up",
    "issued in the future": "the request is issued in the future: check the clock",
    "notice signed by another key": _NOT_THE_BROKERS,
    "notice addressed to another party": _NOT_THE_BROKERS,
    "notice of another covenant": _NOT_THE_BROKERS,
    "ref not listed for the owner": disclosure.NOT_PROVEN,
    "owner not in the notice": disclosure.NOT_PROVEN,
    "owner holds no such signal": disclosure.NOT_PROVEN,
    "notice closed": _CLOSED,
    "hit closed at the owner": _CLOSED,
    "signal withdrawn": _CLOSED,
    "daily quota used": f"the covenant allows {PER_DAY} disclosure requests per party per day",
    "unknown purpose": "'nieuwsgierigheid' is not a purpose of this covenant",
    "no rule for the role": "the covenant releases nothing to a politie for 'adresfraude' "
    "on a signal of this category",
    "no allowed field": "none of the fields asked for may be released; allowed: naam, adres",
    "rule's period quota used": f"at most {BIBOB_PER_PERIOD} releases per 30 days under this rule",
}


def test_a_stale_owner_refuses_covenant_stale_after_the_replay_check(world: World) -> None:
    """An owner that holds no unexpired covenant timestamp cannot tell whether the
    requester is still a party: it refuses before any other rule, releasing nothing; a
    replay is still only recorded (REPLAY comes first)."""
    why = "the covenant timestamp for version 1 expired"
    verdict = disclosure.decide(world.covenant, WOCO, incoming(world), facts(), now=NOW, stale=why)
    assert (verdict.outcome, verdict.reason, verdict.message) == (
        Outcome.REFUSED,
        Refusal.COVENANT_STALE,
        why,
    )
    assert verdict.values is None
    request, owner_facts = _replayed(world)
    replayed = disclosure.decide(world.covenant, WOCO, request, owner_facts, now=NOW, stale=why)
    assert replayed.reason is Refusal.REPLAY
    assert (
        disclosure.refusal_from_proto(disclosure.refusal_to_proto(Refusal.COVENANT_STALE))
        is Refusal.COVENANT_STALE
    )


def _with_proof(request: IncomingRequest, proof: bytes) -> IncomingRequest:
    return dataclasses.replace(request, hit_proof=proof)


def _proof_of(request: IncomingRequest, key: bytes = PROOF_KEY, **changes: Any) -> bytes:
    """The hit proof of ``request`` under ``key``, with some of what it binds changed."""
    bound: dict[str, Any] = {
        "covenant_id": request.covenant_id,
        "request_id": request.request_id,
        "requester": request.requester,
        "owner": request.owner,
        "hit_group_id": GROUP,
        "signal_ref": request.signal_ref,
    }
    bound.update(changes)
    return disclosure.hit_proof(key, **bound)


@pytest.mark.parametrize(
    "case",
    [
        "the notice does not list the ref",
        "the owner holds no such signal",
        "the owner's own notice does not list the ref",
        "the owner holds no notice of the group",
        "the owner's key is missing (tokenised before hit proofs)",
        "no proof",
        "a proof under another subject's key",
        "a proof of another request",
        "a proof for another requester",
        "a proof for another owner",
        "a proof for another group",
        "a proof for another ref",
        "a proof for another covenant",
        "a truncated proof",
    ],
)
def test_the_hit_proof_fails_alike_for_every_reason(world: World, case: str) -> None:
    """Each of the five proof rules refuses, NOT_IN_HIT, with one message; and before
    HIT_CLOSED, so that a party without the subject learns nothing of the owner's signal."""
    request, owner_facts = incoming(world), facts(active=False)  # withdrawn: HIT_CLOSED if proven
    if case == "the notice does not list the ref":
        request = incoming(world, ref=OTHER_REF)
        owner_facts.signals[OTHER_REF] = owner_facts.signals[REF]
        owner_facts.proof_keys[OTHER_REF] = PROOF_KEY
        owner_facts.own_refs[GROUP] = frozenset({REF, OTHER_REF})
    elif case == "the owner holds no such signal":
        del owner_facts.signals[REF]
    elif case == "the owner's own notice does not list the ref":
        owner_facts.own_refs[GROUP] = frozenset({OTHER_REF})
    elif case == "the owner holds no notice of the group":
        owner_facts.own_refs.clear()
    elif case == "the owner's key is missing (tokenised before hit proofs)":
        owner_facts.proof_keys.clear()
    elif case == "no proof":
        request = _with_proof(request, b"")
    elif case == "a proof under another subject's key":
        request = incoming(world, proof_key=b"\x78" * 32)
    elif case == "a truncated proof":
        request = _with_proof(request, request.hit_proof[:16])
    else:
        what = (
            case.removeprefix("a proof ").removeprefix("for another ").removeprefix("of another ")
        )
        change = {
            "request": {"request_id": b"\x01" * 16},
            "requester": {"requester": POLITIE},
            "owner": {"owner": POLITIE},
            "group": {"hit_group_id": b"\x02" * 16},
            "ref": {"signal_ref": OTHER_REF},
            "covenant": {"covenant_id": "riec-elders"},
        }[what]
        request = _with_proof(request, _proof_of(request, **change))
    verdict = decide(world, request, owner_facts)
    assert (verdict.outcome, verdict.reason, verdict.message) == (
        Outcome.REFUSED,
        Refusal.NOT_IN_HIT,
        disclosure.NOT_PROVEN,
    )
    assert verdict.values is None
    assert verdict.signal_id is None  # the refusal does not name the owner's signal either


def test_a_probable_person_hit_below_the_disclosure_score_is_refused(world: World) -> None:
    request = incoming(world)
    assert request.person_score is None
    weak = frozenset({PersonKeyKind.PHONETIC_DATE, PersonKeyKind.NAMES_YEAR_MONTH})
    owner_facts = facts()
    owner_facts.person[(REF, GEMEENTE)] = (weak, weak)
    verdict = decide(world, request, owner_facts)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.SCORE_TOO_LOW)
    assert "41.7 bits" in verdict.message
    assert f"{person_score.DISCLOSURE_THRESHOLD:.1f}" in verdict.message
    assert verdict.values is None
    # The owner's signal has every kind: the seven that did not agree count against it.
    owner_facts.person[(REF, GEMEENTE)] = (weak, frozenset(PersonKeyKind))
    lower = decide(world, request, owner_facts)
    expected = person_score.score(weak, frozenset(PersonKeyKind))
    assert expected < 41.7
    assert f"{expected:.1f} bits" in lower.message
    # Every kind agreeing: far above the covenant's default disclosure score.
    owner_facts.person[(REF, GEMEENTE)] = (frozenset(PersonKeyKind), frozenset(PersonKeyKind))
    assert decide(world, request, owner_facts).outcome is Outcome.GRANTED
    # ... unless the owner asks more in its own node.toml.
    higher = disclosure.decide(
        world.covenant, WOCO, request, owner_facts, now=NOW, min_person_score=500.0
    )
    assert (higher.reason, "500.0" in higher.message) == (Refusal.SCORE_TOO_LOW, True)
    # The requester's score is carried and shown, never trusted.
    _, envelope = disclosure.build_request(
        world.keys[GEMEENTE],
        world.covenant,
        notice(world, recipient=GEMEENTE),
        request_id=secrets.token_bytes(16),
        owner=WOCO,
        signal_ref=REF,
        purpose="adresfraude",
        fields=("naam",),
        officer="a.asker@gemeente.nl",
        justification="onderzoek",
        proof_key=PROOF_KEY,
        now=NOW,
        person_score=999.0,
    )
    _, body = disclosure.open_envelope(world.keys[WOCO], world.covenant, envelope.sealed)
    claimed = disclosure.parse_request(body, sender=GEMEENTE, me=WOCO)
    assert claimed.person_score == 999.0
    owner_facts.person[(REF, GEMEENTE)] = (weak, weak)
    refused = decide(world, claimed, owner_facts)
    assert refused.reason is Refusal.SCORE_TOO_LOW
    assert "the requester's: 999.0" in refused.message


def test_a_proven_request_goes_on_to_the_next_rules(world: World) -> None:
    request = incoming(world)
    assert request.hit_proof == _proof_of(request)
    assert len(request.hit_proof) == disclosure.HIT_PROOF_BYTES
    verdict = decide(world, request, facts(active=False))
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.HIT_CLOSED)
    assert decide(world, request, facts()).outcome is Outcome.GRANTED


def test_a_request_whose_group_is_not_the_notices_is_refused(world: World) -> None:
    request = incoming(world)
    for group in (None, b"\x02" * 16):
        verdict = decide(world, dataclasses.replace(request, hit_group_id=group), facts())
        assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.INVALID_NOTICE)


def test_quota_per_period_and_per_day_allow_up_to_the_limit(world: World) -> None:
    owner_facts = facts()
    owner_facts.requests = PER_DAY - 1
    owner_facts.grants = BIBOB_PER_PERIOD - 1
    assert decide(world, incoming(world), owner_facts).outcome is Outcome.GRANTED
    assert decide(world, incoming(world, purpose="bibob"), owner_facts).outcome is Outcome.PENDING


def _pending(request: IncomingRequest) -> PendingRequest:
    return PendingRequest(
        request_id=request.request_id,
        requester=request.requester,
        signal_ref=request.signal_ref,
        hit_group_id=GROUP,
        purpose=request.purpose,
        fields=request.fields,
        requester_officer=request.officer,
        decided_by=None,
    )


def test_four_eyes_pending_then_approved_by_a_second_officer(world: World) -> None:
    request = incoming(world, purpose="bibob", fields=("naam", "omschrijving", "adres"))
    owner_facts = facts()
    verdict = decide(world, request, owner_facts)
    assert verdict.outcome is Outcome.PENDING
    assert verdict.values is None  # nothing released while pending
    pending = _pending(request)

    with pytest.raises(NotAllowed) as same:
        disclosure.approve(world.covenant, pending, request.officer, owner_facts, me=WOCO, now=NOW)
    assert (same.value.field, same.value.reason) == ("officer", "disclosure.same_officer")
    already = dataclasses.replace(pending, decided_by="b.tweede@woco.nl")
    with pytest.raises(NotAllowed):
        disclosure.approve(
            world.covenant, already, "b.tweede@woco.nl", owner_facts, me=WOCO, now=NOW
        )

    granted = disclosure.approve(
        world.covenant, pending, "b.tweede@woco.nl", owner_facts, me=WOCO, now=NOW
    )
    assert granted.outcome is Outcome.GRANTED
    assert dict(granted.values or {}) == {"naam": DETAILS["naam"], "omschrijving": "leegstand"}
    assert granted.withheld == ("adres",)


def test_approval_decides_again_under_the_facts_of_now(world: World) -> None:
    request = incoming(world, purpose="bibob", fields=("naam",))
    withdrawn = facts(active=False)
    verdict = disclosure.approve(
        world.covenant, _pending(request), "b@woco", withdrawn, me=WOCO, now=NOW
    )
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.HIT_CLOSED)
    # A covenant version that no longer has the rule refuses too.
    policy = world.covenant.policy
    stricter = dataclasses.replace(
        world.covenant,
        version=2,
        policy=dataclasses.replace(
            policy, release=tuple(r for r in policy.release if r.purpose != "bibob")
        ),
    )
    verdict = disclosure.approve(stricter, _pending(request), "b@woco", facts(), me=WOCO, now=NOW)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.NOT_ALLOWED)


def test_deny_refuses_with_the_officers_reason(world: World) -> None:
    request = incoming(world, purpose="bibob", fields=("naam",))
    with pytest.raises(NotAllowed):
        disclosure.deny(_pending(request), request.officer, "nee")
    with pytest.raises(InvalidInput) as blank:
        disclosure.deny(_pending(request), "b@woco", " ")
    assert blank.value.field == "reason"
    verdict = disclosure.deny(_pending(request), "b@woco", "lopend onderzoek")
    assert (verdict.outcome, verdict.reason, verdict.message) == (
        Outcome.REFUSED,
        Refusal.DENIED_BY_OFFICER,
        "lopend onderzoek",
    )


def test_the_answer_carries_exactly_the_verdict(world: World) -> None:
    request = incoming(world, fields=("naam", "adres", "dossier"))
    verdict = decide(world, request, facts())
    envelope = disclosure.respond(
        world.keys[WOCO],
        world.covenant,
        request_id=request.request_id,
        requester=GEMEENTE,
        verdict=verdict,
        approved_by_second_officer=False,
        message_id=b"\x55" * 16,
        now=NOW,
    )
    context, body = disclosure.open_envelope(world.keys[GEMEENTE], world.covenant, envelope.sealed)
    assert context is SignatureContext.DISCLOSURE_RESPONSE
    update = disclosure.parse_response(body, sender=WOCO, me=GEMEENTE)
    assert update.outcome is Outcome.GRANTED
    assert dict(update.values or {}) == {"naam": DETAILS["naam"], "adres": DETAILS["adres"]}
    assert update.withheld == ("dossier",)
    # The owner's detail not asked for ("omschrijving") is nowhere in the sealed bytes.
    assert b"leegstand" not in envelope.sealed.SerializeToString()

    refused = disclosure.respond(
        world.keys[WOCO],
        world.covenant,
        request_id=request.request_id,
        requester=GEMEENTE,
        verdict=disclosure.deny(_pending(request), "b@woco", "nee"),
        approved_by_second_officer=False,
        message_id=b"\x56" * 16,
        now=NOW,
    )
    _, body = disclosure.open_envelope(world.keys[GEMEENTE], world.covenant, refused.sealed)
    update = disclosure.parse_response(body, sender=WOCO, me=GEMEENTE)
    assert (update.outcome, update.reason, update.values) == (
        Outcome.REFUSED,
        Refusal.DENIED_BY_OFFICER,
        None,
    )


def test_forged_envelopes_are_rejected(world: World) -> None:
    _, envelope = disclosure.build_request(
        world.keys[GEMEENTE],
        world.covenant,
        notice(world),
        request_id=b"\x66" * 16,
        owner=WOCO,
        signal_ref=REF,
        purpose="adresfraude",
        fields=("naam",),
        officer="a@gemeente",
        justification="",
        proof_key=PROOF_KEY,
        now=NOW,
    )
    woco = world.keys[WOCO]
    # Another party claims to have sent it: the box does not open with its key.
    claimed = common_pb2.Sealed()
    claimed.CopyFrom(envelope.sealed)
    claimed.sender = POLITIE
    with pytest.raises(DecryptionFailed):
        disclosure.open_envelope(woco, world.covenant, claimed)
    # A sender the covenant does not list, or an envelope for someone else.
    stranger = common_pb2.Sealed()
    stranger.CopyFrom(envelope.sealed)
    stranger.sender = "onbekend"
    with pytest.raises(InvalidSignature):
        disclosure.open_envelope(woco, world.covenant, stranger)
    with pytest.raises(InvalidSignature):
        disclosure.open_envelope(world.keys[POLITIE], world.covenant, envelope.sealed)
    # Tampered ciphertext.
    tampered = common_pb2.Sealed()
    tampered.CopyFrom(envelope.sealed)
    tampered.ciphertext = bytes([tampered.ciphertext[0] ^ 1]) + tampered.ciphertext[1:]
    with pytest.raises(DecryptionFailed):
        disclosure.open_envelope(woco, world.covenant, tampered)
    # A body that names another requester than its signer.
    _, body = disclosure.open_envelope(woco, world.covenant, envelope.sealed)
    with pytest.raises(InvalidInput):
        disclosure.parse_request(body, sender=POLITIE, me=WOCO)


def test_bad_requests_are_refused_locally_naming_the_field(world: World) -> None:
    shown = broker_pb2.HitNotice.FromString(notice(world).body)

    own = shown.own_signal_refs[0]

    def check(notice_: broker_pb2.HitNotice = shown, **changes: Any) -> str | None:
        return refused(notice_, **changes)[0]

    def refused(notice_: broker_pb2.HitNotice = shown, **changes: Any) -> tuple[str | None, str]:
        values: dict[str, Any] = {
            "owner": WOCO,
            "signal_ref": REF,
            "purpose": "adresfraude",
            "fields": ["naam"],
            "officer": "a@gemeente",
            "justification": "",
            "proof_keys": {own: PROOF_KEY}.get,
        }
        values.update(changes)
        try:
            key = disclosure.check_request(world.covenant, GEMEENTE, notice_, **values)
        except (InvalidInput, MessageTooLarge, NotFound) as error:
            return error.field, error.reason
        assert key == PROOF_KEY
        return None, ""

    assert check() is None
    assert check(owner=GEMEENTE) == "owner"
    assert check(owner=POLITIE) == "owner"  # not shown in this hit
    assert check(signal_ref=OTHER_REF) == "signal_ref"
    assert check(purpose="nieuwsgierigheid") == "purpose"
    assert check(fields=[]) == "fields"
    assert check(fields=["naam"] * 2) == "fields"
    assert check(fields=[f"f{i}" for i in range(65)]) == "fields"
    assert check(fields=["x" * 65]) == "fields[0]"
    assert check(officer="") == "officer"
    assert check(justification="x" * 5000) == "justification"
    # No signal of its own in the hit (an observing coordinator): nothing to prove it with.
    observed = broker_pb2.HitNotice()
    observed.CopyFrom(shown)
    del observed.own_signal_refs[:]
    assert refused(observed) == ("hit_group_id", "disclosure.no_own_signal")
    # Its signals there were tokenised before hit proofs existed: tokenise them again.
    assert refused(proof_keys={}.get) == ("hit_group_id", "disclosure.no_proof_key")
    with pytest.raises(InvalidInput, match="re-tokenise"):
        disclosure.check_request(
            world.covenant,
            GEMEENTE,
            shown,
            owner=WOCO,
            signal_ref=REF,
            purpose="adresfraude",
            fields=["naam"],
            officer="a@gemeente",
            justification="",
            proof_keys=lambda ref: None,
        )


def _visibility(covenant: Covenant, role: Role, **changes: Any) -> Covenant:
    """A newer covenant version whose visibility rule for ``role`` is changed."""
    policy = covenant.policy
    visibility = tuple(
        dataclasses.replace(rule, **changes) if rule.role is role else rule
        for rule in policy.visibility
    )
    return dataclasses.replace(
        covenant, version=2, policy=dataclasses.replace(policy, visibility=visibility)
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("the covenant of now hides the owner from the requester", Refusal.NOT_IN_HIT),
        ("the owner's notice no longer shows the requester", Refusal.NOT_IN_HIT),
        ("the owner's group is closed", Refusal.HIT_CLOSED),
    ],
)
def test_a_stale_notice_is_no_proof(world: World, case: str, reason: Refusal) -> None:
    """The requester's notice verifies, but the owner's view of now says it may not ask:
    refused by :func:`decide` and, for a pending request, by :func:`approve`."""
    covenant, owner_facts = world.covenant, facts()
    if case == "the covenant of now hides the owner from the requester":
        covenant = _visibility(
            covenant, Role.GEMEENTE, hidden_roles=(Role.POLITIE, Role.WONINGCORPORATIE)
        )
    elif case == "the owner's notice no longer shows the requester":
        owner_facts.members[GROUP] = frozenset({POLITIE})  # the gemeente withdrew
    else:
        owner_facts.closed = {GROUP}
    verdict = disclosure.decide(covenant, WOCO, incoming(world), owner_facts, now=NOW)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, reason), verdict.message
    assert verdict.values is None
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    verdict = disclosure.approve(covenant, pending, "b@woco", owner_facts, me=WOCO, now=NOW)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, reason), verdict.message
    assert verdict.values is None


def test_the_owners_notice_decides_only_where_it_can_tell(world: World) -> None:
    # It shows the requester: granted.
    owner_facts = facts()
    owner_facts.members[GROUP] = frozenset({GEMEENTE, POLITIE})
    assert decide(world, incoming(world), owner_facts).outcome is Outcome.GRANTED
    # It does not show members by party (None): the requester's notice stands.
    assert decide(world, incoming(world), facts()).outcome is Outcome.GRANTED
    # The owner's rule hides the requester's role: its notice cannot show it.
    owner_facts.members[GROUP] = frozenset()
    blind = _visibility(
        world.covenant, Role.WONINGCORPORATIE, hidden_roles=(Role.POLITIE, Role.GEMEENTE)
    )
    verdict = disclosure.decide(blind, WOCO, incoming(world), owner_facts, now=NOW)
    assert verdict.outcome is Outcome.GRANTED
    # A coordinating requester may observe hits it holds no signal in, but asks only as a
    # member: once the owner's notice no longer shows it, it is refused like any other.
    coordinating = _visibility(world.covenant, Role.GEMEENTE, coordinator=True)
    verdict = disclosure.decide(coordinating, WOCO, incoming(world), owner_facts, now=NOW)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.NOT_IN_HIT)


def test_approval_for_a_requester_no_longer_in_the_covenant_is_refused(world: World) -> None:
    pending = dataclasses.replace(
        _pending(incoming(world, purpose="bibob", fields=("naam",))), requester="vertrokken"
    )
    verdict = disclosure.approve(world.covenant, pending, "b@woco", facts(), me=WOCO, now=NOW)
    assert (verdict.outcome, verdict.reason, verdict.message) == (
        Outcome.REFUSED,
        Refusal.NOT_ALLOWED,
        disclosure.NO_LONGER_A_PARTY,
    )


@pytest.mark.parametrize(
    ("asked_by", "deciding"),
    [
        ("bd-teamleider-7", "Bd-Teamleider-7 "),
        ("bd-teamleider-7", "  BD-TEAMLEIDER-7"),
        ("bd teamleider 7", "bd\u00a0teamleider  7"),  # a no-break space, two spaces
        ("bd-teamleider-7", "\uff42\uff44-teamleider-7"),  # fullwidth: NFKC makes it ASCII
        ("Straße", "STRASSE"),  # case folding, not just lower case
    ],
)
def test_four_eyes_compares_officers_after_normalising(
    world: World, asked_by: str, deciding: str
) -> None:
    pending = dataclasses.replace(
        _pending(incoming(world, purpose="bibob", fields=("naam",))), requester_officer=asked_by
    )
    for decide_ in (
        lambda: disclosure.approve(world.covenant, pending, deciding, facts(), me=WOCO, now=NOW),
        lambda: disclosure.deny(pending, deciding, "nee"),
    ):
        with pytest.raises(NotAllowed) as same:
            decide_()
        assert (same.value.field, same.value.reason) == ("officer", "disclosure.same_officer")
    decided = dataclasses.replace(pending, requester_officer="a@gemeente", decided_by=asked_by)
    with pytest.raises(NotAllowed):
        disclosure.approve(world.covenant, decided, deciding, facts(), me=WOCO, now=NOW)
    # The officer is kept as given; only the comparison normalises.
    assert disclosure.officer_key(deciding) == disclosure.officer_key(asked_by)
    assert disclosure.officer_key(" A  b ") == "a b"
    # A second person is still a second person.
    other = disclosure.approve(
        world.covenant, pending, "bd-teamleider-8", facts(), me=WOCO, now=NOW
    )
    assert other.outcome is Outcome.GRANTED


def test_an_officer_of_only_spaces_is_refused(world: World) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    for blank_name in ("   ", "\u3000"):  # spaces; an ideographic space
        with pytest.raises(InvalidInput) as blank:
            disclosure.approve(world.covenant, pending, blank_name, facts(), me=WOCO, now=NOW)
        assert (blank.value.field, blank.value.message) == ("officer", "name the officer")


OFFICERS = ["Bd-Teamleider-7 ", "Jürgen de Vries", "J.\u00a0de Vries", "Łukasz Żak", "ü" * 32]
BAD_OFFICERS = [
    ("", "name the officer"),
    ("   ", "name the officer"),
    ("ü" * 33, "at most 64 bytes of UTF-8"),  # 66 bytes: the wire's limit is in bytes
    ("a" * 65, "at most 64 bytes of UTF-8"),
    ("jan\x1b[31m", None),  # a terminal escape
    ("jan\u202eseirv", None),  # a bidi override
    ("jan\u200b", None),  # zero width
    ("jan\nde vries", None),
]


@pytest.mark.parametrize("name", OFFICERS)
def test_an_officer_is_named_in_any_script_and_with_spaces_and_kept_as_given(
    world: World, name: str
) -> None:
    assert disclosure.check_officer(name) == name
    request = incoming(world, purpose="bibob", fields=("naam",), officer=name)
    assert request.officer == name  # received as given
    verdict = disclosure.approve(
        world.covenant, _pending(request), "b@woco", facts(), me=WOCO, now=NOW
    )
    assert verdict.outcome is Outcome.GRANTED
    other = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    assert disclosure.approve(world.covenant, other, name, facts(), me=WOCO, now=NOW).outcome is (
        Outcome.GRANTED
    )


@pytest.mark.parametrize(("name", "message"), BAD_OFFICERS)
def test_an_invalid_officer_is_refused_naming_the_field_it_came_in(
    world: World, name: str, message: str | None
) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    for decide_ in (
        lambda: disclosure.approve(world.covenant, pending, name, facts(), me=WOCO, now=NOW),
        lambda: disclosure.deny(pending, name, "nee"),
    ):
        with pytest.raises(InvalidInput) as caught:
            decide_()
        assert caught.value.field == "officer"
        if message is not None:
            assert caught.value.message == message
    with pytest.raises(InvalidInput) as received:  # from another party's node
        incoming(world, purpose="bibob", fields=("naam",), officer=name)
    assert received.value.field == "requester_officer"


def test_approval_fails_closed_without_a_hit_group(world: World) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    for group in (None, b"\x33" * 15):
        verdict = disclosure.approve(
            world.covenant,
            dataclasses.replace(pending, hit_group_id=group),
            "b@woco",
            facts(),
            me=WOCO,
            now=NOW,
        )
        assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.NOT_IN_HIT)
        assert verdict.values is None


def test_approval_refuses_once_the_owners_notice_no_longer_lists_the_signal(world: World) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    owner_facts = facts()
    owner_facts.own_refs[GROUP] = frozenset({OTHER_REF})  # its signal left the group
    verdict = disclosure.approve(world.covenant, pending, "b@woco", owner_facts, me=WOCO, now=NOW)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.NOT_IN_HIT)
    assert verdict.values is None


# --- the path of a received request, through the owner's desk and store -----------------------


@dataclass
class Owner:
    """Woco's desk and store on SQLite, holding one signal (its ref and hit proof key
    stored as the uplink stores them) and its own notice of GROUP with the gemeente."""

    world: World
    repositories: Repositories
    desk: DisclosureDesk
    ref: bytes
    cursor: int = 0
    #: Why woco's node is stale (no unexpired covenant timestamp); None while fresh.
    stale: str | None = None

    def notice(self, kind: broker_pb2.HitNoticeKind.ValueType, members: Sequence[str]) -> None:
        """Woco's node accepts its own next notice of the group (as its uplink would)."""
        self.cursor += 1
        signed = notice(
            self.world,
            recipient=WOCO,
            members=[(party, (b"\x55" * 16,)) for party in members],
            kind=kind,
            revision=self.cursor,
            own_refs=(self.ref,),
        )
        accepted = self.repositories.signals.accept_notice(
            self.cursor,
            GROUP,
            self.cursor,
            _HIT_KINDS[kind],
            signed.SerializeToString(),
            [self.ref],
            NOW,
            NOW,
            now=NOW,
        )
        assert accepted

    def receive(self, request_id: bytes, *, purpose: str = "bibob") -> None:
        """A request from the gemeente, built and sealed as its node does, relayed to woco."""
        _, envelope = disclosure.build_request(
            self.world.keys[GEMEENTE],
            self.world.covenant,
            notice(self.world, members=[(WOCO, (self.ref,))]),
            request_id=request_id,
            owner=WOCO,
            signal_ref=self.ref,
            purpose=purpose,
            fields=("naam",),
            officer="a@gemeente",
            justification="Bibob-toets",
            proof_key=PROOF_KEY,
            now=NOW,
        )
        self.cursor += 1
        self.desk.receive(self.cursor, envelope.sealed)


_HIT_KINDS = {
    broker_pb2.HIT_NOTICE_KIND_NEW: models.HitKind.NEW,
    broker_pb2.HIT_NOTICE_KIND_SHRUNK: models.HitKind.SHRUNK,
    broker_pb2.HIT_NOTICE_KIND_CLOSED: models.HitKind.CLOSED,
}


@pytest.fixture
def owner(world: World, tmp_path: Any) -> Iterator[Owner]:
    from samenloop.node.identifiers.normalise import parse

    engine = database.make_engine(f"sqlite:///{tmp_path / 'woco.db'}")
    database.upgrade(engine, "samenloop.node.daemon.migrations")
    repositories = Repositories.open(engine, owner=WOCO)
    (record,) = repositories.signals.add_signals(
        [
            NewSignal(
                "W-1",
                "woonfraude",
                [parse("bsn", "111222333")],
                NOW + timedelta(days=365),
                details=DETAILS,
            )
        ],
        now=NOW,
    )
    (pending,) = repositories.signals.pending_identifiers(10, now=NOW)
    repositories.signals.record_tokens(
        {pending.id: b"\x66" * 32}, 1, now=NOW, proof_keys={pending.id: PROOF_KEY}
    )
    made: list[Owner] = []
    desk = DisclosureDesk(
        keys=world.keys[WOCO],
        covenant=lambda: world.covenant,
        store=repositories.disclosures,
        clock=lambda: NOW,
        stale=lambda: made[0].stale,
    )
    owner = Owner(world, repositories, desk, record.identifiers[0].signal_ref)
    made.append(owner)
    owner.notice(broker_pb2.HIT_NOTICE_KIND_NEW, [GEMEENTE])
    yield owner
    engine.dispose()


def _approved(owner: Owner, request_id: bytes) -> Any:
    stored = owner.repositories.disclosures.disclosure(request_id)
    assert stored is not None
    assert (stored.state, stored.hit_group_id) == (DisclosureState.PENDING_APPROVAL, GROUP)
    return owner.desk.approve(request_id, officer="b@woco")


def test_a_received_pending_request_is_approved_with_its_hit_group(owner: Owner) -> None:
    request_id = secrets.token_bytes(16)
    owner.receive(request_id)
    approved = _approved(owner, request_id)
    assert (approved.state, approved.hit_group_id) == (DisclosureState.GRANTED, GROUP)
    assert dict(approved.released) == {"naam": ""}


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        ("the hit closed", "hit_closed"),
        ("the requester left the group", "not_in_hit"),
        ("the owner's signal left the group", "not_in_hit"),
    ],
)
def test_a_received_pending_request_is_refused_at_approval_when_the_hit_changed(
    owner: Owner, after: str, reason: str
) -> None:
    """Received, decided pending, stored; then the owner's notice of now says no."""
    request_id = secrets.token_bytes(16)
    owner.receive(request_id)
    if after == "the hit closed":
        owner.notice(broker_pb2.HIT_NOTICE_KIND_CLOSED, [])
    elif after == "the requester left the group":
        owner.notice(broker_pb2.HIT_NOTICE_KIND_SHRUNK, [POLITIE])
    else:
        owner.ref, kept = b"\x56" * 16, owner.ref  # woco's next notice lists another ref
        owner.notice(broker_pb2.HIT_NOTICE_KIND_SHRUNK, [GEMEENTE])
        owner.ref = kept
    decided = _approved(owner, request_id)
    assert (decided.state, decided.refusal_reason) == (DisclosureState.REFUSED, reason)
    assert dict(decided.released) == {}


def test_a_received_request_without_a_valid_proof_is_refused_and_stored(owner: Owner) -> None:
    request_id = secrets.token_bytes(16)
    _, envelope = disclosure.build_request(
        owner.world.keys[GEMEENTE],
        owner.world.covenant,
        notice(owner.world, members=[(WOCO, (owner.ref,))]),
        request_id=request_id,
        owner=WOCO,
        signal_ref=owner.ref,
        purpose="bibob",
        fields=("naam",),
        officer="a@gemeente",
        justification="",
        proof_key=b"\x78" * 32,
        now=NOW,
    )
    owner.desk.receive(9, envelope.sealed)
    stored = owner.repositories.disclosures.disclosure(request_id)
    assert stored is not None
    assert (stored.state, stored.refusal_reason, stored.refusal_message) == (
        DisclosureState.REFUSED,
        "not_in_hit",
        disclosure.NOT_PROVEN,
    )
    assert stored.signal_id is None


STALE = "the covenant timestamp for version 1 expired at 2026-01-01T00:00:00+00:00"


def test_a_stale_owner_refuses_what_it_receives_with_an_answer_and_releases_nothing(
    owner: Owner,
) -> None:
    owner.stale = STALE
    request_id = secrets.token_bytes(16)
    owner.receive(request_id, purpose="adresfraude")
    stored = owner.repositories.disclosures.disclosure(request_id)
    assert stored is not None
    assert (stored.state, stored.refusal_reason, stored.refusal_message) == (
        DisclosureState.REFUSED,
        "covenant_stale",
        STALE,
    )
    assert dict(stored.released) == {}
    (answer,) = (
        owner.repositories.shared.envelope_outbox()
    )  # the refusal goes back: ask again later
    assert answer.recipient == GEMEENTE


def test_no_officer_approves_while_the_owner_is_stale(owner: Owner) -> None:
    request_id = secrets.token_bytes(16)
    owner.receive(request_id)  # pending, while fresh
    owner.stale = STALE
    with pytest.raises(CovenantStale) as caught:
        owner.desk.approve(request_id, officer="b@woco")
    assert caught.value.field == "covenant"
    still = owner.repositories.disclosures.disclosure(request_id)
    assert still is not None
    assert still.state is DisclosureState.PENDING_APPROVAL
    owner.stale = None  # fresh again: the same officer's approval goes through
    assert _approved(owner, request_id).state is DisclosureState.GRANTED


def test_a_stale_owner_may_still_deny(owner: Owner) -> None:
    request_id = secrets.token_bytes(16)
    owner.receive(request_id)
    owner.stale = STALE
    denied = owner.desk.deny(request_id, officer="b@woco", reason="geen grond")
    assert (denied.state, denied.refusal_reason) == (DisclosureState.REFUSED, "denied_by_officer")


# --- parsing what arrives, directly -------------------------------------------------------


def _request(world: World) -> disclosure_pb2.DisclosureRequest:
    request, _ = disclosure.build_request(
        world.keys[GEMEENTE],
        world.covenant,
        notice(world),
        request_id=b"\x61" * 16,
        owner=WOCO,
        signal_ref=REF,
        purpose="adresfraude",
        fields=("naam", "adres"),
        officer="a.asker@gemeente.nl",
        justification="onderzoek",
        proof_key=PROOF_KEY,
        now=NOW,
    )
    return request


def test_a_received_request_is_parsed_with_its_hit_group(world: World) -> None:
    """The path from a received request: the group its notice names is kept (approval
    checks the hit through it), or None where the notice names no valid one."""
    request = _request(world)
    parsed = disclosure.parse_request(request.SerializeToString(), sender=GEMEENTE, me=WOCO)
    assert parsed.hit_group_id == GROUP
    assert (parsed.request_id, parsed.requester, parsed.owner, parsed.signal_ref) == (
        b"\x61" * 16,
        GEMEENTE,
        WOCO,
        REF,
    )
    assert (parsed.purpose, parsed.fields, parsed.officer, parsed.justification) == (
        "adresfraude",
        ("naam", "adres"),
        "a.asker@gemeente.nl",
        "onderzoek",
    )
    assert (parsed.covenant_id, parsed.covenant_version) == (world.covenant.id, 1)
    assert parsed.issued_at == NOW
    assert parsed.hit_proof == request.hit_proof
    assert len(parsed.hit_proof) == disclosure.HIT_PROOF_BYTES
    assert "onderzoek" not in repr(parsed)
    assert "a.asker" not in repr(parsed)
    for body in (b"\xff\xff", broker_pb2.HitNotice(hit_group_id=b"\x33" * 15).SerializeToString()):
        odd = _request(world)
        odd.hit_notice.body = body
        again = disclosure.parse_request(odd.SerializeToString(), sender=GEMEENTE, me=WOCO)
        assert again.hit_group_id is None


def _changed(request: disclosure_pb2.DisclosureRequest, change: str) -> bytes:
    if change == "garbage":
        return b"\xff\xff"
    if change == "short id":
        request.request_id = b"\x61" * 15
    elif change == "other requester":
        request.requester = POLITIE
    elif change == "other owner":
        request.owner = POLITIE
    elif change == "short ref":
        request.signal_ref = REF[:15]
    elif change == "no purpose":
        request.purpose = ""
    elif change == "long purpose":
        request.purpose = "p" * 65
    elif change == "control in purpose":
        request.purpose = "adres\x7ffraude"
    elif change == "no fields":
        del request.requested_fields[:]
    elif change == "too many fields":
        request.requested_fields.extend(f"f{i}" for i in range(63))
    elif change == "field twice":
        request.requested_fields.append("naam")
    elif change == "bad field":
        request.requested_fields.append("Adres")
    elif change == "no officer":
        request.requester_officer = ""
    elif change == "control in officer":
        request.requester_officer = "a\tb"
    elif change == "long justification":
        request.justification = "x" * 4097
    elif change == "no issued_at":
        request.ClearField("issued_at")
    else:
        request.covenant_version = 0
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ("garbage", "body", "not a DisclosureRequest"),
        ("short id", "request_id", "a request id is 16 bytes"),
        ("other requester", "requester", "requester is not the signer"),
        ("other owner", "owner", "owner is not this node"),
        ("short ref", "signal_ref", "a signal ref is 16 bytes"),
        ("no purpose", "purpose", "must be 1 to 64 bytes"),
        ("long purpose", "purpose", "must be 1 to 64 bytes"),
        ("control in purpose", "purpose", "must not contain control characters"),
        ("no fields", "requested_fields", "ask for at least one field"),
        ("too many fields", "requested_fields", "at most 64 fields per request"),
        ("field twice", "requested_fields", "a field is listed twice"),
        ("bad field", "requested_fields[2]", None),
        ("no officer", "requester_officer", "name the officer"),
        ("control in officer", "requester_officer", None),  # audit.check_actor says why
        ("long justification", "justification", "at most 4096 bytes of UTF-8"),
        ("no issued_at", "issued_at", "issued_at and covenant_version are required"),
        ("no covenant version", "issued_at", "issued_at and covenant_version are required"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_field(
    world: World, change: str, field: str, message: str | None
) -> None:
    body = _changed(_request(world), change)
    with pytest.raises((InvalidInput, MessageTooLarge)) as caught:
        disclosure.parse_request(body, sender=GEMEENTE, me=WOCO)
    assert caught.value.field == field
    if message is not None:
        assert caught.value.message == message


def _response(**outcome: Any) -> disclosure_pb2.DisclosureResponse:
    response = disclosure_pb2.DisclosureResponse(
        request_id=b"\x61" * 16, owner=WOCO, requester=GEMEENTE, covenant_version=1, **outcome
    )
    response.issued_at.FromDatetime(NOW)
    return response


def test_a_received_answer_is_parsed_by_its_outcome() -> None:
    def parse(response: disclosure_pb2.DisclosureResponse) -> disclosure.ResponseUpdate:
        return disclosure.parse_response(response.SerializeToString(), sender=WOCO, me=GEMEENTE)

    granted = parse(
        _response(
            granted=disclosure_pb2.DisclosureGrant(
                fields={"naam": "J. de Vries"}, withheld_fields=["dossier"]
            )
        )
    )
    assert granted == disclosure.ResponseUpdate(
        b"\x61" * 16, WOCO, Outcome.GRANTED, values={"naam": "J. de Vries"}, withheld=("dossier",)
    )
    assert "J. de Vries" not in repr(granted)
    pending = parse(_response(pending=disclosure_pb2.DisclosurePending(message="vier ogen")))
    assert (pending.outcome, pending.message, pending.values) == (
        Outcome.PENDING,
        "vier ogen",
        None,
    )
    refused = parse(
        _response(
            refused=disclosure_pb2.DisclosureRefusal(
                reason=disclosure.refusal_to_proto(Refusal.HIT_CLOSED), message="dicht"
            )
        )
    )
    assert (refused.outcome, refused.reason, refused.message) == (
        Outcome.REFUSED,
        Refusal.HIT_CLOSED,
        "dicht",
    )


@pytest.mark.parametrize(
    ("response", "sender", "field", "message"),
    [
        (b"\xff\xff", WOCO, "body", "not a DisclosureResponse"),
        (
            disclosure_pb2.DisclosureResponse(request_id=b"\x61" * 15, owner=WOCO),
            WOCO,
            "request_id",
            "a request id is 16 bytes",
        ),
        (_response(), POLITIE, "owner", "owner or requester does not match the envelope"),
        (
            disclosure_pb2.DisclosureResponse(request_id=b"\x61" * 16, owner=WOCO, requester=WOCO),
            WOCO,
            "owner",
            "owner or requester does not match the envelope",
        ),
        (_response(), WOCO, "outcome", "a response needs an outcome"),
        (
            _response(refused=disclosure_pb2.DisclosureRefusal(reason=999, message="?")),
            WOCO,
            "refused.reason",
            "unknown refusal reason",
        ),
        (
            _response(refused=disclosure_pb2.DisclosureRefusal(reason=0, message="?")),
            WOCO,
            "refused.reason",
            "unknown refusal reason",
        ),
        (
            _response(
                refused=disclosure_pb2.DisclosureRefusal(
                    reason=disclosure.refusal_to_proto(Refusal.REPLAY), message="x" * 4097
                )
            ),
            WOCO,
            "refused.message",
            "at most 4096 bytes of UTF-8",
        ),
    ],
)
def test_a_malformed_answer_is_refused_naming_the_field(
    response: Any, sender: str, field: str, message: str
) -> None:
    body = response if isinstance(response, bytes) else response.SerializeToString()
    with pytest.raises((InvalidInput, MessageTooLarge)) as caught:
        disclosure.parse_response(body, sender=sender, me=GEMEENTE)
    assert (caught.value.field, caught.value.message) == (field, message)


def test_refusal_reasons_map_to_the_wire_and_back() -> None:
    for reason in Refusal:
        number = disclosure.refusal_to_proto(reason)
        assert number != 0
        assert disclosure.refusal_from_proto(number) is reason
    assert disclosure.refusal_from_proto(0) is None


def test_what_a_request_and_a_verdict_show_in_logs() -> None:
    signal = SignalFacts(7, "woonfraude", True, {"naam": "J. de Vries"})
    assert repr(signal) == "SignalFacts(signal_id=7, active=True)"
    verdict = Verdict(Outcome.GRANTED, fields=("naam",), values={"naam": "J. de Vries"})
    assert repr(verdict) == "Verdict(outcome=granted, fields=1, reason=None)"


def test_an_envelope_too_large_is_not_opened(world: World) -> None:
    big = common_pb2.Sealed(
        sender=GEMEENTE,
        recipient=WOCO,
        nonce=b"\x00" * 24,
        ciphertext=b"\x00" * (disclosure.MAX_ENVELOPE_BYTES + 1),
    )
    with pytest.raises(DecryptionFailed) as caught:
        disclosure.open_envelope(world.keys[WOCO], world.covenant, big)
    assert (caught.value.field, caught.value.message) == (
        "envelope.ciphertext",
        "envelope too large",
    )
    for sealed, where, message in [
        (common_pb2.Sealed(sender=GEMEENTE, recipient=POLITIE), "envelope.recipient",
         "envelope is for another party"),
        (common_pb2.Sealed(sender=WOCO, recipient=WOCO), "envelope.sender",
         "envelope sender is not another party"),
    ]:  # fmt: skip
        with pytest.raises(InvalidSignature) as forged:
            disclosure.open_envelope(world.keys[WOCO], world.covenant, sealed)
        assert (forged.value.field, forged.value.message) == (where, message)


def test_build_request_refuses_a_bad_id_or_notice(world: World) -> None:
    values: dict[str, Any] = {
        "owner": WOCO,
        "signal_ref": REF,
        "purpose": "adresfraude",
        "fields": ("naam",),
        "officer": "a@gemeente",
        "justification": "",
        "proof_key": PROOF_KEY,
        "now": NOW,
    }
    keys, covenant = world.keys[GEMEENTE], world.covenant
    with pytest.raises(InvalidInput) as caught:
        disclosure.build_request(keys, covenant, notice(world), request_id=b"\x01" * 15, **values)
    assert (caught.value.field, caught.value.message) == ("request_id", "a request id is 16 bytes")
    broken = common_pb2.Signed(body=b"\xff\xff")
    with pytest.raises(InvalidInput) as caught:
        disclosure.build_request(keys, covenant, broken, request_id=b"\x01" * 16, **values)
    assert (caught.value.field, caught.value.message) == (
        "hit_notice",
        "the hit notice does not parse",
    )


# --- the asker's checks, deny, approve and the answer, every message --------------------------


def _ask(world: World, notice_: broker_pb2.HitNotice, **changes: Any) -> bytes:
    values: dict[str, Any] = {
        "owner": WOCO,
        "signal_ref": REF,
        "purpose": "adresfraude",
        "fields": ["naam"],
        "officer": "a@gemeente",
        "justification": "",
        "proof_keys": {b"\x44" * 16: PROOF_KEY}.get,
    }
    values.update(changes)
    return disclosure.check_request(world.covenant, GEMEENTE, notice_, **values)


@pytest.mark.parametrize(
    ("change", "field", "reason", "message"),
    [
        ({"owner": GEMEENTE}, "owner", "disclosure.self", "a node does not ask itself"),
        ({"owner": "onbekend"}, "owner", "disclosure.unknown_owner", "not a party of the covenant"),
        ({"signal_ref": REF[:15]}, "signal_ref", "invalid_input", "a signal ref is 16 bytes"),
        (
            {"owner": POLITIE},
            "owner",
            "disclosure.owner_not_in_hit",
            "the hit does not show this party",
        ),
        (
            {"signal_ref": OTHER_REF},
            "signal_ref",
            "disclosure.ref_not_in_hit",
            "the hit does not list this signal ref for the owner",
        ),
        ({"kind": "closed"}, "hit_group_id", "disclosure.closed", "the hit is closed"),
        (
            {"purpose": "nieuwsgierigheid"},
            "purpose",
            "disclosure.unknown_purpose",
            "not a purpose of this covenant; use one of: bibob, adresfraude, casusvoorbereiding",
        ),
        ({"fields": []}, "fields", "disclosure.no_fields", "ask for at least one field"),
        ({"officer": "a\x00b"}, "officer", "invalid_input", None),
        (
            {"own": ()},
            "hit_group_id",
            "disclosure.no_own_signal",
            "this node holds no signal in the hit, so it cannot prove the hit: only a party "
            "with a signal of its own in a hit can ask for details",
        ),
        (
            {"proof_keys": {}.get},
            "hit_group_id",
            "disclosure.no_proof_key",
            "this node's signals in the hit were tokenised before hit proofs existed: "
            "re-tokenise them (withdraw each and add it again) to ask",
        ),
    ],
)
def test_the_askers_checks_name_the_field_and_say_why(
    world: World, change: dict[str, Any], field: str, reason: str, message: str | None
) -> None:
    shown = broker_pb2.HitNotice.FromString(notice(world).body)
    if change.pop("kind", None):
        shown.kind = broker_pb2.HIT_NOTICE_KIND_CLOSED
    if "own" in change:
        del shown.own_signal_refs[:]
        change.pop("own")
    with pytest.raises(InvalidInput) as caught:
        _ask(world, shown, **change)
    assert (caught.value.field, caught.value.reason) == (field, reason)
    if message is not None:  # an officer's name is checked, and explained, by the audit log
        assert caught.value.message == message


def test_the_asker_proves_with_the_first_own_ref_it_has_a_key_for(world: World) -> None:
    shown = broker_pb2.HitNotice.FromString(
        notice(world, own_refs=(b"\x46" * 16, b"\x45" * 16)).body
    )
    keys = {b"\x45" * 16: b"\x01" * 32, b"\x46" * 16: b"\x02" * 32}
    assert _ask(world, shown, proof_keys=keys.get) == b"\x01" * 32
    assert _ask(world, shown, proof_keys={b"\x46" * 16: b"\x02" * 32}.get) == b"\x02" * 32


def test_deny_needs_a_reason_of_bounded_length(world: World) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    with pytest.raises(InvalidInput) as blank:
        disclosure.deny(pending, "b@woco", " \n")
    assert (blank.value.field, blank.value.reason, blank.value.message) == (
        "reason",
        "disclosure.reason_missing",
        "say why",
    )
    with pytest.raises(MessageTooLarge) as long:
        disclosure.deny(pending, "b@woco", "x" * 4097)
    assert long.value.field == "reason"
    assert disclosure.deny(pending, "b@woco", "x" * 4096).message == "x" * 4096


def test_approval_refusals_say_why(world: World) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))

    def approve(owner_facts: Facts, **changes: Any) -> Verdict:
        return disclosure.approve(
            world.covenant,
            dataclasses.replace(pending, **changes),
            "b@woco",
            owner_facts,
            me=WOCO,
            now=NOW,
        )

    no_group = approve(facts(), hit_group_id=None)
    assert (no_group.reason, no_group.message) == (
        Refusal.NOT_IN_HIT,
        "the request names no hit group the owner can check",
    )
    gone = approve(Facts())
    assert (gone.outcome, gone.reason, gone.message) == (
        Outcome.REFUSED,
        Refusal.HIT_CLOSED,
        "the signal is no longer held",
    )
    withdrawn = approve(facts(active=False))
    assert (withdrawn.reason, withdrawn.message, withdrawn.signal_id, withdrawn.category) == (
        Refusal.HIT_CLOSED,
        "the hit is closed or the signal withdrawn",
        7,
        "woonfraude",
    )


def test_the_answer_states_the_covenant_time_category_and_second_officer(world: World) -> None:
    def answered(verdict: Verdict, approved: bool) -> disclosure_pb2.DisclosureResponse:
        envelope = disclosure.respond(
            world.keys[WOCO],
            world.covenant,
            request_id=b"\x61" * 16,
            requester=GEMEENTE,
            verdict=verdict,
            approved_by_second_officer=approved,
            message_id=b"\x62" * 16,
            now=NOW.astimezone(timezone(timedelta(hours=1))),
        )
        _, body = disclosure.open_envelope(world.keys[GEMEENTE], world.covenant, envelope.sealed)
        return disclosure_pb2.DisclosureResponse.FromString(body)

    grant = Verdict(
        Outcome.GRANTED, values={"naam": "x"}, withheld=("adres",), category="katvanger"
    )
    response = answered(grant, True)
    assert (response.covenant_version, response.owner, response.requester) == (1, WOCO, GEMEENTE)
    assert response.issued_at.ToDatetime(tzinfo=UTC) == NOW
    assert response.granted.category == "katvanger"
    assert response.granted.approved_by_second_officer
    assert list(response.granted.withheld_fields) == ["adres"]
    plain = answered(dataclasses.replace(grant, category=None), False)
    assert plain.granted.category == ""
    assert not plain.granted.approved_by_second_officer
    assert plain.WhichOneof("outcome") == "granted"


def test_a_pending_or_refused_answer_keeps_its_request_and_owner() -> None:
    def parse(response: disclosure_pb2.DisclosureResponse) -> disclosure.ResponseUpdate:
        return disclosure.parse_response(response.SerializeToString(), sender=WOCO, me=GEMEENTE)

    pending = parse(_response(pending=disclosure_pb2.DisclosurePending(message="vier ogen")))
    assert pending == disclosure.ResponseUpdate(
        b"\x61" * 16, WOCO, Outcome.PENDING, message="vier ogen"
    )
    refusal = disclosure_pb2.DisclosureRefusal(
        reason=disclosure.refusal_to_proto(Refusal.QUOTA_EXCEEDED), message="te veel"
    )
    assert parse(_response(refused=refusal)) == disclosure.ResponseUpdate(
        b"\x61" * 16, WOCO, Outcome.REFUSED, reason=Refusal.QUOTA_EXCEEDED, message="te veel"
    )


@dataclass
class _Counting(Facts):
    since: list[tuple[str, datetime]] = field(default_factory=list)

    def requests_since(self, requester: str, since: datetime, /) -> int:
        self.since.append((requester, since))
        return self.requests


def test_the_daily_quota_counts_from_the_start_of_the_utc_day_wherever_the_node_is(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "KIR-14")  # POSIX for UTC+14, as on Kiritimati
    time.tzset()
    try:
        owner_facts = _Counting(**vars(facts()))
        late = datetime(2026, 12, 2, 23, 30, tzinfo=UTC)
        disclosure.decide(world.covenant, WOCO, incoming(world, now=late), owner_facts, now=late)
        assert owner_facts.since == [(GEMEENTE, datetime(2026, 12, 2, tzinfo=UTC))]
    finally:
        monkeypatch.undo()
        time.tzset()


@dataclass
class _Recording(Facts):
    asked: list[tuple[str, str, str, datetime]] = field(default_factory=list)

    def grants_since(
        self, requester: str, purpose: str, rule_category: str, since: datetime, /
    ) -> int:
        self.asked.append((requester, purpose, rule_category, since))
        return self.grants


def test_the_period_quota_counts_this_requesters_grants_under_the_rule(world: World) -> None:
    """bibob releases to a gemeente fall under the rule for any category ("*"), counted over
    the rule's period (30 days) back from now."""
    owner_facts = _Recording(**vars(facts(category="katvanger")))
    request = incoming(world, purpose="bibob", fields=("naam",))
    verdict = decide(world, request, owner_facts)
    assert verdict.outcome is Outcome.PENDING
    assert owner_facts.asked == [(GEMEENTE, "bibob", "*", NOW - timedelta(days=30))]
    assert verdict == Verdict(
        Outcome.PENDING,
        fields=("naam",),
        withheld=(),
        rule_category="*",
        message="waiting for a second officer of the owner (four eyes)",
        signal_id=7,
        category="katvanger",
    )
    # A rule without a maximum does not count at all.
    unlimited = _Recording(**vars(facts()))
    assert decide(world, incoming(world), unlimited).outcome is Outcome.GRANTED
    assert unlimited.asked == []


def test_a_grant_lists_its_fields_sorted_and_a_refusal_names_the_signal(world: World) -> None:
    granted = decide(world, incoming(world, fields=("naam", "adres")), facts())
    assert granted.fields == ("adres", "naam")
    assert granted.rule_category == "woonfraude"
    refused = decide(world, incoming(world, fields=("dossier",)), facts())
    assert (refused.reason, refused.signal_id, refused.category) == (
        Refusal.NOT_ALLOWED,
        7,
        "woonfraude",
    )


def test_a_covenant_that_now_hides_the_owner_says_so(world: World) -> None:
    hiding = _visibility(
        world.covenant, Role.GEMEENTE, hidden_roles=(Role.POLITIE, Role.WONINGCORPORATIE)
    )
    verdict = disclosure.decide(hiding, WOCO, incoming(world), facts(), now=NOW)
    assert (verdict.reason, verdict.message, verdict.signal_id) == (
        Refusal.NOT_IN_HIT,
        "under the covenant of now the hit does not show the owner",
        7,
    )
    owner_facts = facts()
    owner_facts.members[GROUP] = frozenset({POLITIE})
    left = decide(world, incoming(world), owner_facts)
    assert (left.message, left.signal_id) == (
        "the owner's latest notice of the hit no longer shows the requester",
        7,
    )


def test_four_eyes_refusals_say_why(world: World) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    with pytest.raises(NotAllowed) as same:
        disclosure.deny(pending, pending.requester_officer, "nee")
    assert (same.value.field, same.value.reason, same.value.message) == (
        "officer",
        "disclosure.same_officer",
        "the officer who asked cannot decide on the request (four eyes)",
    )
    decided = dataclasses.replace(pending, decided_by="b.tweede@woco.nl")
    with pytest.raises(NotAllowed) as again:
        disclosure.deny(decided, "B.Tweede@woco.nl ", "nee")
    assert (again.value.field, again.value.reason, again.value.message) == (
        "officer",
        "disclosure.same_officer",
        "this officer already decided on the request (four eyes)",
    )
    with pytest.raises(InvalidInput) as bad:
        disclosure.deny(pending, "b\x07@woco", "nee")
    assert bad.value.field == "officer"


def test_refusals_after_the_proof_name_the_signal(world: World) -> None:
    closing = notice(world, kind=broker_pb2.HIT_NOTICE_KIND_CLOSED)
    closed = decide(world, incoming(world, hit_notice=closing), facts())
    assert (closed.reason, closed.signal_id, closed.category) == (
        Refusal.HIT_CLOSED,
        7,
        "woonfraude",
    )
    busy = facts()
    busy.requests = PER_DAY
    over = decide(world, incoming(world), busy)
    assert (over.reason, over.signal_id, over.category) == (
        Refusal.QUOTA_EXCEEDED,
        7,
        "woonfraude",
    )


def test_a_request_up_to_the_clock_skew_ahead_is_taken(world: World) -> None:
    ahead = NOW + disclosure.MAX_CLOCK_SKEW
    verdict = decide(world, incoming(world, now=ahead), facts())
    assert verdict.outcome is Outcome.GRANTED


def test_an_envelope_of_the_largest_size_is_opened(world: World) -> None:
    largest = common_pb2.Sealed(
        sender=GEMEENTE,
        recipient=WOCO,
        nonce=b"\x00" * 24,
        ciphertext=b"\x00" * disclosure.MAX_ENVELOPE_BYTES,
    )
    with pytest.raises(DecryptionFailed) as caught:  # it does not open, but it was tried
        disclosure.open_envelope(world.keys[WOCO], world.covenant, largest)
    assert caught.value.message != "envelope too large"


def test_the_hit_proof_has_its_exact_form() -> None:
    """Requester and owner may run different versions: the proof is pinned to its
    definition, HMAC-SHA256 over the domain and the request's binding fields, each with
    its length as two bytes, big-endian."""
    parts = [
        b"samenloop/v1 disclosure proof",
        "riec-één".encode(),
        b"\x61" * 16,
        b"gemeente",
        b"woco",
        GROUP,
        REF,
    ]
    message = b"".join(len(part).to_bytes(2, "big") + part for part in parts)
    assert (
        disclosure.hit_proof(
            PROOF_KEY,
            covenant_id="riec-één",
            request_id=b"\x61" * 16,
            requester="gemeente",
            owner="woco",
            hit_group_id=GROUP,
            signal_ref=REF,
        )
        == hmac.new(PROOF_KEY, message, hashlib.sha256).digest()
    )


def test_requests_at_the_limits_are_taken(world: World) -> None:
    request = _request(world)
    request.purpose = "p" * 64
    request.requester_officer = "o" * 64
    del request.requested_fields[:]
    request.requested_fields.extend(f"f{i}" for i in range(64))
    parsed = disclosure.parse_request(request.SerializeToString(), sender=GEMEENTE, me=WOCO)
    assert (len(parsed.purpose), len(parsed.officer), len(parsed.fields)) == (64, 64, 64)
    request.issued_at.seconds = 2**62
    with pytest.raises(InvalidInput) as caught:
        disclosure.parse_request(request.SerializeToString(), sender=GEMEENTE, me=WOCO)
    assert (caught.value.field, caught.value.message) == ("issued_at", "the time is out of range")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [((), "disclosure.no_fields"), (("naam", "adres", "naam"), "disclosure.duplicate")],
)
def test_field_lists_are_refused_with_their_reason(
    world: World, fields: tuple[str, ...], reason: str
) -> None:
    request = _request(world)
    del request.requested_fields[:]
    request.requested_fields.extend(fields)
    with pytest.raises(InvalidInput) as caught:
        disclosure.parse_request(request.SerializeToString(), sender=GEMEENTE, me=WOCO)
    assert (caught.value.field, caught.value.reason) == ("requested_fields", reason)


def test_approval_refusals_after_the_signal_name_it(world: World) -> None:
    pending = _pending(incoming(world, purpose="bibob", fields=("naam",)))
    moved = facts()
    moved.own_refs[GROUP] = frozenset({OTHER_REF})
    unlisted = disclosure.approve(world.covenant, pending, "b@woco", moved, me=WOCO, now=NOW)
    assert (unlisted.reason, unlisted.message, unlisted.signal_id) == (
        Refusal.NOT_IN_HIT,
        "the owner's latest notice of the hit no longer lists the signal",
        7,
    )
    left = facts()
    left.members[GROUP] = frozenset({POLITIE})
    gone = disclosure.approve(world.covenant, pending, "b@woco", left, me=WOCO, now=NOW)
    assert (gone.reason, gone.signal_id, gone.category) == (Refusal.NOT_IN_HIT, 7, "woonfraude")


def test_a_rule_for_the_exact_category_counts_its_own_releases(world: World) -> None:
    policy = world.covenant.policy
    release = tuple(
        dataclasses.replace(rule, max_per_period=1) if rule.purpose == "adresfraude" else rule
        for rule in policy.release
    )
    covenant = dataclasses.replace(
        world.covenant, policy=dataclasses.replace(policy, release=release)
    )
    owner_facts = _Recording(**vars(facts()))
    owner_facts.grants = 1
    verdict = disclosure.decide(covenant, WOCO, incoming(world), owner_facts, now=NOW)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSED, Refusal.QUOTA_EXCEEDED)
    assert owner_facts.asked == [(GEMEENTE, "adresfraude", "woonfraude", NOW - timedelta(days=30))]


def test_a_pending_verdict_keeps_what_is_withheld_and_the_envelope_its_request_id(
    world: World,
) -> None:
    verdict = decide(world, incoming(world, purpose="bibob", fields=("naam", "adres")), facts())
    assert (verdict.outcome, verdict.fields, verdict.withheld) == (
        Outcome.PENDING,
        ("naam",),
        ("adres",),
    )
    _, envelope = disclosure.build_request(
        world.keys[GEMEENTE],
        world.covenant,
        notice(world),
        request_id=b"\x63" * 16,
        owner=WOCO,
        signal_ref=REF,
        purpose="adresfraude",
        fields=("naam",),
        officer="a@gemeente",
        justification="",
        proof_key=PROOF_KEY,
        now=NOW,
    )
    assert (envelope.message_id, envelope.recipient) == (b"\x63" * 16, WOCO)
