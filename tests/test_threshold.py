"""Threshold OPRF: t-of-n shares give exactly the single-key evaluation; bad holders are caught."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from samenloop.node.provision import PartySpec, provision
from samenloop.node.tokens import oprf, threshold
from samenloop.node.tokens.threshold import (
    DailyUse,
    FaultyHolders,
    HolderPlanner,
    KeyEpoch,
    PartialEvaluation,
)
from samenloop.policies.covenant import Role
from samenloop.policies.errors import (
    InvalidInput,
    InvalidProof,
    MessageTooLarge,
    NotAllowed,
    NotEnoughHolders,
    QuotaExceeded,
    Unavailable,
)
from samenloop.policies.policy import Quotas

NOW = datetime(2026, 11, 28, tzinfo=UTC)
TIMES = {"created_at": NOW, "retire_after": NOW + timedelta(days=365)}


def make_epoch(
    t: int, n: int, key: bytes | None = None
) -> tuple[bytes, KeyEpoch, list[threshold.Share]]:
    key = key or oprf.random_scalar()
    shares = threshold.split_key(key, t, n)
    epoch = KeyEpoch(
        covenant_id="riec-test",
        epoch=1,
        threshold=t,
        group_public_key=oprf.scalar_mult_gen(key),
        holders=tuple(
            threshold.Holder(index=s.index, party=f"holder-{s.index}", commitment=s.commitment)
            for s in shares
        ),
        **TIMES,
    )
    return key, epoch, shares


def honest(share: threshold.Share) -> threshold.HolderFunction:
    return lambda blinded, rset: threshold.evaluate_partial(share, blinded, rset)


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5)])
def test_every_subset_gives_the_single_key_evaluation(t, n):
    key, epoch, shares = make_epoch(t, n)
    epoch.check_consistency()
    inputs = [b"bsn:123456782", b"kvk:12345678", b"iban:NL91ABNA0417164300"]
    blinds, blinded = zip(*(oprf.blind(x) for x in inputs), strict=True)
    expected = [oprf.blind_evaluate(key, b) for b in blinded]
    by_index = {s.index: s for s in shares}
    for subset in itertools.combinations(range(1, n + 1), t):
        partials = {i: threshold.evaluate_partial(by_index[i], blinded, subset) for i in subset}
        combined = threshold.combine(epoch, subset, blinded, partials)
        assert combined == expected, subset
        outputs = oprf.finalize_batch(inputs, blinds, combined)
        assert outputs == [oprf.evaluate(key, x) for x in inputs]


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5)])
def test_recover_key_from_every_subset(t, n):
    key, _, shares = make_epoch(t, n)
    for subset in itertools.combinations(shares, t):
        assert threshold.recover_key(subset) == key
    # fewer than t shares give a different scalar (with overwhelming probability)
    assert threshold.recover_key(shares[: t - 1]) != key


def test_known_polynomial_shares():
    # f(x) = 7 + 3x over the scalar field: shares are 10, 13, 16.
    shares = threshold.split_key(
        oprf.scalar_from_int(7), 2, 3, coefficients=[oprf.scalar_from_int(3)]
    )
    assert [oprf.scalar_to_int(s.scalar) for s in shares] == [10, 13, 16]
    lam = threshold.lagrange_coefficient(1, [1, 2])
    assert oprf.scalar_to_int(lam) == 2  # x2 / (x2 - x1) = 2
    lam2 = threshold.lagrange_coefficient(2, [1, 2])
    assert oprf.scalar_to_int(lam2) == oprf.ORDER - 1  # x1 / (x1 - x2) = -1


def test_a_wrong_partial_is_detected_and_its_holder_skipped():
    key, epoch, shares = make_epoch(2, 3)
    calls: list[int] = []

    def liar(blinded, rset):
        calls.append(1)
        partial = threshold.evaluate_partial(shares[0], blinded, rset)
        # Replace the first evaluation with a different valid point: proof no longer matches.
        other = oprf.scalar_mult(oprf.random_scalar(), blinded[0])
        forged = (other, *partial.evaluated_elements[1:])
        return PartialEvaluation(partial.holder_index, forged, partial.proof)

    holders = {1: liar, 2: honest(shares[1]), 3: honest(shares[2])}
    _, blinded = oprf.blind(b"x")
    planner = HolderPlanner(epoch)
    result = threshold.evaluate_in_process(epoch, holders, [blinded], planner)
    assert result == [oprf.blind_evaluate(key, blinded)]
    assert planner.excluded == {1}
    assert calls == [1]


def test_a_holder_using_the_wrong_share_is_detected():
    _, epoch, shares = make_epoch(2, 3)
    impostor = threshold.Share(index=2, scalar=oprf.random_scalar())
    _, blinded = oprf.blind(b"y")
    subset = (1, 2)
    partials = {
        1: threshold.evaluate_partial(shares[0], [blinded], subset),
        2: threshold.evaluate_partial(impostor, [blinded], subset),  # valid proof, wrong key
    }
    with pytest.raises(FaultyHolders) as info:
        threshold.combine(epoch, subset, [blinded], partials)
    assert info.value.indices == {2}


def test_a_holder_ignoring_the_lagrange_coefficient_is_detected():
    _, epoch, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"z")
    subset = (2, 3)
    lazy = threshold.evaluate_partial(shares[1], [blinded], (2,))  # coefficient 1
    partials = {2: lazy, 3: threshold.evaluate_partial(shares[2], [blinded], subset)}
    with pytest.raises(FaultyHolders) as info:
        threshold.combine(epoch, subset, [blinded], partials)
    assert info.value.indices == {2}


def test_not_enough_honest_holders():
    _, epoch, shares = make_epoch(2, 3)

    def refuses(blinded, rset):
        raise QuotaExceeded("over quota", field="requester")

    holders = {1: refuses, 2: refuses, 3: honest(shares[2])}
    _, blinded = oprf.blind(b"q")
    with pytest.raises(NotEnoughHolders):
        threshold.evaluate_in_process(epoch, holders, [blinded])


def test_unreachable_holders_are_left_out():
    key, epoch, shares = make_epoch(3, 5)
    holders = {2: honest(shares[1]), 4: honest(shares[3]), 5: honest(shares[4])}
    _, blinded = oprf.blind(b"w")
    assert threshold.evaluate_in_process(epoch, holders, [blinded]) == [
        oprf.blind_evaluate(key, blinded)
    ]


def test_holder_rejects_invalid_blinded_elements():
    _, _, shares = make_epoch(2, 3)
    with pytest.raises(InvalidInput) as info:
        threshold.evaluate_partial(shares[0], [oprf.GENERATOR, bytes(32)], (1, 2))
    assert info.value.field == "blinded_elements[1]"
    with pytest.raises(InvalidInput):
        threshold.evaluate_partial(shares[0], [oprf.GENERATOR], (2, 3))  # not in the set
    with pytest.raises(InvalidInput):
        threshold.evaluate_partial(shares[0], [oprf.GENERATOR], (2, 1))  # not ascending
    with pytest.raises(InvalidInput):
        threshold.evaluate_partial(shares[0], [], (1, 2))


def test_tampered_commitment_is_caught_by_consistency_check():
    _, epoch, _ = make_epoch(2, 3)
    holders = list(epoch.holders)
    holders[2] = threshold.Holder(3, holders[2].party, oprf.scalar_mult_gen(oprf.random_scalar()))
    tampered = replace(epoch, holders=tuple(holders))
    with pytest.raises(InvalidInput) as info:
        tampered.check_consistency()
    assert info.value.field == "holders[3]"
    wrong_pk = replace(epoch, group_public_key=oprf.GENERATOR)
    with pytest.raises(InvalidInput):
        wrong_pk.check_consistency()


@pytest.mark.parametrize(
    ("threshold_t", "indices"),
    [(0, (1, 2)), (3, (1, 2)), (2, (1, 1)), (2, (0, 1)), (2, (1, 17)), (1, (1, 2))],
)
def test_key_epoch_validation(threshold_t, indices):
    holders = tuple(threshold.Holder(i, f"h{i}", oprf.GENERATOR) for i in indices)
    with pytest.raises(InvalidInput):
        KeyEpoch("c", 1, threshold_t, oprf.GENERATOR, holders, **TIMES)


def test_planner_chooses_lowest_available_sets():
    _, epoch, _ = make_epoch(3, 5)
    planner = HolderPlanner(epoch)
    assert planner.next_set() == (1, 2, 3)
    planner.exclude({2})
    assert planner.next_set() == (1, 3, 4)
    planner.exclude({1, 3})
    with pytest.raises(NotEnoughHolders):
        planner.next_set()
    assert len(planner.all_sets()) == 10


DAY = date(2026, 11, 28)


def test_a_holder_party_always_includes_its_own_seat():
    _, epoch, _ = make_epoch(2, 3)
    planner = HolderPlanner(epoch, own=3)
    assert planner.next_set() == (1, 3)
    planner.exclude({1})
    assert planner.next_set() == (2, 3)
    planner = HolderPlanner(epoch, own=3)
    planner.exclude({3})  # its own seat unreachable: never t others instead
    with pytest.raises(NotEnoughHolders, match="own key-holder seat 3 is not usable"):
        planner.next_set()


def test_the_planner_takes_the_seats_with_most_left_and_cuts_the_request_to_it():
    _, epoch, _ = make_epoch(2, 3)
    use = DailyUse({1: 8, 2: 8, 3: 8})
    use.learn(1, 2, DAY)
    use.learn(3, 5, DAY)
    planner = HolderPlanner(epoch, use=use)
    # Seat 2 (8 left) and seat 3 (5): until seat 3 is a step below seat 1 (2 left).
    assert planner.plan(100, day=DAY) == ((2, 3), 4)
    assert planner.plan(1, day=DAY) == ((2, 3), 1)
    # Seats that have nothing left are skipped and named.
    use.learn(2, 0, DAY)
    use.learn(3, 0, DAY)
    with pytest.raises(NotEnoughHolders, match=r"no quota left today at holder\(s\) \[2, 3\]"):
        planner.plan(1, day=DAY)
    # A holder party: its own seat with nothing left stops it, whatever the others have.
    own_use = DailyUse({1: 12, 2: 6, 3: 6})
    own = HolderPlanner(epoch, own=1, use=own_use)
    assert own.plan(100, day=DAY) == ((1, 2), 1)  # seats 2 and 3 tie: a step at a time
    own_use.learn(1, 0, DAY)
    with pytest.raises(NotEnoughHolders, match="own key-holder seat 1 has no quota left today"):
        own.plan(1, day=DAY)
    # Each UTC day starts afresh; nothing is believed above the allowance.
    assert planner.plan(100, day=DAY + timedelta(days=1))[1] >= 1
    use.learn(1, 99, DAY + timedelta(days=1))
    assert use.left(1, DAY + timedelta(days=1)) == 8
    with pytest.raises(InvalidInput):
        planner.plan(0, day=DAY)


def _reach(epoch: KeyEpoch, cap: int, own: int | None) -> tuple[int, int]:
    """Tokens an honest party gets by following the planner until it stops, and its requests.

    The holders are counters of what each still allows; every answer says what is left.
    """
    n, t = len(epoch.holders), epoch.threshold
    quotas = Quotas(cap, 0)
    allowance = {
        h.index: cap
        if h.index == own
        else quotas.oprf_per_holder(threshold=t, holders=n, seated=own is not None)
        for h in epoch.holders
    }
    left, use = dict(allowance), DailyUse(dict(allowance))
    made = requests = 0
    while True:
        try:
            chosen, count = HolderPlanner(epoch, own=own, use=use).plan(1000, day=DAY)
        except NotEnoughHolders:
            return made, requests
        assert own is None or own in chosen
        assert all(left[i] >= count for i in chosen), "asked a holder for more than it has left"
        for i in chosen:
            left[i] -= count
            use.learn(i, left[i], DAY)
        made, requests = made + count, requests + 1


@pytest.mark.parametrize(
    ("t", "n", "cap"),
    [(2, 2, 15), (2, 3, 12), (2, 3, 1000), (3, 3, 17), (3, 5, 12_345), (4, 7, 100), (2, 16, 100)],
)
def test_an_honest_party_reaches_what_the_holders_shares_allow(t, n, cap):
    _, epoch, _ = make_epoch(t, n)
    quotas = Quotas(cap, 0)
    unseated = quotas.oprf_per_holder(threshold=t, holders=n, seated=False)
    seated = quotas.oprf_per_holder(threshold=t, holders=n, seated=True)
    # A party without a seat: t holders per token, so n * share / t in all.
    made, _ = _reach(epoch, cap, None)
    assert made == n * unseated // t <= cap
    # A holder party: its own seat and t-1 others per token.
    made, _ = _reach(epoch, cap, 1)
    assert made == min(cap, (n - 1) * seated // (t - 1)) <= cap


def test_the_planner_spreads_a_large_allowance_in_large_requests():
    _, epoch, _ = make_epoch(2, 3)
    made, requests = _reach(epoch, 1_000_000, None)
    assert made == 999_999  # 3 * floor(2_000_000 / 3) / 2
    assert requests < 1200  # at most 1000 elements a request: 1000 at the very least


def test_the_window_falls_to_one_on_a_loss_and_grows_by_what_is_answered():
    _, epoch, _ = make_epoch(2, 2)  # one set: no spreading cuts the requests
    use = DailyUse({1: 5000, 2: 5000})
    planner = HolderPlanner(epoch, use=use)
    assert use.window == threshold.MAX_ELEMENTS
    assert planner.plan(5000, day=DAY)[1] == threshold.MAX_ELEMENTS
    use.lost()
    assert planner.plan(5000, day=DAY) == ((1, 2), 1)
    sizes = []
    for _ in range(12):
        count = planner.plan(5000, day=DAY)[1]
        sizes.append(count)
        use.answered(count)
    # Doubling: each request at most 1 + what was answered since the loss.
    assert sizes == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]
    assert use.window == threshold.MAX_ELEMENTS
    use.lost()
    use.answered(3)
    assert use.window == 4
    use.answered(-5)  # nothing answered adds nothing
    assert use.window == 4
    # A new UTC day keeps what the node learnt about losses.
    assert planner.plan(5000, day=DAY + timedelta(days=1))[1] == 4
    # Without daily use (tests, evaluate_in_process) there is no window.
    assert HolderPlanner(epoch).plan(5000)[1] == threshold.MAX_ELEMENTS


def test_share_repr_hides_the_scalar():
    _, _, shares = make_epoch(2, 3)
    assert shares[0].scalar.hex() not in repr(shares[0])
    assert "redacted" in repr(shares[0])


def test_a_copied_answer_is_caught_not_combined():
    # Holder 2's valid answer stored under holder 1 as well: both proofs verify for holder 2,
    # the sum would be 2 * lambda_2 * s_2 * B. The copy must be named faulty.
    _, epoch, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"copy")
    answer = threshold.evaluate_partial(shares[1], [blinded], (1, 2))
    with pytest.raises(FaultyHolders) as info:
        threshold.combine(epoch, (1, 2), [blinded], {1: answer, 2: answer})
    assert info.value.indices == {1}


def test_an_unreachable_holder_is_skipped_not_fatal():
    key, epoch, shares = make_epoch(2, 3)

    def down(blinded, rset):
        raise Unavailable("holder channel closed", field="holder")

    _, blinded = oprf.blind(b"u")
    planner = HolderPlanner(epoch)
    holders = {1: down, 2: honest(shares[1]), 3: honest(shares[2])}
    assert threshold.evaluate_in_process(epoch, holders, [blinded], planner) == [
        oprf.blind_evaluate(key, blinded)
    ]
    assert planner.excluded == {1}


def test_one_party_may_not_hold_two_seats():
    _, epoch, _ = make_epoch(2, 3)
    h1, h2, h3 = epoch.holders
    with pytest.raises(InvalidInput) as info:
        replace(epoch, holders=(h1, replace(h2, party=h1.party), h3))
    assert info.value.field == "holders"


def test_epoch_lifetime_and_bounds():
    _, epoch, _ = make_epoch(2, 3)
    epoch.check_in_force(NOW + timedelta(days=1))
    with pytest.raises(NotAllowed):
        epoch.check_in_force(NOW + timedelta(days=366))
    with pytest.raises(NotAllowed):
        epoch.check_in_force(NOW - timedelta(seconds=1))
    for bad in (
        {"epoch": 2**32},
        {"covenant_id": "x" * 65},
        {"covenant_id": ""},
        {"retire_after": NOW},
        {"created_at": datetime(2026, 1, 1)},  # naive
    ):
        with pytest.raises(InvalidInput):
            replace(epoch, **bad)


def test_too_many_elements_in_one_request():
    _, _, shares = make_epoch(2, 3)
    with pytest.raises(MessageTooLarge) as info:
        threshold.evaluate_partial(
            shares[0], [oprf.GENERATOR] * (threshold.MAX_ELEMENTS + 1), (1, 2)
        )
    assert info.value.field == "blinded_elements"


# --- combine: exactly one verified answer from each holder of a set of exactly t ------------


def _answers(shares: list[threshold.Share], subset: tuple[int, ...], blinded: list[bytes]):
    by_index = {s.index: s for s in shares}
    return {i: threshold.evaluate_partial(by_index[i], blinded, subset) for i in subset}


@pytest.mark.parametrize(
    ("subset", "answered"),
    [
        pytest.param((1,), (1,), id="fewer-than-t-holders"),
        pytest.param((1, 2), (1,), id="an-answer-missing"),
        pytest.param((1, 2), (1, 2, 3), id="an-extra-answer"),
        pytest.param((1, 2), (1, 3), id="an-answer-from-outside-the-set"),
        pytest.param((1, 2, 3), (1, 2, 3), id="more-than-t-holders"),
        pytest.param((1, 2), (), id="no-answers"),
    ],
)
def test_combine_takes_exactly_one_answer_from_each_of_exactly_t_holders(subset, answered):
    """Fewer than t answers would combine to a wrong evaluation; more would let an extra,
    unchecked answer in. Both are refused before any proof is looked at."""
    _, epoch, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"t-of-n")
    every = {
        i: threshold.evaluate_partial(shares[i - 1], [blinded], tuple(sorted(answered)) or (1, 2))
        for i in answered
    }
    with pytest.raises(InvalidInput) as info:
        threshold.combine(epoch, subset, [blinded], every)
    assert info.value.field == "partials"
    assert info.value.message == "need exactly one answer from each holder in the set"


@pytest.mark.parametrize("subset", [(), (2, 1), (1, 1)])
def test_combine_refuses_a_set_that_is_not_ascending_and_distinct(subset):
    _, epoch, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"set")
    partials = _answers(shares, (1, 2), [blinded])
    with pytest.raises(InvalidInput) as info:
        threshold.combine(epoch, subset, [blinded], partials)
    assert info.value.field == "responding_set"
    assert info.value.message == "responding set must be ascending and distinct"


def test_every_faulty_holder_is_named_at_once():
    """All answers are checked, so one retry can leave every faulty holder out."""
    _, epoch, shares = make_epoch(3, 5)
    _, blinded = oprf.blind(b"all")
    subset = (1, 3, 5)
    partials = _answers(shares, subset, [blinded])
    # Holder 1 answers for two elements where one was asked; holder 5's element is no point.
    partials[1] = replace(partials[1], evaluated_elements=partials[1].evaluated_elements * 2)
    partials[5] = replace(partials[5], evaluated_elements=(bytes(32),))
    with pytest.raises(FaultyHolders) as info:
        threshold.combine(epoch, subset, [blinded], partials)
    assert info.value.indices == {1, 5}
    assert info.value.field == "holder_index"
    assert info.value.reason == "oprf.faulty_holder"
    assert info.value.message == "key holder(s) [1, 5] returned invalid partial evaluations"


def test_an_answer_under_another_index_is_faulty_even_with_a_valid_proof():
    # Holder 1's own valid answer filed under 2 and holder 2's under 1: both proofs would
    # verify for the holder that made them, but neither is the answer of the seat it is in.
    _, epoch, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"swap")
    partials = _answers(shares, (1, 2), [blinded])
    with pytest.raises(FaultyHolders) as info:
        threshold.combine(epoch, (1, 2), [blinded], {1: partials[2], 2: partials[1]})
    assert info.value.indices == {1, 2}


def test_combine_adds_the_answers_of_each_element():
    key, epoch, shares = make_epoch(3, 4)
    blinded = [oprf.blind(x)[1] for x in (b"een", b"twee", b"drie")]
    subset = (2, 3, 4)
    combined = threshold.combine(epoch, subset, blinded, _answers(shares, subset, blinded))
    assert combined == [oprf.blind_evaluate(key, b) for b in blinded]


def test_verify_partial_names_the_holder_and_the_element():
    _, epoch, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"verify")
    partial = threshold.evaluate_partial(shares[1], [blinded], (1, 2))
    threshold.verify_partial(epoch, (1, 2), [blinded], partial)
    with pytest.raises(InvalidProof) as info:
        threshold.verify_partial(epoch, (1, 2), [blinded, blinded], partial)
    assert (info.value.field, info.value.message) == (
        "holders[2]",
        "wrong number of evaluated elements",
    )
    broken = replace(partial, evaluated_elements=(bytes(31),))
    with pytest.raises(InvalidInput) as info:
        threshold.verify_partial(epoch, (1, 2), [blinded], broken)
    assert info.value.field == "holders[2].evaluated_elements[0]"
    with pytest.raises(InvalidProof) as info:
        threshold.verify_partial(epoch, (2, 3), [blinded], partial)  # another set's weight
    assert info.value.field == "holders[2]"


# --- the pieces: Lagrange coefficients, sets, splitting, holders ----------------------------


def test_lagrange_coefficients_at_another_point():
    # f(x) = 7 + 3x: from f(1) = 10 and f(2) = 13, f(3) = lambda_1(3) * 10 + lambda_2(3) * 13.
    at_three = [oprf.scalar_to_int(threshold.lagrange_coefficient(i, [1, 2], at=3)) for i in (1, 2)]
    assert at_three == [oprf.ORDER - 1, 2]  # (3-2)/(1-2) = -1, (3-1)/(2-1) = 2
    assert (at_three[0] * 10 + at_three[1] * 13) % oprf.ORDER == 16
    with pytest.raises(InvalidInput) as info:
        threshold.lagrange_coefficient(3, [1, 2])
    assert (info.value.field, info.value.message) == (
        "responding_set",
        "holder 3 is not in the responding set",
    )


@pytest.mark.parametrize(
    ("secret", "t", "n", "coefficients", "field", "message"),
    [
        pytest.param(bytes(31), 2, 3, None, "secret", "scalar must be 32 bytes", id="short-secret"),
        pytest.param(None, 0, 3, None, "threshold", "need 1 <= t <= n <= 16", id="t-zero"),
        pytest.param(None, 4, 3, None, "threshold", "need 1 <= t <= n <= 16", id="t-above-n"),
        pytest.param(None, 2, 17, None, "threshold", "need 1 <= t <= n <= 16", id="n-above-16"),
        pytest.param(
            None,
            3,
            3,
            [b"\x01" + bytes(31)],
            "coefficients",
            "need exactly t-1 coefficients",
            id="too-few-coefficients",
        ),
        pytest.param(
            None,
            2,
            3,
            [b"\x01" + bytes(31)] * 2,
            "coefficients",
            "need exactly t-1 coefficients",
            id="too-many-coefficients",
        ),
    ],
)
def test_split_key_refuses(secret, t, n, coefficients, field, message):
    with pytest.raises(InvalidInput) as info:
        threshold.split_key(secret or oprf.random_scalar(), t, n, coefficients=coefficients)
    assert (info.value.field, info.value.message) == (field, message)


def test_split_key_at_the_limits():
    key = oprf.random_scalar()
    shares = threshold.split_key(key, 16, 16)
    assert [s.index for s in shares] == list(range(1, 17))
    assert threshold.recover_key(shares) == key
    alone = threshold.split_key(key, 1, 1)
    assert [s.scalar for s in alone] == [key]  # t = 1: the constant polynomial


def test_holders_are_found_by_index():
    _, epoch, _ = make_epoch(2, 3)
    assert epoch.holder(3) is epoch.holders[2]
    with pytest.raises(InvalidInput) as info:
        epoch.holder(4)
    assert (info.value.field, info.value.message) == ("holder_index", "no key holder with index 4")


def test_an_epoch_is_in_force_from_its_creation_to_its_retirement_both_included():
    _, epoch, _ = make_epoch(2, 3)
    epoch.check_in_force(epoch.created_at)
    epoch.check_in_force(epoch.retire_after)
    with pytest.raises(NotAllowed) as info:
        epoch.check_in_force(epoch.retire_after + timedelta(microseconds=1))
    assert info.value.field == "key_epoch"
    assert info.value.reason == "oprf.epoch_not_in_force"
    assert info.value.message == (
        "key epoch 1 is valid from 2026-11-28T00:00:00+00:00 until 2027-11-28T00:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        pytest.param(
            {"covenant_id": ""}, "covenant_id", "covenant id must be 1..64 bytes", id="id"
        ),
        pytest.param(
            {"covenant_id": "é" * 32 + "x"},
            "covenant_id",
            "covenant id must be 1..64 bytes",
            id="id-65-bytes",
        ),
        pytest.param({"epoch": 0}, "epoch", "key epoch must be 1..2^32-1", id="epoch-zero"),
        pytest.param({"epoch": 2**32}, "epoch", "key epoch must be 1..2^32-1", id="epoch-2^32"),
        pytest.param(
            {"threshold": 1},
            "threshold",
            "threshold 1 must be 2..3: one holder alone must never be able to evaluate",
            id="threshold-one",
        ),
        pytest.param(
            {"threshold": 4},
            "threshold",
            "threshold 4 must be 2..3: one holder alone must never be able to evaluate",
            id="threshold-above-n",
        ),
        pytest.param(
            {"retire_after": NOW},
            "retire_after",
            "key epoch must retire after it was created",
            id="retires-at-creation",
        ),
        pytest.param(
            {"retire_after": datetime(2027, 1, 1)},
            "created_at",
            "key epoch times must be timezone-aware (UTC)",
            id="naive-retirement",
        ),
        pytest.param(
            {"group_public_key": bytes(32)},
            "group_public_key",
            "group element is the identity",
            id="identity-key",
        ),
    ],
)
def test_key_epoch_checks_name_the_field(changes, field, message):
    _, epoch, _ = make_epoch(2, 3)
    with pytest.raises(InvalidInput) as info:
        replace(epoch, **changes)
    assert (info.value.field, info.value.message) == (field, message)


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ((1, 1, 2), "holder indices must be distinct, 1..16"),
        ((0, 1, 2), "holder indices must be distinct, 1..16"),
        ((1, 2, 17), "holder indices must be distinct, 1..16"),
    ],
)
def test_key_epoch_holder_indices(indices, message):
    _, epoch, _ = make_epoch(2, 3)
    holders = tuple(replace(h, index=i) for h, i in zip(epoch.holders, indices, strict=True))
    with pytest.raises(InvalidInput) as info:
        replace(epoch, holders=holders)
    assert (info.value.field, info.value.message) == ("holders", message)


def test_key_epoch_accepts_the_edges():
    _, epoch, _ = make_epoch(2, 3)
    replace(epoch, covenant_id="c" * 64, epoch=2**32 - 1, threshold=3)
    sixteen = tuple(replace(h, index=i) for h, i in zip(epoch.holders, (1, 9, 16), strict=True))
    assert [h.index for h in replace(epoch, holders=sixteen).holders] == [1, 9, 16]
    bad_commitment = (*epoch.holders[:2], replace(epoch.holders[2], commitment=bytes(32)))
    with pytest.raises(InvalidInput) as info:
        replace(epoch, holders=bad_commitment)
    assert info.value.field == "holders[3].commitment"


def test_inconsistent_commitments_name_the_holder_and_say_why():
    _, epoch, _ = make_epoch(2, 4)
    holders = list(epoch.holders)
    holders[3] = replace(holders[3], commitment=holders[2].commitment)
    with pytest.raises(InvalidInput) as info:
        replace(epoch, holders=tuple(holders)).check_consistency()
    assert (info.value.field, info.value.message) == (
        "holders[4]",
        "commitment of holder 4 is inconsistent",
    )
    with pytest.raises(InvalidInput) as info:
        replace(epoch, group_public_key=oprf.GENERATOR).check_consistency()
    assert (info.value.field, info.value.message) == (
        "holders",
        "holder commitments do not match the group public key",
    )


def test_evaluate_partial_takes_up_to_the_limit_and_names_the_count():
    _, _, shares = make_epoch(2, 3)
    most = threshold.evaluate_partial(shares[0], [oprf.GENERATOR] * threshold.MAX_ELEMENTS, (1, 2))
    assert len(most.evaluated_elements) == threshold.MAX_ELEMENTS
    assert most.holder_index == 1
    with pytest.raises(MessageTooLarge) as info:
        threshold.evaluate_partial(
            shares[0], [oprf.GENERATOR] * (threshold.MAX_ELEMENTS + 1), (1, 2)
        )
    assert info.value.message == (
        f"{threshold.MAX_ELEMENTS + 1} blinded elements; "
        f"at most {threshold.MAX_ELEMENTS} per request"
    )
    with pytest.raises(InvalidInput) as info:
        threshold.evaluate_partial(shares[0], [], (1, 2))
    assert (info.value.field, info.value.message) == ("blinded_elements", "no blinded elements")


def test_a_faulty_answer_in_process_is_left_out_and_the_next_set_tried():
    key, epoch, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"retry")

    def wrong_share(blinded_elements, rset):
        return threshold.evaluate_partial(
            threshold.Share(2, oprf.random_scalar()), blinded_elements, rset
        )

    planner = HolderPlanner(epoch)
    holders = {1: honest(shares[0]), 2: wrong_share, 3: honest(shares[2])}
    assert threshold.evaluate_in_process(epoch, holders, [blinded], planner) == [
        oprf.blind_evaluate(key, blinded)
    ]
    assert planner.excluded == {2}


def test_interpolation_at_a_known_index_gives_its_own_commitment():
    # At x = 2 the coefficient of holder 1 vanishes and holder 2's is 1: C_2 itself.
    _, epoch, _ = make_epoch(2, 3)
    c1, c2, c3 = (h.commitment for h in epoch.holders)
    assert threshold._interpolate_at(2, (1, 2), [c1, c2]) == c2
    assert threshold._interpolate_at(3, (1, 2), [c1, c2]) == c3
    assert threshold._interpolate_at(0, (2, 3), [c2, c3]) == epoch.group_public_key


def test_a_holders_proof_is_deterministic_only_with_a_given_nonce():
    _, _, shares = make_epoch(2, 3)
    _, blinded = oprf.blind(b"nonce")
    r = oprf.scalar_from_int(12345)
    first = threshold.evaluate_partial(shares[0], [blinded], (1, 2), r=r)
    assert threshold.evaluate_partial(shares[0], [blinded], (1, 2), r=r) == first
    assert threshold.evaluate_partial(shares[0], [blinded], (1, 2)).proof != first.proof


def test_the_covenants_key_epoch_is_read_and_checked(tmp_path):
    specs = [
        PartySpec("gemeente", "Gemeente", Role.GEMEENTE),
        PartySpec("politie", "Politie", Role.POLITIE),
        PartySpec("riec", "RIEC", Role.RIEC),
    ]
    covenant = provision(tmp_path, "riec-drempel", specs, ["politie", "riec"], 2, now=NOW).covenant
    epoch = KeyEpoch.from_covenant(covenant)
    plain = covenant.key_epoch
    assert epoch == KeyEpoch(
        covenant_id="riec-drempel",
        epoch=plain.epoch,
        threshold=2,
        group_public_key=plain.group_public_key,
        holders=tuple(threshold.Holder(s.index, s.party, s.commitment) for s in plain.holders),
        created_at=plain.created_at,
        retire_after=plain.retire_after,
    )
    assert [h.party for h in epoch.holders] == ["politie", "riec"]
    seats = list(plain.holders)
    seats[1] = replace(seats[1], commitment=seats[0].commitment)
    with pytest.raises(InvalidInput) as info:
        KeyEpoch.from_covenant(replace(covenant, key_epoch=replace(plain, holders=tuple(seats))))
    assert info.value.field == "holders"


def test_daily_use_counts_what_each_seat_has_left_per_day():
    first, second = date(2026, 11, 28), date(2026, 11, 29)
    use = DailyUse({1: 10, 2: 6})
    assert (use.left(1, first), use.left(2, first), use.left(3, first)) == (10, 6, 0)
    use.spend(1, 4, first)
    assert use.left(1, first) == 6
    use.spend(1, 4, first)
    use.spend(1, 4, first)
    assert use.left(1, first) == 0  # never below nothing
    use.learn(2, 4, first)  # a holder's signed answer says what remains
    assert use.left(2, first) == 4
    use.learn(2, 99, first)
    assert use.left(2, first) == 6  # never more than the allowance
    use.learn(2, -3, first)
    assert use.left(2, first) == 0
    use.learn(3, 5, first)
    assert use.left(3, first) == 0  # a seat without an allowance
    # Each UTC day starts afresh, whichever call comes first on it.
    assert (use.left(1, second), use.left(2, second)) == (10, 6)
    assert use.day == second
    spent = DailyUse({1: 5})
    spent.spend(1, 2, first)
    spent.spend(1, 1, second)
    assert spent.left(1, second) == 4
    learnt = DailyUse({1: 5})
    learnt.learn(1, 1, first)
    learnt.learn(1, 3, second)
    assert learnt.left(1, second) == 3
    assert learnt.remaining == {1: 3}


def test_plans_refuse_nothing_and_name_why_no_set_is_left():
    day = date(2026, 11, 28)
    _, epoch, _ = make_epoch(2, 3)
    with pytest.raises(InvalidInput) as info:
        HolderPlanner(epoch).plan(0)
    assert (info.value.field, info.value.message) == ("wanted", "nothing to evaluate")
    # Without a day or without the daily use, the use is not consulted.
    use = DailyUse({1: 0, 2: 0, 3: 0})
    assert HolderPlanner(epoch).plan(5, day=day) == ((1, 2), 5)
    assert HolderPlanner(epoch, use=use).plan(5) == ((1, 2), 5)
    # A seat with nothing left is skipped, like an excluded one.
    assert HolderPlanner(epoch, use=DailyUse({1: 0, 2: 9, 3: 9})).plan(3, day=day) == ((2, 3), 3)
    out = HolderPlanner(epoch)
    out.exclude({1, 2})
    with pytest.raises(NotEnoughHolders) as raised:
        out.plan(1)
    assert (raised.value.field, raised.value.message) == (
        "holders",
        "only 1 usable key holders, threshold is 2",
    )
    spent = HolderPlanner(epoch, use=DailyUse({1: 5, 2: 0, 3: 5}))
    spent.exclude({1})
    with pytest.raises(NotEnoughHolders) as raised:
        spent.plan(1, day=day)
    assert raised.value.message == (
        "only 1 usable key holders, threshold is 2; no quota left today at holder(s) [2]"
    )
    mine = HolderPlanner(epoch, own=1)
    mine.exclude({1})
    with pytest.raises(NotEnoughHolders) as raised:
        mine.plan(1)
    assert (raised.value.field, raised.value.message) == (
        "holders",
        "this party's own key-holder seat 1 is not usable; every evaluation it asks includes it",
    )
    with pytest.raises(NotEnoughHolders) as raised:
        HolderPlanner(epoch, own=2, use=DailyUse({1: 5, 2: 0, 3: 5})).plan(1, day=day)
    assert raised.value.message == (
        "this party's own key-holder seat 2 has no quota left today; "
        "every evaluation it asks includes it"
    )


def test_a_one_byte_covenant_id_is_enough():
    _, epoch, _ = make_epoch(2, 3)
    assert replace(epoch, covenant_id="c").covenant_id == "c"
    h1, h2, h3 = epoch.holders
    with pytest.raises(InvalidInput) as info:
        replace(epoch, holders=(h1, replace(h2, party=h1.party), h3))
    assert info.value.message == "a party can hold only one share of a key"


def _rounds(planner: HolderPlanner, rounds: int) -> dict[int, int]:
    """How often each holder is in the sets of ``rounds`` answered rounds."""
    seen: dict[int, int] = {}
    for _ in range(rounds):
        for i in planner.next_set():
            seen[i] = seen.get(i, 0) + 1
        planner.advance()
    return seen


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5), (2, 5)])
def test_without_quotas_the_rounds_go_round_all_holders_evenly(t, n):
    _, epoch, _ = make_epoch(t, n)
    rounds = 10 * n
    assert _rounds(HolderPlanner(epoch), rounds) == {i: 10 * t for i in range(1, n + 1)}
    # From any turn (a daemon starts at random), and around an excluded holder.
    assert _rounds(HolderPlanner(epoch, turn=7), rounds) == {i: 10 * t for i in range(1, n + 1)}
    planner = HolderPlanner(epoch)
    planner.exclude({2})
    seen = _rounds(planner, 10 * (n - 1))
    assert 2 not in seen
    assert set(seen.values()) == {10 * t}


def test_a_holder_party_keeps_its_own_seat_and_spreads_the_others():
    _, epoch, _ = make_epoch(2, 4)
    seen = _rounds(HolderPlanner(epoch, own=2), 30)
    assert seen == {2: 30, 1: 10, 3: 10, 4: 10}
    _, epoch, _ = make_epoch(3, 5)
    seen = _rounds(HolderPlanner(epoch, own=5), 40)
    assert seen == {5: 40, 1: 20, 2: 20, 3: 20, 4: 20}


def test_with_quotas_ties_follow_the_turn_and_most_left_still_comes_first():
    _, epoch, _ = make_epoch(2, 3)
    tied = HolderPlanner(epoch, use=DailyUse({1: 50, 2: 50, 3: 50}), turn=1)
    assert tied.plan(10, day=DAY)[0] == (2, 3)
    use = DailyUse({1: 50, 2: 50, 3: 50})
    use.learn(2, 20, DAY)
    assert HolderPlanner(epoch, use=use, turn=1).plan(10, day=DAY)[0] == (1, 3)
    # Twenty partners each following the planner from their own turn, with a quota: all
    # three holders end with a third of the evaluations, give or take a request.
    served = {1: 0, 2: 0, 3: 0}
    for partner in range(20):
        use = DailyUse({1: 10_000, 2: 10_000, 3: 10_000})
        planner = HolderPlanner(epoch, use=use, turn=partner)
        for _ in range(30):
            chosen, count = planner.plan(1000, day=DAY)
            for i in chosen:
                use.spend(i, count, DAY)
                served[i] += count
            planner.advance()
    total = sum(served.values())
    assert all(abs(s - total / 3) <= 1000 for s in served.values()), served
