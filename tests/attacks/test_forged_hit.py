"""Details without a hit: the broker operator's forged notices and a partner's made-up proofs.

The broker signs every hit notice and holds every party's signal refs, and the
RIEC that coordinates a covenant often runs the broker. So the RIEC, with the
broker's signing key and database, can sign a notice of its own making for any
ref and drop it in any mailbox. A notice alone therefore proves nothing to an
owner: a request must also carry a hit proof, a MAC under a key that only
holders of the subject's identifier can derive (from its OPRF output) and that
never reaches the broker, and the owner's own latest notice of the group must
list the ref (``node/disclosure/protocol.py``). Each attack below would have released the
police's details for ``casusvoorbereiding`` before (the RIEC's release rule for
that purpose takes any category, without four eyes); each is now refused
``not_in_hit``, nothing is released, and every daemon keeps serving.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from samenloop.broker.mailbox import ItemKind
from samenloop.broker.store import BrokerStore
from samenloop.node.client import Disclosure
from samenloop.node.disclosure import protocol as disclosure
from samenloop.policies import database
from samenloop.policies.crypto import SignatureContext
from samenloop.policies.errors import InvalidInput, NotFound
from samenloop.v1 import broker_pb2, common_pb2

from daemons import sqlite_rows
from harness import WAIT_SECONDS, CovenantRun

RIEC, POLITIE, BELASTINGDIENST = "riec", "politie", "belastingdienst"
PURPOSE = "casusvoorbereiding"
FIELDS = ["naam", "omschrijving", "dossier"]
OFFICER = "riec-analist-1"
_numbers = itertools.count(31_000_001)


def kvk() -> tuple[str, str]:
    """A KvK number no other test of this covenant uses: a subject of its own."""
    return ("kvk", f"{next(_numbers):08d}")


def secret_details(what: str) -> dict[str, str]:
    """Details whose values a test can look for in the attacker's database afterwards."""
    marker = os.urandom(6).hex()
    return {"naam": f"{what} {marker}", "omschrijving": f"omschrijving {marker}"}


# --- what the insiders hold --------------------------------------------------------------


def own_ref(run: CovenantRun, party: str, reference: str) -> bytes:
    """A party's ref of its own signal, from its own node's database, once its token and
    hit proof key are stored (the uplink stores them in one transaction)."""
    found: list[bytes] = []

    def stored() -> bool:
        found[:] = [
            bytes(row[0])
            for row in sqlite_rows(
                run.node_database(party),
                "SELECT si.signal_ref FROM signal_identifiers si"
                " JOIN signals s ON s.id = si.signal_id"
                " JOIN hit_proof_keys k ON k.identifier_id = si.id"
                " WHERE s.reference = ?",
                reference,
            )
        ]
        return bool(found)

    run.until(f"{party}'s {reference} tokenised", WAIT_SECONDS, stored)
    return found[0]


def own_proof_key(run: CovenantRun, party: str, ref: bytes) -> bytes:
    """The hit proof key a party's node keeps for one of its refs (its own database)."""
    ((key,),) = sqlite_rows(
        run.node_database(party),
        "SELECT k.proof_key FROM hit_proof_keys k"
        " JOIN signal_identifiers si ON si.id = k.identifier_id WHERE si.signal_ref = ?",
        ref,
    )
    return bytes(key)


def refs_in_no_hit(run: CovenantRun, party: str) -> set[bytes]:
    """What the broker's operator reads from the broker's database: ``party``'s refs whose
    token no other party holds, that is, signals in no hit."""
    rows = sqlite_rows(
        run.broker_database,
        "SELECT te.signal_ref FROM token_entries te JOIN parties p ON p.id = te.party_id"
        " WHERE p.name = ? AND NOT EXISTS (SELECT 1 FROM token_entries o"
        " WHERE o.token = te.token AND o.party_id <> te.party_id)",
        party,
    )
    return {bytes(row[0]) for row in rows}


def forge_notice(
    run: CovenantRun,
    *,
    recipient: str,
    group: bytes,
    own_refs: Sequence[bytes],
    members: Mapping[str, Sequence[bytes]],
) -> common_pb2.Signed:
    """A NEW hit notice of the operator's making, signed with the broker's key."""
    now = datetime.now(UTC)
    notice = broker_pb2.HitNotice(
        covenant_id=run.covenant.id,
        covenant_version=run.covenant.version,
        hit_group_id=group,
        revision=int(now.timestamp() * 1_000_000),
        kind=broker_pb2.HIT_NOTICE_KIND_NEW,
        recipient=recipient,
        visibility=broker_pb2.HitVisibility(party_count=True, roles=True, parties=True),
        own_signal_refs=list(own_refs),
        party_count=len(members) + 1,
    )
    for party, refs in members.items():
        notice.members.add(party=party, role=party, signal_refs=list(refs))
    for moment in (notice.first_seen, notice.last_seen, notice.issued_at):
        moment.FromDatetime(now)
    body = notice.SerializeToString()
    return common_pb2.Signed(
        body=body,
        signer=run.covenant.broker.id,
        context=SignatureContext.HIT_NOTICE.value,
        signature=run.broker_keys().sign(SignatureContext.HIT_NOTICE, body),
    )


@pytest.fixture(scope="module")
def broker_store(covenant_run: CovenantRun) -> Iterator[BrokerStore]:
    """The broker's database, opened with the broker's own software, as its operator can."""
    engine = database.make_engine(f"sqlite:///{covenant_run.broker_database}")
    yield BrokerStore(engine)
    engine.dispose()


def deliver(run: CovenantRun, store: BrokerStore, party: str, signed: common_pb2.Signed) -> None:
    """Put a forged notice in ``party``'s mailbox and wait until its node holds the hit (the
    broker's stream finds the item at its next look: at the next covenant timestamp, which
    the timestamp job publishes now, rather than at the stream's next heartbeat)."""
    store.mailboxes.enqueue(
        party, signed.SerializeToString(), ItemKind.HIT_NOTICE, datetime.now(UTC)
    )
    run.timestamp()
    group = broker_pb2.HitNotice.FromString(signed.body).hit_group_id

    def held() -> bool:
        try:
            run.client(party).hit(group)
        except NotFound:
            return False
        return True

    run.until(f"{party} holding the forged hit", WAIT_SECONDS, held)


# --- what the owner answered ------------------------------------------------------------


def answered(run: CovenantRun, party: str, request_id: bytes) -> Disclosure:
    """``party``'s record of the request once it is granted or refused."""
    found: list[Disclosure] = []

    def final() -> bool:
        try:
            record = run.client(party).disclosure(request_id)
        except NotFound:
            return False
        found[:] = [record]
        return record.state.value in ("granted", "refused")

    run.until(f"{party}'s answer to the request", WAIT_SECONDS, final)
    return found[0]


def assert_refused_and_nothing_released(
    run: CovenantRun, request_id: bytes, details: Mapping[str, str], *, asked_by_client: bool
) -> None:
    at_owner = answered(run, POLITIE, request_id)
    assert (at_owner.state.value, at_owner.refusal_reason) == ("refused", "not_in_hit")
    assert at_owner.refusal_message == disclosure.NOT_PROVEN
    assert dict(at_owner.released_fields) == {}
    # The police's audit log records one decision on it: refused, nothing released.
    decisions = [
        json.loads(row[0])
        for row in sqlite_rows(
            run.node_database(POLITIE),
            "SELECT details FROM audit_entries WHERE kind = 'disclosure_decision'"
            " AND subject LIKE ?",
            f"%{request_id.hex()}%",
        )
    ]
    assert [(d["outcome"], d["reason"], d["released"]) for d in decisions] == [
        ("refused", "not_in_hit", "")
    ]
    if asked_by_client:
        asked = answered(run, RIEC, request_id)
        assert (asked.state.value, asked.refusal_reason) == ("refused", "not_in_hit")
        assert dict(asked.released_fields) == {}
    # Not a byte of the police's details reached the RIEC's node.
    data = run.node_database(RIEC).parent
    stored = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("node.db"))
    for value in details.values():
        assert value.encode() not in stored


def send_as(run: CovenantRun, party: str, envelope: disclosure.Envelope) -> None:
    """A request sealed by hand, handed to the broker with ``party``'s own certificate."""
    run.broker_stub(party).SendEnvelope(
        broker_pb2.SendEnvelopeRequest(
            client_message_id=envelope.message_id, envelope=envelope.sealed
        ),
        timeout=10,
    )


# --- the attacks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoHit:
    """A police signal (with details) and a RIEC signal, of different subjects, in no hit."""

    details: dict[str, str]
    target: bytes
    riec_ref: bytes


def signals_in_no_hit(run: CovenantRun, tag: str) -> NoHit:
    """The police and the RIEC each add a signal of its own subject; wait until the
    police's token is at the broker, where the operator takes its ref."""
    details = secret_details(tag)
    run.add_signal(POLITIE, f"P-{tag}", "drugsproductie", [kvk()], details=details)
    run.add_signal(RIEC, f"R-{tag}", "leegstand", [kvk()])
    target = own_ref(run, POLITIE, f"P-{tag}")  # only to know which ref the operator takes
    riec_ref = own_ref(run, RIEC, f"R-{tag}")
    run.until(
        "the police's token at the broker",
        WAIT_SECONDS,
        lambda: target in refs_in_no_hit(run, POLITIE),
    )
    return NoHit(details, target, riec_ref)


def test_a_forged_notice_for_a_signal_in_no_hit_releases_nothing(
    covenant_run: CovenantRun, broker_store: BrokerStore
) -> None:
    """The operator takes a police ref that is in no hit from the broker's database, signs
    a NEW notice to the RIEC that puts it in a hit with one of the RIEC's own signals, and
    the RIEC asks for its details: the police's node finds no such hit in its own records
    and the RIEC's proof (made with the key of its own, other subject) fails."""
    run = covenant_run
    signals = signals_in_no_hit(run, "NOHIT")
    details, target, riec_ref = signals.details, signals.target, signals.riec_ref
    group = os.urandom(16)
    deliver(
        run,
        broker_store,
        RIEC,
        forge_notice(
            run, recipient=RIEC, group=group, own_refs=[riec_ref], members={POLITIE: [target]}
        ),
    )
    asked = run.client(RIEC).request_disclosure(
        group, POLITIE, target, PURPOSE, FIELDS, officer=OFFICER, justification="casus"
    )
    assert_refused_and_nothing_released(run, asked.request_id, details, asked_by_client=True)
    run.assert_serving()


def test_forging_the_owners_notice_as_well_does_not_prove_the_hit(
    covenant_run: CovenantRun, broker_store: BrokerStore
) -> None:
    """As above, and the operator also signs the police a notice of the same made-up group
    listing its ref, so that the police's own records show the hit: the hit proof still
    fails, for the RIEC holds no identifier of the police's subject."""
    run = covenant_run
    signals = signals_in_no_hit(run, "BOTH")
    details, target, riec_ref = signals.details, signals.target, signals.riec_ref
    group = os.urandom(16)
    deliver(
        run,
        broker_store,
        POLITIE,
        forge_notice(
            run, recipient=POLITIE, group=group, own_refs=[target], members={RIEC: [riec_ref]}
        ),
    )
    deliver(
        run,
        broker_store,
        RIEC,
        forge_notice(
            run, recipient=RIEC, group=group, own_refs=[riec_ref], members={POLITIE: [target]}
        ),
    )
    asked = run.client(RIEC).request_disclosure(
        group, POLITIE, target, PURPOSE, FIELDS, officer=OFFICER, justification="casus"
    )
    assert_refused_and_nothing_released(run, asked.request_id, details, asked_by_client=True)
    run.assert_serving()


def test_a_member_of_one_hit_cannot_ask_for_a_signal_in_another(
    covenant_run: CovenantRun, broker_store: BrokerStore
) -> None:
    """The RIEC shares a subject with the police (a genuine hit). The police also shares
    another subject with the tax office. The RIEC re-signs its genuine notice with the
    police's other ref added and asks for that signal, proving with its real key of the
    shared subject: the police's notice of the group does not list that ref, and the
    proof is for another subject."""
    run = covenant_run
    shared, other = kvk(), kvk()
    details = secret_details("other-group")
    run.add_signal(RIEC, "R-SHARED", "leegstand", [shared])
    run.add_signal(POLITIE, "P-SHARED", "drugsproductie", [shared])
    run.add_signal(POLITIE, "P-OTHER", "drugsproductie", [other], details=details)
    run.add_signal(BELASTINGDIENST, "B-OTHER", "witwasindicatie", [other])
    genuine = run.hit_with(RIEC, "R-SHARED", POLITIE)
    run.hit_with(POLITIE, "P-OTHER", BELASTINGDIENST)
    target = own_ref(run, POLITIE, "P-OTHER")
    riec_ref = own_ref(run, RIEC, "R-SHARED")
    shown = next(m for m in genuine.members if m.party == POLITIE).signal_refs
    assert target not in shown
    # Through its own node the RIEC cannot even ask: the ref is not in its hit.
    with pytest.raises(InvalidInput) as refused:
        run.client(RIEC).request_disclosure(
            genuine.group_id, POLITIE, target, PURPOSE, FIELDS, officer=OFFICER
        )
    assert refused.value.field == "signal_ref"
    # As the broker's operator it re-signs the genuine group with the other ref in it.
    forged = forge_notice(
        run,
        recipient=RIEC,
        group=genuine.group_id,
        own_refs=[riec_ref],
        members={POLITIE: [*shown, target]},
    )
    request_id = os.urandom(16)
    _, envelope = disclosure.build_request(
        run.party_keys(RIEC),
        run.covenant,
        forged,
        request_id=request_id,
        owner=POLITIE,
        signal_ref=target,
        purpose=PURPOSE,
        fields=FIELDS,
        officer=OFFICER,
        justification="casus",
        proof_key=own_proof_key(run, RIEC, riec_ref),
        now=datetime.now(UTC),
    )
    send_as(run, RIEC, envelope)
    assert_refused_and_nothing_released(run, request_id, details, asked_by_client=False)
    run.assert_serving()


def test_an_observer_cannot_make_up_the_hit_proof(covenant_run: CovenantRun) -> None:
    """The RIEC coordinates: the broker tells it of hits it holds no signal in. Its node
    refuses to ask (it has nothing to prove the hit with); sealed by hand with the
    genuine notice and proof bytes made up, the request is refused by the police."""
    run = covenant_run
    subject = kvk()
    details = secret_details("observed")
    run.add_signal(POLITIE, "P-OBSERVED", "drugsproductie", [subject], details=details)
    run.add_signal(BELASTINGDIENST, "B-OBSERVED", "witwasindicatie", [subject])
    target = own_ref(run, POLITIE, "P-OBSERVED")
    observed = run.wait_hit(
        RIEC,
        lambda hit: any(target in m.signal_refs for m in hit.members),
        "the RIEC observing the police's hit",
    )
    assert observed.own_signals == ()
    with pytest.raises(InvalidInput) as refused:
        run.client(RIEC).request_disclosure(
            observed.group_id, POLITIE, target, PURPOSE, FIELDS, officer=OFFICER
        )
    assert (refused.value.field, refused.value.reason) == (
        "hit_group_id",
        "disclosure.no_own_signal",
    )
    assert [d for d in run.client(RIEC).disclosures() if d.signal_ref == target] == []
    request_id = os.urandom(16)
    _, envelope = disclosure.build_request(
        run.party_keys(RIEC),
        run.covenant,
        common_pb2.Signed.FromString(observed.notice),
        request_id=request_id,
        owner=POLITIE,
        signal_ref=target,
        purpose=PURPOSE,
        fields=FIELDS,
        officer=OFFICER,
        justification="casus",
        proof_key=os.urandom(32),  # no key of the subject: the proof is made up
        now=datetime.now(UTC),
    )
    send_as(run, RIEC, envelope)
    assert_refused_and_nothing_released(run, request_id, details, asked_by_client=False)
    run.assert_serving()
