"""Disclosure (DESIGN flow 5) and covenant updates at the node.

Part one drives the sans-IO core (:mod:`samenloop.node.disclosure`) with real
keys and broker-signed notices and an in-memory :class:`Facts`: every refusal
reason, every way the hit proof fails (one message for all), a grant with
withheld fields, four eyes (pending, approve, deny, the asking officer refused
however the name is spelled, approval failing closed), quotas per rule period
and per day, forged envelopes. Then the path of a received request: built and
sealed by the requester, received by the owner's desk, decided pending and
stored with its hit group on SQLite, and approved, or refused at approval
because the owner's notice of now says the hit closed or the requester left.

Part two runs a real broker and three real nodes in this process (mTLS on
loopback, SQLite) and drives them with the client library: a granted
disclosure delivers exactly the allowed fields; an unknown purpose is refused
locally; a four-eyes request stays pending and releases nothing until a second
officer approves; a replayed envelope is refused as a replay and releases
nothing new; forged notices and signals outside the hit are refused; covenant
updates delivered through the broker's mailbox are adopted, persisted and
replayed after a restart, and rolled-back, tampered or under-signed ones are
refused while the node keeps its version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from samenloop.node import disclosure, models
from samenloop.node.client import Disclosure, NodeClient
from samenloop.node.daemon import RunningNode, build_node
from samenloop.node.disclosure import (
    IncomingRequest,
    Outcome,
    PendingRequest,
    SignalFacts,
    Verdict,
)
from samenloop.node.disclosure_desk import DisclosureDesk
from samenloop.node.models import DisclosureDirection, DisclosureState
from samenloop.node.provision import PartySpec, Provisioned, provision
from samenloop.node.store import NewSignal, NodeStore
from samenloop.policies import database
from samenloop.policies.audit import AuditKind
from samenloop.policies.config import load_broker_config, load_node_config
from samenloop.policies.covenant import Covenant, Role, with_new_attribute_key
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
from samenloop.policies.trust import SignedCovenant, sign_covenant
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
    store: NodeStore
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
        accepted = self.store.accept_notice(
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
    from samenloop.node.identifiers import parse

    engine = database.make_engine(f"sqlite:///{tmp_path / 'woco.db'}")
    database.upgrade(engine, "samenloop.node.migrations")
    store = NodeStore(engine, owner=WOCO)
    (record,) = store.add_signals(
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
    (pending,) = store.pending_identifiers(10, now=NOW)
    store.record_tokens({pending.id: b"\x66" * 32}, 1, now=NOW, proof_keys={pending.id: PROOF_KEY})
    made: list[Owner] = []
    desk = DisclosureDesk(
        keys=world.keys[WOCO],
        covenant=lambda: world.covenant,
        store=store,
        clock=lambda: NOW,
        stale=lambda: made[0].stale,
    )
    owner = Owner(world, store, desk, record.identifiers[0].signal_ref)
    made.append(owner)
    owner.notice(broker_pb2.HIT_NOTICE_KIND_NEW, [GEMEENTE])
    yield owner
    engine.dispose()


def _approved(owner: Owner, request_id: bytes) -> Any:
    stored = owner.store.disclosure(request_id)
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
    stored = owner.store.disclosure(request_id)
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
    stored = owner.store.disclosure(request_id)
    assert stored is not None
    assert (stored.state, stored.refusal_reason, stored.refusal_message) == (
        DisclosureState.REFUSED,
        "covenant_stale",
        STALE,
    )
    assert dict(stored.released) == {}
    (answer,) = owner.store.envelope_outbox()  # the refusal goes back: ask again later
    assert answer.recipient == GEMEENTE


def test_no_officer_approves_while_the_owner_is_stale(owner: Owner) -> None:
    request_id = secrets.token_bytes(16)
    owner.receive(request_id)  # pending, while fresh
    owner.stale = STALE
    with pytest.raises(CovenantStale) as caught:
        owner.desk.approve(request_id, officer="b@woco")
    assert caught.value.field == "covenant"
    still = owner.store.disclosure(request_id)
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


# --- part two: real daemons ---------------------------------------------------------------

BSN = "111222333"
WAIT = 30.0


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Cluster:
    provisioned: Provisioned
    broker: Any
    nodes: dict[str, RunningNode]
    clients: dict[str, NodeClient]

    def start(self, party: str) -> None:
        config = load_node_config(self.provisioned.node_configs[party])
        self.nodes[party] = build_node(config)
        assert config.api_listen is not None
        self.clients[party] = NodeClient.from_config(self.provisioned.node_configs[party])

    def stop(self, party: str) -> None:
        self.clients.pop(party).close()
        self.nodes.pop(party).stop(None)

    def deliver(self, party: str, kind: Any, payload: bytes) -> None:
        """Put an item in a party's broker mailbox, as PublishCovenant does, and ring."""
        self.broker.store.enqueue(party, payload, kind, datetime.now(UTC))
        self.broker.service._bell.ring([party])  # wake its stream now, not at a heartbeat

    def resend(self, sender: str, sealed: bytes, recipient: str) -> None:
        """Queue a sealed envelope in a node's outbox under a new message id: its uplink
        sends it through the broker as any other."""
        with self.nodes[sender].store.engine.begin() as conn:
            conn.execute(
                sa.insert(models.EnvelopeOutboxItem).values(
                    client_message_id=secrets.token_bytes(16),
                    recipient=recipient,
                    sealed=sealed,
                    created_at=datetime.now(UTC),
                )
            )
        self.nodes[sender].uplink.wake.set()


@contextlib.contextmanager
def running_cluster(
    root: Any, *, specs: Sequence[PartySpec] = SPECS, holders: Sequence[str] = (GEMEENTE, WOCO)
) -> Iterator[Cluster]:
    """A broker and a node per party; woco holds W-1 (bsn, with details) and W-2, the
    gemeente G-1 (the same bsn)."""
    from samenloop.broker.server import build_server  # only the test wires both daemons

    provisioned = provision(
        root,
        "riec-disclosure",
        specs,
        list(holders),
        2,
        now=datetime.now(UTC),
        policy=small_quota_policy(),
        api_tcp=True,
    )
    broker_config = load_broker_config(provisioned.broker_config)
    engine = database.make_engine(broker_config.database_url)
    database.upgrade(engine, "samenloop.broker.migrations")
    engine.dispose()
    for path in provisioned.node_configs.values():
        engine = database.make_engine(load_node_config(path).database_url)
        database.upgrade(engine, "samenloop.node.migrations")
        engine.dispose()
    cluster = Cluster(provisioned, build_server(broker_config), {}, {})
    try:
        for spec in specs:
            cluster.start(spec.id)
        cluster.clients[WOCO].add_signal(
            "W-1", "woonfraude", [("bsn", BSN)], details={**DETAILS, "dossier": "D-77"}
        )
        cluster.clients[WOCO].add_signal("W-2", "woonfraude", [("kvk", "01234567")])
        cluster.clients[GEMEENTE].add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
        yield cluster
    finally:
        for party in list(cluster.nodes):
            cluster.stop(party)
        cluster.broker.stop(None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("disclosure-e2e")) as running:
        yield running


@pytest.fixture
def fresh_cluster(tmp_path: Any) -> Iterator[Cluster]:
    """A cluster of its own, for a test that spends quota or changes the covenant; the
    OPRF key is held by woco and politie, so that a covenant version may drop the gemeente."""
    with running_cluster(tmp_path, holders=(WOCO, POLITIE)) as running:
        yield running


def gemeente_hit(cluster: Cluster) -> tuple[bytes, bytes]:
    """The hit group and woco's ref in it, as the gemeente's node shows them."""
    hits = wait_for(
        "the gemeente's hit",
        lambda: [
            h for h in cluster.clients[GEMEENTE].hits() if any(m.party == WOCO for m in h.members)
        ],
    )
    (member,) = [m for m in hits[0].members if m.party == WOCO]
    return hits[0].group_id, member.signal_refs[0]


def final(cluster: Cluster, party: str, request_id: bytes, *states: DisclosureState) -> Disclosure:
    wanted = states or (DisclosureState.GRANTED, DisclosureState.REFUSED)

    def reached() -> Disclosure | None:
        try:
            found = cluster.clients[party].disclosure(request_id)
        except NotFound:  # not arrived yet
            return None
        return found if found.state in wanted else None

    return wait_for(f"{party}'s request in {wanted}", reached)


def disclosure_count(cluster: Cluster, party: str) -> int:
    return len(cluster.clients[party].disclosures())


def test_a_granted_disclosure_delivers_exactly_the_allowed_fields(cluster: Cluster) -> None:
    group, ref = gemeente_hit(cluster)
    asked = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "adresfraude", ["naam", "adres", "dossier"], officer="a@gemeente"
    )
    assert (asked.state, asked.direction) == (DisclosureState.SENT, DisclosureDirection.OUTGOING)
    got = final(cluster, GEMEENTE, asked.request_id)
    assert got.state is DisclosureState.GRANTED
    assert dict(got.released_fields) == {"naam": DETAILS["naam"], "adres": DETAILS["adres"]}
    assert got.withheld_fields == ("dossier",)
    answered = final(cluster, WOCO, asked.request_id)
    assert answered.direction is DisclosureDirection.INCOMING
    assert dict(answered.released_fields) == {"adres": "", "naam": ""}  # names, no values kept


def test_bad_requests_are_refused_locally_and_store_nothing(cluster: Cluster) -> None:
    group, ref = gemeente_hit(cluster)
    client = cluster.clients[GEMEENTE]
    before = disclosure_count(cluster, GEMEENTE)
    cases = [
        ((group, WOCO, ref, "nieuwsgierigheid", ["naam"]), "purpose"),
        ((group, WOCO, ref, "adresfraude", []), "fields"),
        ((group, POLITIE, ref, "adresfraude", ["naam"]), "owner"),
        ((group, WOCO, b"\x01" * 16, "adresfraude", ["naam"]), "signal_ref"),
        ((b"\x02" * 16, WOCO, ref, "adresfraude", ["naam"]), "hit_group_id"),
    ]
    for args, name in cases:
        with pytest.raises((InvalidInput, NotFound)) as refused:
            client.request_disclosure(*args, officer="a@gemeente")
        assert refused.value.field == name
    assert disclosure_count(cluster, GEMEENTE) == before


def test_four_eyes_releases_nothing_until_a_second_officer_approves(cluster: Cluster) -> None:
    group, ref = gemeente_hit(cluster)
    asked = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "bibob", ["naam", "omschrijving"], officer="a@gemeente"
    )
    waiting = final(cluster, GEMEENTE, asked.request_id, DisclosureState.PENDING_APPROVAL)
    assert dict(waiting.released_fields) == {}
    incoming_ = final(cluster, WOCO, asked.request_id, DisclosureState.PENDING_APPROVAL)
    assert dict(incoming_.released_fields) == {}
    woco = cluster.clients[WOCO]
    assert [d.request_id for d in woco.disclosures("incoming", "pending_approval")] == [
        asked.request_id
    ]
    assert woco.status().pending_approvals == 1
    with pytest.raises(NotAllowed) as same:
        woco.approve_disclosure(asked.request_id, officer="a@gemeente")
    assert same.value.field == "officer"
    time.sleep(0.3)
    assert cluster.clients[GEMEENTE].disclosure(asked.request_id).released_fields == {}

    approved = woco.approve_disclosure(asked.request_id, officer="b@woco", note="akkoord")
    assert approved.state is DisclosureState.GRANTED
    assert [(d.officer, d.approved) for d in approved.decisions] == [("b@woco", True)]
    got = final(cluster, GEMEENTE, asked.request_id)
    assert dict(got.released_fields) == {"naam": DETAILS["naam"], "omschrijving": "leegstand"}
    with pytest.raises(NotAllowed):  # decided once, for good
        woco.deny_disclosure(asked.request_id, officer="c@woco", reason="te laat")

    denied = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "bibob", ["naam"], officer="a@gemeente"
    )
    final(cluster, WOCO, denied.request_id, DisclosureState.PENDING_APPROVAL)
    woco.deny_disclosure(denied.request_id, officer="b@woco", reason="lopend onderzoek")
    refused = final(cluster, GEMEENTE, denied.request_id)
    assert (refused.state, refused.refusal_reason, refused.refusal_message) == (
        DisclosureState.REFUSED,
        "denied_by_officer",
        "lopend onderzoek",
    )
    assert dict(refused.released_fields) == {}


def test_officers_with_spaces_and_accents_decide_and_are_shown_and_audited_as_given(
    fresh_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second review's attack 6: ``Bd-Teamleider-7 `` and ``Jürgen de Vries`` were
    refused naming ``actor``, a field nobody sent. Through the local API now: taken,
    stored, shown and audited as given; an invalid name refused naming ``officer``. (A
    cluster of its own: two Bibob requests would pass the shared one's period quota.)"""
    from samenloop.policies.cli import main  # the CLI as a partner runs it

    cluster = fresh_cluster

    group, ref = gemeente_hit(cluster)
    woco = cluster.clients[WOCO]
    asked = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "bibob", ["naam"], officer="Jürgen de Vries"
    )
    final(cluster, WOCO, asked.request_id, DisclosureState.PENDING_APPROVAL)
    about = asked.request_id.hex()
    audited = len(cluster.nodes[WOCO].store.audit_entries(subject=about))
    for bad in ("", "  ", "b\x1b[2J", "b\u202eoow", "ü" * 33):
        for decide_ in (
            lambda bad=bad: woco.approve_disclosure(asked.request_id, officer=bad),
            lambda bad=bad: woco.deny_disclosure(asked.request_id, officer=bad, reason="nee"),
        ):
            with pytest.raises(InvalidInput) as caught:
                decide_()
            assert caught.value.field == "officer"
    with pytest.raises(NotAllowed):  # the asker, however written, is not a second officer
        woco.approve_disclosure(asked.request_id, officer="JÜRGEN  de vries")
    assert len(cluster.nodes[WOCO].store.audit_entries(subject=about)) == audited  # nothing
    assert woco.disclosure(asked.request_id).state is DisclosureState.PENDING_APPROVAL

    approved = woco.approve_disclosure(asked.request_id, officer="Bd-Teamleider-7 ", note="ok")
    assert approved.state is DisclosureState.GRANTED
    assert approved.requester_officer == "Jürgen de Vries"
    assert [(d.officer, d.approved) for d in approved.decisions] == [("Bd-Teamleider-7 ", True)]
    entries = cluster.nodes[WOCO].store.audit_entries(
        kind=AuditKind.DISCLOSURE_APPROVED, subject=asked.request_id.hex()
    )
    assert [e.actor for e in entries] == ["Bd-Teamleider-7 "]
    final(cluster, GEMEENTE, asked.request_id)

    denied = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "bibob", ["naam"], officer="gem-bibob-3"
    )
    final(cluster, WOCO, denied.request_id, DisclosureState.PENDING_APPROVAL)
    woco.deny_disclosure(denied.request_id, officer="Łukasz Żak", reason="lopend onderzoek")
    entries = cluster.nodes[WOCO].store.audit_entries(
        kind=AuditKind.DISCLOSURE_DENIED, subject=denied.request_id.hex()
    )
    assert [e.actor for e in entries] == ["Łukasz Żak"]

    # The commands show the names as they were given, as plain text.
    capsys.readouterr()
    woco_node = str(cluster.provisioned.node_configs[WOCO])
    assert main(["disclosure", "show", asked.request_id.hex(), "--node", woco_node]) == 0
    shown = capsys.readouterr().out
    assert "by Jürgen de Vries" in shown
    assert "approved by Bd-Teamleider-7 : ok" in shown
    assert main(["disclosure", "show", denied.request_id.hex(), "--node", woco_node]) == 0
    assert "denied by Łukasz Żak: lopend onderzoek" in capsys.readouterr().out
    assert main(["audit", "show", "--config", woco_node, "--actor", "Łukasz Żak"]) == 0
    assert "Łukasz Żak" in capsys.readouterr().out


def _sent_envelope(cluster: Cluster, party: str, request_id: bytes) -> bytes:
    e = models.EnvelopeOutboxItem
    with cluster.nodes[party].store.engine.connect() as conn:
        return bytes(
            conn.execute(sa.select(e.sealed).where(e.client_message_id == request_id)).scalar_one()
        )


def _answers(cluster: Cluster, owner: str = WOCO, requester: str = GEMEENTE) -> int:
    """How many envelopes the owner's node ever queued for the requester."""
    e = models.EnvelopeOutboxItem
    with cluster.nodes[owner].store.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).where(e.recipient == requester)).scalar_one()
        )


def _decisions(cluster: Cluster, party: str, request_id: bytes) -> list[dict[str, Any]]:
    entries = cluster.nodes[party].store.audit_entries(
        kind=AuditKind.DISCLOSURE_DECISION, subject=request_id.hex()
    )
    return [dict(e.details) for e in entries]


def test_a_replayed_request_is_refused_and_releases_nothing_new(cluster: Cluster) -> None:
    group, ref = gemeente_hit(cluster)
    asked = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "adresfraude", ["naam"], officer="a@gemeente"
    )
    final(cluster, WOCO, asked.request_id)
    answers = _answers(cluster)
    cluster.resend(GEMEENTE, _sent_envelope(cluster, GEMEENTE, asked.request_id), WOCO)
    decisions = wait_for(
        "the replay's refusal",
        lambda: len(d := _decisions(cluster, WOCO, asked.request_id)) == 2 and d,
    )
    assert [(d["outcome"], d["reason"], d["released"]) for d in decisions] == [
        ("granted", "", "naam"),
        ("refused", "replay", ""),
    ]
    assert _answers(cluster) == answers  # recorded, not answered
    stored = [d for d in cluster.clients[WOCO].disclosures() if d.request_id == asked.request_id]
    assert len(stored) == 1
    assert stored[0].state is DisclosureState.GRANTED
    # The requester's request stays as it was granted: a final answer is final.
    assert cluster.clients[GEMEENTE].disclosure(asked.request_id).state is DisclosureState.GRANTED


def _proof_key(cluster: Cluster, party: str = GEMEENTE, reference: str = "G-1") -> bytes:
    """The hit proof key a node stored for the (first) identifier of one of its signals."""
    store = cluster.nodes[party].store
    record = store.signal(reference)
    assert record is not None
    key = store.hit_proof_key(record.identifiers[0].signal_ref)
    assert key is not None
    return key


def _forge(
    cluster: Cluster,
    hit_notice: common_pb2.Signed,
    ref: bytes,
    *,
    purpose: str = "adresfraude",
    proof_key: bytes | None = None,
) -> bytes:
    """A request the gemeente's client could never send, queued at its node as sent; its
    hit proof is made with the gemeente's real key of G-1 unless ``proof_key`` is given."""
    keys = PartyKeys.load(cluster.provisioned.party_dir(GEMEENTE) / "party-keys.json")
    request_id = secrets.token_bytes(16)
    _, envelope = disclosure.build_request(
        keys,
        cluster.provisioned.covenant,
        hit_notice,
        request_id=request_id,
        owner=WOCO,
        signal_ref=ref,
        purpose=purpose,
        fields=("naam",),
        officer="a@gemeente",
        justification="",
        proof_key=_proof_key(cluster) if proof_key is None else proof_key,
        now=datetime.now(UTC),
    )
    cluster.resend(GEMEENTE, envelope.sealed.SerializeToString(), WOCO)
    return request_id


def test_forged_notices_and_signals_outside_the_hit_are_refused(cluster: Cluster) -> None:
    group, ref = gemeente_hit(cluster)
    real = common_pb2.Signed.FromString(cluster.clients[GEMEENTE].hit(group).notice)
    gemeente_keys = PartyKeys.load(cluster.provisioned.party_dir(GEMEENTE) / "party-keys.json")
    forged = common_pb2.Signed()
    forged.CopyFrom(real)
    forged.signature = gemeente_keys.sign(SignatureContext.HIT_NOTICE, real.body)
    woco_notice = common_pb2.Signed.FromString(cluster.clients[WOCO].hit(group).notice)
    other_ref = cluster.nodes[WOCO].store.signal("W-2")
    assert other_ref is not None
    cases = [
        (_forge(cluster, forged, ref), "invalid_notice"),  # signed by another key
        (_forge(cluster, woco_notice, ref), "invalid_notice"),  # addressed to woco
        (_forge(cluster, real, secrets.token_bytes(16)), "not_in_hit"),
        (_forge(cluster, real, other_ref.identifiers[0].signal_ref), "not_in_hit"),
        # The real notice and ref, but a proof under a key that is not the subject's.
        (_forge(cluster, real, ref, proof_key=secrets.token_bytes(32)), "not_in_hit"),
    ]
    for request_id, reason in cases:
        answered = final(cluster, WOCO, request_id)
        assert (answered.state, answered.refusal_reason) == (DisclosureState.REFUSED, reason)
        assert dict(answered.released_fields) == {}


def _draft(cluster: Cluster, version: int, per_day: int) -> Covenant:
    covenant = cluster.provisioned.covenant
    quotas = dataclasses.replace(covenant.policy.quotas, disclosure_requests_per_day=per_day)
    return dataclasses.replace(
        covenant, version=version, policy=dataclasses.replace(covenant.policy, quotas=quotas)
    )


def _rejections(cluster: Cluster, party: str) -> list[str]:
    entries = cluster.nodes[party].store.audit_entries(kind=AuditKind.COVENANT_REJECTED)
    return [str(e.details["reason"]) for e in entries]


def test_covenant_updates_through_the_mailbox(cluster: Cluster) -> None:
    from samenloop.broker.mailbox import ItemKind

    party = POLITIE
    assert cluster.clients[party].status().covenant_version == 1
    signed = cluster.provisioned.sign(_draft(cluster, 2, 7))
    cluster.deliver(party, ItemKind.COVENANT_UPDATE, signed.to_proto().SerializeToString())
    wait_for("version 2", lambda: cluster.clients[party].status().covenant_version == 2)
    assert (
        cluster.nodes[party]
        .uplink.disclosures._covenant()
        .policy.quotas.disclosure_requests_per_day
        == 7
    )

    # Refused: a rolled-back (not newer) version, a tampered one, an under-signed one.
    rollback = cluster.provisioned.sign(_draft(cluster, 2, 9))
    good = cluster.provisioned.sign(_draft(cluster, 3, 8))
    tampered = SignedCovenant(
        body=good.body.replace(b"Politie Test", b"Politie Tost"), signatures=good.signatures
    )
    signer, path = next(iter(cluster.provisioned.signer_keys.items()))
    under = sign_covenant(
        SignedCovenant.of(_draft(cluster, 3, 8)), signer, PartyKeys.load(path).signing_key
    )
    for bad in (rollback, tampered, under):
        cluster.deliver(party, ItemKind.COVENANT_UPDATE, bad.to_proto().SerializeToString())
    garbage = common_pb2.SignedCovenant(body=b"not a covenant")
    cluster.deliver(party, ItemKind.COVENANT_UPDATE, garbage.SerializeToString())
    wait_for("four rejections", lambda: len(_rejections(cluster, party)) == 4)
    assert _rejections(cluster, party) == [
        "covenant.rollback",
        "covenant.bad_signature",
        "covenant.under_signed",
        "covenant.under_signed",  # unsigned garbage: signatures are checked before parsing
    ]
    assert cluster.clients[party].status().covenant_version == 2

    # The accepted version survives a restart: replayed from the node's store.
    cluster.stop(party)
    cluster.start(party)
    assert cluster.clients[party].status().covenant_version == 2


# --- the reviewed defects, each on a cluster of its own --------------------------------------


def _keys(cluster: Cluster, party: str) -> PartyKeys:
    return PartyKeys.load(cluster.provisioned.party_dir(party) / "party-keys.json")


def _hand_sealed_request(
    cluster: Cluster,
    hit_notice: common_pb2.Signed,
    ref: bytes,
    *,
    fields: Sequence[str] = ("naam",),
    justification: str = "",
    issued_seconds: int | None = None,
) -> bytes:
    """A request no client would send (no checks), sealed by the gemeente to woco."""
    covenant = cluster.provisioned.covenant
    request = disclosure_pb2.DisclosureRequest(
        request_id=secrets.token_bytes(16),
        covenant_id=covenant.id,
        covenant_version=covenant.version,
        requester=GEMEENTE,
        owner=WOCO,
        hit_notice=hit_notice,
        signal_ref=ref,
        purpose="adresfraude",
        requested_fields=list(fields),
        requester_officer="a@gemeente",
        justification=justification,
    )
    request.issued_at.FromDatetime(datetime.now(UTC))
    if issued_seconds is not None:
        request.issued_at.seconds = issued_seconds
    envelope = disclosure._seal(
        _keys(cluster, GEMEENTE),
        covenant,
        WOCO,
        SignatureContext.DISCLOSURE_REQUEST,
        request.SerializeToString(),
        bytes(request.request_id),
    )
    return envelope.sealed.SerializeToString()


def _dropped(cluster: Cluster, party: str) -> list[dict[str, Any]]:
    entries = cluster.nodes[party].store.audit_entries(kind=AuditKind.DISCLOSURE_RECEIVED)
    return [dict(e.details) for e in entries if "dropped" in e.details]


def test_bad_envelopes_are_skipped_and_the_mailbox_goes_on(
    fresh_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = fresh_cluster
    group, ref = gemeente_hit(cluster)
    notice_ = common_pb2.Signed.FromString(cluster.clients[GEMEENTE].hit(group).notice)

    def broken(cursor: int, sender: str, body: bytes, covenant: Covenant) -> None:
        raise OverflowError("a handler that fails")

    # A kind handled by a handler that raises (as the case and picture desks register).
    monkeypatch.setitem(
        cluster.nodes[WOCO].uplink.disclosures.handlers, SignatureContext.CASE_MESSAGE, broken
    )
    case_message = disclosure._seal(
        _keys(cluster, GEMEENTE),
        cluster.provisioned.covenant,
        WOCO,
        SignatureContext.CASE_MESSAGE,
        b"\x00",
        secrets.token_bytes(16),
    )
    cluster.resend(GEMEENTE, case_message.sealed.SerializeToString(), WOCO)
    # Requests the owner cannot take: 65 fields, a justification over 4096 bytes, an
    # issued_at no datetime holds.
    for sealed in (
        _hand_sealed_request(cluster, notice_, ref, fields=[f"f{i}" for i in range(65)]),
        _hand_sealed_request(cluster, notice_, ref, justification="x" * 5000),
        _hand_sealed_request(cluster, notice_, ref, issued_seconds=10**15),
    ):
        cluster.resend(GEMEENTE, sealed, WOCO)
    # An answer the requester cannot take: a refusal whose message is over 4096 bytes.
    too_long = disclosure.respond(
        _keys(cluster, WOCO),
        cluster.provisioned.covenant,
        request_id=secrets.token_bytes(16),
        requester=GEMEENTE,
        verdict=Verdict(Outcome.REFUSED, reason=Refusal.NOT_ALLOWED, message="x" * 5000),
        approved_by_second_officer=False,
        message_id=secrets.token_bytes(16),
        now=datetime.now(UTC),
    )
    cluster.resend(WOCO, too_long.sealed.SerializeToString(), GEMEENTE)
    wait_for("the gemeente's skip", lambda: _dropped(cluster, GEMEENTE))

    # The next valid request in the mailbox is still answered, and its answer received.
    asked = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "adresfraude", ["naam"], officer="a@gemeente"
    )
    got = final(cluster, GEMEENTE, asked.request_id)
    assert got.state is DisclosureState.GRANTED
    skipped = [(d["dropped"], d.get("field"), d.get("reason")) for d in _dropped(cluster, WOCO)]
    assert skipped == [
        ("malformed", None, "OverflowError"),
        ("malformed", "requested_fields", "too_large"),
        ("malformed", "justification", "too_large"),
        ("malformed", "issued_at", "invalid_input"),
    ]
    assert [(d["dropped"], d.get("field")) for d in _dropped(cluster, GEMEENTE)] == [
        ("malformed", "refused.message")
    ]
    assert cluster.clients[WOCO].disclosures() == [final(cluster, WOCO, asked.request_id)]


def _ask_bibob(cluster: Cluster, group: bytes, ref: bytes) -> bytes:
    asked = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "bibob", ["naam"], officer="a@gemeente"
    )
    final(cluster, WOCO, asked.request_id, DisclosureState.PENDING_APPROVAL)
    final(cluster, GEMEENTE, asked.request_id, DisclosureState.PENDING_APPROVAL)
    return asked.request_id


def test_concurrent_approvals_release_no_more_than_the_period_allows(
    fresh_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = fresh_cluster
    group, ref = gemeente_hit(cluster)
    woco = cluster.clients[WOCO]
    first = _ask_bibob(cluster, group, ref)
    assert woco.approve_disclosure(first, officer="b@woco").state is DisclosureState.GRANTED
    racing = [_ask_bibob(cluster, group, ref) for _ in range(BIBOB_PER_PERIOD)]
    # One release is left in the period. Counting is slow, so that unserialized
    # decisions would both count before either writes.
    store = cluster.nodes[WOCO].uplink.disclosures._store
    count = store.grants_since

    def slow_count(*args: Any) -> int:
        counted = count(*args)
        time.sleep(0.3)
        return counted

    monkeypatch.setattr(store, "grants_since", slow_count)
    start = threading.Barrier(len(racing))
    states: dict[bytes, DisclosureState] = {}

    def approve(request_id: bytes) -> None:
        start.wait()
        states[request_id] = woco.approve_disclosure(request_id, officer="c@woco").state

    threads = [threading.Thread(target=approve, args=(r,)) for r in racing]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(states.values()) == [DisclosureState.GRANTED, DisclosureState.REFUSED]
    (refused,) = [r for r in racing if states[r] is DisclosureState.REFUSED]
    assert woco.disclosure(refused).refusal_reason == "quota_exceeded"
    granted = woco.disclosures("incoming", "granted")
    assert len(granted) == BIBOB_PER_PERIOD


def test_a_replayed_pending_request_does_not_spoil_the_real_answer(
    fresh_cluster: Cluster,
) -> None:
    cluster = fresh_cluster
    group, ref = gemeente_hit(cluster)
    request_id = _ask_bibob(cluster, group, ref)
    # A replay refusal (as an older owner would send it) is ignored by the requester.
    replay = disclosure.respond(
        _keys(cluster, WOCO),
        cluster.provisioned.covenant,
        request_id=request_id,
        requester=GEMEENTE,
        verdict=Verdict(Outcome.REFUSED, reason=Refusal.REPLAY, message="seen before"),
        approved_by_second_officer=False,
        message_id=secrets.token_bytes(16),
        now=datetime.now(UTC),
    )
    cluster.resend(WOCO, replay.sealed.SerializeToString(), GEMEENTE)
    wait_for("the gemeente ignoring the replay refusal", lambda: _dropped(cluster, GEMEENTE))
    assert cluster.clients[GEMEENTE].disclosure(request_id).state is (
        DisclosureState.PENDING_APPROVAL
    )
    # The request's envelope, sent again through the broker: recorded, not answered.
    answers = _answers(cluster)
    cluster.resend(GEMEENTE, _sent_envelope(cluster, GEMEENTE, request_id), WOCO)
    decisions = wait_for(
        "the replay's record",
        lambda: len(d := _decisions(cluster, WOCO, request_id)) == 2 and d,
    )
    assert [(d["outcome"], d["reason"]) for d in decisions] == [
        ("pending_approval", ""),
        ("refused", "replay"),
    ]
    assert _answers(cluster) == answers
    assert cluster.clients[WOCO].approve_disclosure(request_id, officer="b@woco").state is (
        DisclosureState.GRANTED
    )
    got = final(cluster, GEMEENTE, request_id)
    assert got.state is DisclosureState.GRANTED
    assert dict(got.released_fields) == {"naam": DETAILS["naam"]}


def test_a_pending_request_of_a_removed_party_is_decided_without_an_answer(
    fresh_cluster: Cluster,
) -> None:
    from samenloop.broker.mailbox import ItemKind

    cluster = fresh_cluster
    group, ref = gemeente_hit(cluster)
    approved, denied = _ask_bibob(cluster, group, ref), _ask_bibob(cluster, group, ref)
    covenant = cluster.provisioned.covenant
    without = with_new_attribute_key(
        covenant, tuple(p for p in covenant.parties if p.id != GEMEENTE), version=2
    )
    signed = cluster.provisioned.sign(without)
    cluster.deliver(WOCO, ItemKind.COVENANT_UPDATE, signed.to_proto().SerializeToString())
    stamp = cluster.provisioned.stamp(without, now=datetime.now(UTC))
    cluster.deliver(WOCO, ItemKind.COVENANT_TIMESTAMP, stamp.signed)
    woco = cluster.clients[WOCO]
    wait_for(
        "woco on version 2, fresh",
        lambda: (s := woco.status()).covenant_version == 2 and s.covenant_fresh,
    )
    answers = _answers(cluster)
    for request_id, decide_ in (
        (approved, lambda r: woco.approve_disclosure(r, officer="b@woco")),
        (denied, lambda r: woco.deny_disclosure(r, officer="b@woco", reason="nee")),
    ):
        decided = decide_(request_id)
        assert (decided.state, decided.refusal_reason, decided.refusal_message) == (
            DisclosureState.REFUSED,
            "not_allowed",
            disclosure.NO_LONGER_A_PARTY,
        )
        assert [d.officer for d in decided.decisions] == ["b@woco"]
        assert dict(decided.released_fields) == {}
    assert woco.status().pending_approvals == 0
    assert _answers(cluster) == answers  # nothing sealed to a party the covenant dropped


GEMEENTE_B = "gemeente-b"


def test_a_requester_that_left_the_hit_is_refused(tmp_path: Any) -> None:
    specs = (*SPECS, PartySpec(GEMEENTE_B, "Gemeente B", Role.GEMEENTE))
    with running_cluster(tmp_path, specs=specs, holders=(WOCO, POLITIE)) as cluster:
        cluster.clients[GEMEENTE_B].add_signal("B-1", "woonfraude", [("bsn", BSN)])
        group, ref = gemeente_hit(cluster)
        owner = cluster.nodes[WOCO].store
        wait_for(
            "woco's notice with both gemeenten",
            lambda: owner.hit_members(group) == {GEMEENTE, GEMEENTE_B},
        )
        kept = common_pb2.Signed.FromString(cluster.clients[GEMEENTE].hit(group).notice)
        cluster.clients[GEMEENTE].withdraw_signal("G-1")
        wait_for(
            "woco's notice without the gemeente", lambda: owner.hit_members(group) == {GEMEENTE_B}
        )
        request_id = _forge(cluster, kept, ref)  # the old notice, still the broker's
        answered = final(cluster, WOCO, request_id)
        assert (answered.state, answered.refusal_reason) == (DisclosureState.REFUSED, "not_in_hit")
        assert dict(answered.released_fields) == {}
