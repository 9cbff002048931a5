"""Disclosure through real daemons (DESIGN flow 5) and covenant updates at the node.

A real broker and three real nodes run in this process (mTLS on loopback,
SQLite), driven with the client library: a granted disclosure delivers exactly
the allowed fields; an unknown purpose is refused locally; a four-eyes request
stays pending and releases nothing until a second officer approves; a replayed
envelope is refused as a replay and releases nothing new; forged notices and
signals outside the hit are refused; covenant updates delivered through the
broker's mailbox are adopted, persisted and replayed after a restart, and
rolled-back, tampered or under-signed ones are refused while the node keeps its
version. The core and the desk are tested directly in tests/test_disclosure.py
(the tests ``make mutate`` runs against node/disclosure/protocol.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from samenloop.node.client import Disclosure
from samenloop.node.daemon import models
from samenloop.node.disclosure import protocol as disclosure
from samenloop.node.disclosure.models import DisclosureDirection, DisclosureState
from samenloop.node.disclosure.protocol import Outcome, Verdict
from samenloop.node.provision import PartySpec
from samenloop.policies.audit import AuditKind
from samenloop.policies.covenant import Covenant, Role, with_new_attribute_key
from samenloop.policies.crypto import PartyKeys, SignatureContext
from samenloop.policies.errors import InvalidInput, NotAllowed, NotFound
from samenloop.policies.policy import example_policy
from samenloop.policies.rules import Refusal
from samenloop.policies.trust import SignedCovenant, sign_covenant
from samenloop.v1 import common_pb2, disclosure_pb2

import in_process
from in_process import WAIT, Cluster, wait_for

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


BSN = "111222333"


@contextlib.contextmanager
def running_cluster(
    root: Any, *, specs: Sequence[PartySpec] = SPECS, holders: Sequence[str] = (GEMEENTE, WOCO)
) -> Iterator[Cluster]:
    """A broker and a node per party; woco holds W-1 (bsn, with details) and W-2, the
    gemeente G-1 (the same bsn)."""
    with in_process.running_cluster(
        root, "riec-disclosure", specs, holders, policy=small_quota_policy()
    ) as cluster:
        cluster.clients[WOCO].add_signal(
            "W-1", "woonfraude", [("bsn", BSN)], details={**DETAILS, "dossier": "D-77"}
        )
        cluster.clients[WOCO].add_signal("W-2", "woonfraude", [("kvk", "01234567")])
        cluster.clients[GEMEENTE].add_signal("G-1", "vastgoedmisbruik", [("bsn", BSN)])
        yield cluster


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


def _sent_envelope(cluster: Cluster, party: str, request_id: bytes) -> bytes:
    e = models.EnvelopeOutboxItem
    with cluster.nodes[party].repositories.engine.connect() as conn:
        return bytes(
            conn.execute(sa.select(e.sealed).where(e.client_message_id == request_id)).scalar_one()
        )


def _answers(cluster: Cluster, owner: str = WOCO, requester: str = GEMEENTE) -> int:
    """How many envelopes the owner's node ever queued for the requester."""
    e = models.EnvelopeOutboxItem
    with cluster.nodes[owner].repositories.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).where(e.recipient == requester)).scalar_one()
        )


def _decisions(cluster: Cluster, party: str, request_id: bytes) -> list[dict[str, Any]]:
    entries = cluster.nodes[party].repositories.shared.audit_entries(
        kind=AuditKind.DISCLOSURE_DECISION, subject=request_id.hex()
    )
    return [dict(e.details) for e in entries]


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
    audited = len(cluster.nodes[WOCO].repositories.shared.audit_entries(subject=about))
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
    assert (
        len(cluster.nodes[WOCO].repositories.shared.audit_entries(subject=about)) == audited
    )  # nothing
    assert woco.disclosure(asked.request_id).state is DisclosureState.PENDING_APPROVAL

    approved = woco.approve_disclosure(asked.request_id, officer="Bd-Teamleider-7 ", note="ok")
    assert approved.state is DisclosureState.GRANTED
    assert approved.requester_officer == "Jürgen de Vries"
    assert [(d.officer, d.approved) for d in approved.decisions] == [("Bd-Teamleider-7 ", True)]
    entries = cluster.nodes[WOCO].repositories.shared.audit_entries(
        kind=AuditKind.DISCLOSURE_APPROVED, subject=asked.request_id.hex()
    )
    assert [e.actor for e in entries] == ["Bd-Teamleider-7 "]
    final(cluster, GEMEENTE, asked.request_id)

    denied = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "bibob", ["naam"], officer="gem-bibob-3"
    )
    final(cluster, WOCO, denied.request_id, DisclosureState.PENDING_APPROVAL)
    woco.deny_disclosure(denied.request_id, officer="Łukasz Żak", reason="lopend onderzoek")
    entries = cluster.nodes[WOCO].repositories.shared.audit_entries(
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


def test_a_replayed_request_is_refused_and_releases_nothing_new(cluster: Cluster) -> None:
    group, ref = gemeente_hit(cluster)
    asked = cluster.clients[GEMEENTE].request_disclosure(
        group, WOCO, ref, "adresfraude", ["naam"], officer="a@gemeente"
    )
    final(cluster, WOCO, asked.request_id)
    answers = _answers(cluster)
    cluster.queue(GEMEENTE, _sent_envelope(cluster, GEMEENTE, asked.request_id), WOCO)
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
    repositories = cluster.nodes[party].repositories
    record = repositories.signals.signal(reference)
    assert record is not None
    key = repositories.disclosures.hit_proof_key(record.identifiers[0].signal_ref)
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
    cluster.queue(GEMEENTE, envelope.sealed.SerializeToString(), WOCO)
    return request_id


def test_forged_notices_and_signals_outside_the_hit_are_refused(cluster: Cluster) -> None:
    group, ref = gemeente_hit(cluster)
    real = common_pb2.Signed.FromString(cluster.clients[GEMEENTE].hit(group).notice)
    gemeente_keys = PartyKeys.load(cluster.provisioned.party_dir(GEMEENTE) / "party-keys.json")
    forged = common_pb2.Signed()
    forged.CopyFrom(real)
    forged.signature = gemeente_keys.sign(SignatureContext.HIT_NOTICE, real.body)
    woco_notice = common_pb2.Signed.FromString(cluster.clients[WOCO].hit(group).notice)
    other_ref = cluster.nodes[WOCO].repositories.signals.signal("W-2")
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
    entries = cluster.nodes[party].repositories.shared.audit_entries(
        kind=AuditKind.COVENANT_REJECTED
    )
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
    entries = cluster.nodes[party].repositories.shared.audit_entries(
        kind=AuditKind.DISCLOSURE_RECEIVED
    )
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
    cluster.queue(GEMEENTE, case_message.sealed.SerializeToString(), WOCO)
    # Requests the owner cannot take: 65 fields, a justification over 4096 bytes, an
    # issued_at no datetime holds.
    for sealed in (
        _hand_sealed_request(cluster, notice_, ref, fields=[f"f{i}" for i in range(65)]),
        _hand_sealed_request(cluster, notice_, ref, justification="x" * 5000),
        _hand_sealed_request(cluster, notice_, ref, issued_seconds=10**15),
    ):
        cluster.queue(GEMEENTE, sealed, WOCO)
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
    cluster.queue(WOCO, too_long.sealed.SerializeToString(), GEMEENTE)
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
    cluster.queue(WOCO, replay.sealed.SerializeToString(), GEMEENTE)
    wait_for("the gemeente ignoring the replay refusal", lambda: _dropped(cluster, GEMEENTE))
    assert cluster.clients[GEMEENTE].disclosure(request_id).state is (
        DisclosureState.PENDING_APPROVAL
    )
    # The request's envelope, sent again through the broker: recorded, not answered.
    answers = _answers(cluster)
    cluster.queue(GEMEENTE, _sent_envelope(cluster, GEMEENTE, request_id), WOCO)
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
        owner = cluster.nodes[WOCO].repositories.disclosures
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
