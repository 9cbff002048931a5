"""Threshold OPRF: t-of-n shares give exactly the single-key evaluation; bad holders are caught."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from samenloop.node import oprf, threshold
from samenloop.node.threshold import (
    DailyUse,
    FaultyHolders,
    HolderPlanner,
    KeyEpoch,
    PartialEvaluation,
)
from samenloop.policies.errors import (
    InvalidInput,
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
