"""The OPRF quota holds per party across all key holders, and a replay survives no restart.

The covenant's ``oprf_evaluations_per_day`` (here 12) caps how many tokens a
party may have made a day: it is what limits guessing identifiers online.
Holders cannot see each other's counts, so each allows a party only its share
(docs/crypto.md): with the key dealt 2-of-3 to gemeente, politie and
belastingdienst, floor(12 * 2 / 3) = 8 to a party without a seat and
floor(12 * 1 / 2) = 6 to another holder, whose own seat counts its own
requests against all 12. Before, each holder counted alone and allowed 12.

* The RIEC, with software of its own, spreads signed requests over every
  responding set through its raw broker connection: 12 tokens, not 18.
* The gemeente, a holder, computes its own partial evaluation from its
  key-share file (uncounted) and asks the two others: 12 tokens, not 24.
* The broker replays a request the politie answered, after the politie's node
  restarted (within the request's freshness window): the very request is
  answered again, uncounted, at most ``RESENDS`` times (what lets a node ask
  again when the broker dropped an answer), then refused as a REPLAY; nothing
  counted.
* An honest holder party's node reaches its cap, every token counted at its
  own seat, and keeps the rest pending.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from samenloop.node.identifiers.normalise import parse
from samenloop.node.tokens import derive as tokens
from samenloop.node.tokens import keysetup, threshold
from samenloop.node.tokens.evaluation import RESENDS, build_requests, new_request_id
from samenloop.node.tokens.threshold import KeyEpoch, PartialEvaluation
from samenloop.policies.crypto import PartyKeys
from samenloop.policies.policy import Policy, example_policy
from samenloop.v1 import broker_pb2, common_pb2, keyholder_pb2

from daemons import sqlite_count
from harness import HOLDERS, CovenantRun

CAP = 12
REASON = keyholder_pb2.EvaluationRefusalReason


@pytest.fixture(scope="module")
def attack_policy() -> Policy:
    policy = example_policy()
    quotas = dataclasses.replace(policy.quotas, oprf_evaluations_per_day=CAP)
    return dataclasses.replace(policy, quotas=quotas)


def bsns(start: int) -> Iterator[str]:
    """Valid BSNs (the 11-test), counting up from an 8-digit ``start``: a guesser's list."""
    for prefix in itertools.count(start):
        digits = f"{prefix:08d}"
        check = sum(int(d) * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
        if check < 10:
            yield digits + str(check)


def evaluated_for(run: CovenantRun, holder: str, requester: str) -> int:
    """Elements ``holder``'s node has evaluated for ``requester``, from its own database."""
    return sqlite_count(
        run.node_database(holder),
        "SELECT coalesce(sum(elements_evaluated), 0) FROM holder_usage WHERE party = ?",
        requester,
    )


def refused_for(run: CovenantRun, holder: str, requester: str) -> int:
    return sqlite_count(
        run.node_database(holder),
        "SELECT coalesce(sum(requests_refused), 0) FROM holder_usage WHERE party = ?",
        requester,
    )


def seats(epoch: KeyEpoch) -> dict[str, int]:
    return {h.party: h.index for h in epoch.holders}


def ask(
    run: CovenantRun,
    keys: PartyKeys,
    epoch: KeyEpoch,
    responding_set: tuple[int, ...],
    blinded: tuple[bytes, ...],
    *,
    only: tuple[int, ...] | None = None,
) -> dict[int, keyholder_pb2.EvaluationResponse]:
    """Signed requests of ``keys`` to the holders of the set (or ``only`` some of them),
    through the party's raw broker connection; the holders' responses by index."""
    requests = build_requests(
        keys,
        epoch.covenant_id,
        epoch,
        responding_set,
        blinded,
        request_id=new_request_id(),
        now=datetime.now(UTC),
    )
    sent = [common_pb2.Signed.FromString(r) for i, r in requests.items() if i in (only or requests)]
    answer = run.broker_stub(keys.party).Evaluate(
        broker_pb2.EvaluateRequest(requests=sent), timeout=30
    )
    responses = {}
    for reply in answer.replies:
        assert reply.HasField("response"), f"holder {reply.holder_index} unreachable: {reply}"
        responses[reply.holder_index] = keyholder_pb2.EvaluationResponse.FromString(
            reply.response.body
        )
    return responses


def partial(response: keyholder_pb2.EvaluationResponse) -> PartialEvaluation | None:
    """The partial evaluation in a response, or None for a quota refusal."""
    if response.WhichOneof("result") == "refusal":
        assert response.refusal.reason == REASON.EVALUATION_REFUSAL_REASON_QUOTA_EXCEEDED, (
            response.refusal
        )
        assert response.remaining_today == 0
        return None
    return PartialEvaluation(
        response.holder_index,
        tuple(response.evaluation.evaluated_elements),
        response.evaluation.proof,
    )


def test_a_party_without_a_seat_gets_no_more_than_its_cap_over_every_holder_set(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    epoch = KeyEpoch.from_covenant(run.covenant)
    domain = tokens.TokenDomain(epoch.covenant_id, epoch.epoch)
    riec = run.party_keys("riec")
    sets = HolderSetCycle(epoch)
    guesses = bsns(30_000_000)
    made: list[bytes] = []
    refused_in_a_row = 0
    # One guess at a time, each to the next responding set, until every set refuses.
    while refused_in_a_row < len(sets.all):
        responding_set = sets.next()
        pending = tokens.start(domain, [parse("bsn", next(guesses))])
        responses = ask(run, riec, epoch, responding_set, pending.blinded_elements)
        partials = {i: partial(r) for i, r in responses.items()}
        if any(p is None for p in partials.values()):
            refused_in_a_row += 1
            continue
        refused_in_a_row = 0
        answers = {i: p for i, p in partials.items() if p is not None}
        # Every partial proves itself (DLEQ): these are the covenant key's evaluations.
        evaluated = threshold.combine(epoch, responding_set, pending.blinded_elements, answers)
        made.extend(tokens.finish(pending, evaluated))
    assert len(set(made)) == len(made) == CAP  # 18 before: 12 at each of the 3 holders
    # Whatever sets it asks: 8 partial evaluations at each holder, 24 / t = 12 tokens.
    assert {holder: evaluated_for(run, holder, "riec") for holder in HOLDERS} == {
        holder: 8 for holder in HOLDERS
    }
    run.assert_serving()


def test_a_holder_party_computing_its_own_share_locally_gets_no_more_than_its_cap(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    epoch = KeyEpoch.from_covenant(run.covenant)
    domain = tokens.TokenDomain(epoch.covenant_id, epoch.epoch)
    gemeente = run.party_keys("gemeente")
    share = keysetup.load_share(run.provisioned.party_dir("gemeente") / "key-share.json", epoch)
    mine = seats(epoch)["gemeente"]
    others = [index for party, index in seats(epoch).items() if party != "gemeente"]
    guesses = bsns(40_000_000)
    made: list[bytes] = []
    used_up: set[int] = set()
    for other in itertools.cycle(others):
        if used_up == set(others):
            break
        responding_set = tuple(sorted((mine, other)))
        pending = tokens.start(domain, [parse("bsn", next(guesses))])
        # Its own partial from its share file, never asked of its own node: uncounted.
        own = threshold.evaluate_partial(share, pending.blinded_elements, responding_set)
        (theirs,) = ask(
            run, gemeente, epoch, responding_set, pending.blinded_elements, only=(other,)
        ).values()
        answer = partial(theirs)
        if answer is None:
            used_up.add(other)
            continue
        evaluated = threshold.combine(
            epoch, responding_set, pending.blinded_elements, {mine: own, other: answer}
        )
        made.extend(tokens.finish(pending, evaluated))
    assert len(set(made)) == len(made) == CAP  # 24 before: 12 at each of the 2 others
    assert evaluated_for(run, "gemeente", "gemeente") == 0  # its own seat never saw them
    assert {p: evaluated_for(run, p, "gemeente") for p in HOLDERS if p != "gemeente"} == {
        p: 6 for p in HOLDERS if p != "gemeente"
    }
    run.assert_serving()


def test_a_request_replayed_after_the_holder_restarted_costs_nothing_and_is_then_refused(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    epoch = KeyEpoch.from_covenant(run.covenant)
    domain = tokens.TokenDomain(epoch.covenant_id, epoch.epoch)
    woco = run.party_keys("woningcorporatie")
    politie = seats(epoch)["politie"]
    responding_set = tuple(sorted((politie, seats(epoch)["belastingdienst"])))
    pending = tokens.start(domain, [parse("bsn", next(bsns(50_000_000)))])
    requests = build_requests(
        woco,
        epoch.covenant_id,
        epoch,
        responding_set,
        pending.blinded_elements,
        request_id=new_request_id(),
        now=datetime.now(UTC),
    )
    signed = common_pb2.Signed.FromString(requests[politie])
    stub = run.broker_stub("woningcorporatie")

    def send() -> keyholder_pb2.EvaluationResponse:
        answer = stub.Evaluate(broker_pb2.EvaluateRequest(requests=[signed]), timeout=30)
        (reply,) = answer.replies
        assert reply.HasField("response"), reply
        return keyholder_pb2.EvaluationResponse.FromString(reply.response.body)

    first = send()
    assert first.WhichOneof("result") == "evaluation"
    counted = evaluated_for(run, "politie", "woningcorporatie")
    refused = refused_for(run, "politie", "woningcorporatie")
    assert counted == 1

    run.restart("politie")  # its replay cache used to live in memory only
    # The broker sends the same signed bytes again, well within the freshness window: the
    # politie knows the very request and gives the same evaluation again, uncounted...
    for _ in range(RESENDS):
        again = send()
        assert again.WhichOneof("result") == "evaluation"
        assert again.evaluation.evaluated_elements == first.evaluation.evaluated_elements
    assert evaluated_for(run, "politie", "woningcorporatie") == counted
    # ...and refuses it from then on.
    replayed = send()
    assert replayed.WhichOneof("result") == "refusal"
    assert replayed.refusal.reason == REASON.EVALUATION_REFUSAL_REASON_REPLAY
    assert evaluated_for(run, "politie", "woningcorporatie") == counted  # no quota burnt
    assert refused_for(run, "politie", "woningcorporatie") == refused + 1
    run.assert_serving()


def test_an_honest_holder_party_stops_at_its_cap_counted_at_its_own_seat(
    covenant_run: CovenantRun,
) -> None:
    run = covenant_run
    guesses = bsns(60_000_000)
    for i in range(CAP + 2):
        run.add_signal("belastingdienst", f"BD-{i}", "woonfraude", [("bsn", next(guesses))])
    database = run.node_database("belastingdienst")

    def pending() -> int:
        return sqlite_count(
            database, "SELECT count(*) FROM signal_identifiers WHERE state = 'pending'"
        )

    run.until("the belastingdienst's node tokenised up to its cap", 60, lambda: pending() == 2)
    run.until(
        "its status naming the used-up quota",
        30,
        lambda: "no quota left today" in run.client("belastingdienst").status().last_error,
    )
    # Every token counted (and audited) at its own seat, the others' shares spread evenly.
    assert evaluated_for(run, "belastingdienst", "belastingdienst") == CAP
    assert {p: evaluated_for(run, p, "belastingdienst") for p in HOLDERS} == {
        "gemeente": 6,
        "politie": 6,
        "belastingdienst": CAP,
    }
    audited = sqlite_count(
        database,
        "SELECT coalesce(sum(json_extract(details, '$.elements')), 0) FROM audit_entries"
        " WHERE kind = 'oprf_evaluation' AND actor = ?",
        "belastingdienst",
    )
    assert audited == CAP
    assert pending() == 2
    run.assert_serving()


class HolderSetCycle:
    """Every responding set of the epoch, in turn."""

    def __init__(self, epoch: KeyEpoch) -> None:
        indices = sorted(h.index for h in epoch.holders)
        self.all = list(itertools.combinations(indices, epoch.threshold))
        self._turn = itertools.cycle(self.all)

    def next(self) -> tuple[int, ...]:
        return next(self._turn)
