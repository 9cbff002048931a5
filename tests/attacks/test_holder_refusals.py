"""What a flood of refused OPRF requests and a broker that drops answers cost a key holder.

Review of issue 12 (fresh attack review of main, attack 4, and the broker
operator's dropped answers):

* Every request a key holder refuses used to be a database transaction and an
  audit entry at the holder, under whatever signer name (1..64 bytes) the
  bytes claimed: 500 ``Evaluate`` calls with random signatures gave 500
  entries at each holder. A holder now names a requester only once its
  signature verified (else it counts the refusal for ``Unverified``) and sums
  refusals per requester and reason: the first at once, then at most one
  entry a minute, and the rest as it stops.
* A holder counts an answer before it sends it, and the node used to ask
  again under a new request id when the broker dropped the answer: every
  drop cost quota. A node now sends the very same signed request again; a
  holder answers the very request it answered before again, uncounted (at
  most ``RESENDS`` times, then ``REPLAY``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from samenloop.node.identifiers.normalise import parse
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import threshold
from samenloop.node.tokens.evaluation import RESENDS, build_requests, new_request_id
from samenloop.node.tokens.holder import UNVERIFIED
from samenloop.node.tokens.threshold import KeyEpoch, PartialEvaluation
from samenloop.policies.crypto import SignatureContext
from samenloop.v1 import broker_pb2, common_pb2, keyholder_pb2

from daemons import sqlite_count, sqlite_rows
from harness import CovenantRun

PARTNER = "woningcorporatie"
REASON = keyholder_pb2.EvaluationRefusalReason


def _bad_requests(run: CovenantRun, party: str) -> list[common_pb2.Signed]:
    """One OPRF request per holder of a set, in ``party``'s name, that no holder answers:
    the signature is random bytes."""
    covenant = run.covenant
    requests = []
    for index in (1, 2):
        body = keyholder_pb2.EvaluationRequest(
            request_id=os.urandom(16),
            covenant_id=covenant.id,
            key_epoch=covenant.key_epoch.epoch,
            requester=party,
            holder_index=index,
            responding_set=[1, 2],
            blinded_elements=[os.urandom(32)],
        )
        body.issued_at.FromDatetime(datetime.now(UTC))
        requests.append(
            common_pb2.Signed(
                body=body.SerializeToString(),
                signer=party,
                context=SignatureContext.OPRF_REQUEST.value,
                signature=os.urandom(64),
            )
        )
    return requests


def _refusals_audited(run: CovenantRun, party: str) -> list[tuple[str, int]]:
    """The holder's summed refusal entries: (actor, requests) each."""
    return [
        (str(actor), int(requests))
        for actor, requests in sqlite_rows(
            run.node_database(party),
            "SELECT actor, json_extract(details, '$.requests') FROM audit_entries"
            " WHERE kind = 'oprf_evaluation' AND json_extract(details, '$.refused')",
        )
    ]


def test_refused_oprf_requests_do_not_grow_a_key_holders_log_without_bound(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    holders = ("gemeente", "politie")  # seats 1 and 2

    def entries(party: str) -> int:
        return sqlite_count(
            run.node_database(party),
            "SELECT count(*) FROM audit_entries WHERE kind = 'oprf_evaluation'",
        )

    before = {party: entries(party) for party in holders}
    stub = run.broker_stub(PARTNER)
    flood = 500
    for _ in range(flood):
        replies = stub.Evaluate(
            broker_pb2.EvaluateRequest(requests=_bad_requests(run, PARTNER)), timeout=30
        ).replies
        assert all(reply.HasField("response") for reply in replies)  # refused, signed
    grown = {party: entries(party) - before[party] for party in holders}
    # Refusals may well be on record, as the local API records refused calls: summed, not
    # one entry (and one write) per request a partner chooses to send.
    assert all(count <= 10 for count in grown.values()), grown
    # On record all the same: what was summed is written as the holder stops. The
    # signature never verified, so no entry names the party the bytes claimed.
    run.restart("gemeente")
    audited = _refusals_audited(run, "gemeente")
    assert sum(requests for actor, requests in audited if actor == UNVERIFIED) == flood
    assert all(actor != PARTNER for actor, _ in audited), audited
    assert entries("gemeente") - before["gemeente"] <= 10
    run.assert_serving()


def test_an_answer_the_broker_dropped_is_asked_again_and_counted_once(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    epoch = KeyEpoch.from_covenant(run.covenant)
    domain = tokens.TokenDomain(epoch.covenant_id, epoch.epoch)
    riec = run.party_keys("riec")
    seats = {h.party: h.index for h in epoch.holders}
    politie, bd = seats["politie"], seats["belastingdienst"]
    responding_set = tuple(sorted((politie, bd)))
    pending = tokens.start(domain, [parse("bsn", "111222333")])
    requests = build_requests(
        riec,
        epoch.covenant_id,
        epoch,
        responding_set,
        pending.blinded_elements,
        request_id=new_request_id(),
        now=datetime.now(UTC),
    )
    stub = run.broker_stub("riec")

    def send(index: int) -> keyholder_pb2.EvaluationResponse:
        answer = stub.Evaluate(
            broker_pb2.EvaluateRequest(requests=[common_pb2.Signed.FromString(requests[index])]),
            timeout=30,
        )
        (reply,) = answer.replies
        assert reply.HasField("response"), reply
        return keyholder_pb2.EvaluationResponse.FromString(reply.response.body)

    def counted(holder: str) -> int:
        return sqlite_count(
            run.node_database(holder),
            "SELECT coalesce(sum(elements_evaluated), 0) FROM holder_usage WHERE party = ?",
            "riec",
        )

    before = {holder: counted(holder) for holder in ("politie", "belastingdienst")}
    theirs = send(bd)
    # The operator drops the politie's answer (the politie counted it), the politie's node
    # restarts, and the operator drops the next answer too; the RIEC's node sends the very
    # same bytes each time, and the politie answers them again, uncounted, RESENDS times.
    send(politie)
    run.restart("politie")
    for _ in range(RESENDS - 1):
        send(politie)
    last = send(politie)
    assert last.WhichOneof("result") == "evaluation"
    # Once more is a replay: refused, and counted only as a refusal.
    assert send(politie).refusal.reason == REASON.EVALUATION_REFUSAL_REASON_REPLAY
    # One element, counted once at each holder...
    assert {holder: counted(holder) - before[holder] for holder in before} == {
        "politie": 1,
        "belastingdienst": 1,
    }
    # ...and the answer given again makes the identifier's token, the same as another set's.
    token = _token(epoch, responding_set, pending, {bd: theirs, politie: last})
    other_set = tuple(sorted((seats["gemeente"], bd)))
    again = tokens.start(domain, [parse("bsn", "111222333")])
    fresh = build_requests(
        riec,
        epoch.covenant_id,
        epoch,
        other_set,
        again.blinded_elements,
        request_id=new_request_id(),
        now=datetime.now(UTC),
    )
    answer = stub.Evaluate(
        broker_pb2.EvaluateRequest(
            requests=[common_pb2.Signed.FromString(r) for r in fresh.values()]
        ),
        timeout=30,
    )
    responses = {
        reply.holder_index: keyholder_pb2.EvaluationResponse.FromString(reply.response.body)
        for reply in answer.replies
    }
    assert token == _token(epoch, other_set, again, responses)
    run.assert_serving()


def _token(
    epoch: KeyEpoch,
    responding_set: tuple[int, ...],
    pending: tokens.PendingTokens,
    responses: dict[int, keyholder_pb2.EvaluationResponse],
) -> bytes:
    """The token from the holders' answers; ``combine`` checks every proof."""
    partials = {
        index: PartialEvaluation(
            index, tuple(response.evaluation.evaluated_elements), response.evaluation.proof
        )
        for index, response in responses.items()
    }
    evaluated = threshold.combine(epoch, responding_set, pending.blinded_elements, partials)
    (token,) = tokens.finish(pending, evaluated)
    return token
