"""Scored person hits: Fellegi-Sunter weights, the score and the thresholds."""

from __future__ import annotations

import math

import pytest

from samenloop.node.identifiers import person_score as ps
from samenloop.node.identifiers.person_keys import ALL_KINDS, PersonKeyKind

K = PersonKeyKind


def test_the_table_covers_every_kind_with_probabilities() -> None:
    assert set(ps.WEIGHTS) == ALL_KINDS
    for weight in ps.WEIGHTS.values():
        assert 0 < weight.u < weight.m < 1
        assert weight.agreement > 0
        assert weight.disagreement < 0


def test_score_adds_agreement_and_disagreement_weights() -> None:
    w = ps.WEIGHTS
    assert ps.score(frozenset()) == 0.0
    one = ps.score({K.ADDRESS_DATE})
    assert one == pytest.approx(math.log2(w[K.ADDRESS_DATE].m / w[K.ADDRESS_DATE].u))
    two = ps.score({K.ADDRESS_DATE, K.PHONETIC_DATE})
    assert two == pytest.approx(one + w[K.PHONETIC_DATE].agreement)
    # Naming a kind twice counts it once; an agreeing kind in compared is not a disagreement.
    assert ps.score([K.ADDRESS_DATE, K.ADDRESS_DATE], {K.ADDRESS_DATE}) == pytest.approx(one)
    with_disagreement = ps.score({K.ADDRESS_DATE}, {K.ADDRESS_DATE, K.GIVEN_DATE})
    assert with_disagreement == pytest.approx(one + w[K.GIVEN_DATE].disagreement)
    assert with_disagreement < one


def test_more_agreement_never_scores_less() -> None:
    kinds = list(PersonKeyKind)
    for n in range(len(kinds)):
        agreeing = set(kinds[:n])
        assert ps.score(agreeing | {kinds[n]}, ALL_KINDS) > ps.score(agreeing, ALL_KINDS)


def test_thresholds_order_and_meaning() -> None:
    assert 0 < ps.SHOWN_THRESHOLD <= ps.DISCLOSURE_THRESHOLD
    # Every kind agreeing is enough for disclosure; one kind against all the others is not.
    assert ps.score(ALL_KINDS, ALL_KINDS) >= ps.DISCLOSURE_THRESHOLD
    for kind in PersonKeyKind:
        assert ps.score({kind}, ALL_KINDS) < ps.DISCLOSURE_THRESHOLD


def test_custom_weights() -> None:
    weights = {kind: ps.KindWeight(m=0.5, u=0.25) for kind in PersonKeyKind}
    assert ps.score({K.GIVEN_DATE}, weights=weights) == pytest.approx(1.0)
    assert ps.score(set(), {K.GIVEN_DATE}, weights) == pytest.approx(math.log2(0.5 / 0.75))


def test_estimate_counts_with_add_half_smoothing() -> None:
    match_agree = {K.PHONETIC_DATE: 9}
    compared = dict.fromkeys(PersonKeyKind, 9)
    non_match_compared = dict.fromkeys(PersonKeyKind, 999)
    weights = ps.estimate(match_agree, compared, {K.PHONETIC_DATE: 1}, non_match_compared)
    assert weights[K.PHONETIC_DATE].m == pytest.approx(9.5 / 10)
    assert weights[K.PHONETIC_DATE].u == pytest.approx(1.5 / 1000)
    # Never seen to agree for anyone: finite weights all the same.
    assert weights[K.GIVEN_DATE].m == pytest.approx(0.5 / 10)
    assert weights[K.GIVEN_DATE].u == pytest.approx(0.5 / 1000)
    assert math.isfinite(weights[K.GIVEN_DATE].agreement)


def test_estimate_needs_compared_pairs_of_both_classes() -> None:
    compared = dict.fromkeys(PersonKeyKind, 5)
    with pytest.raises(ValueError, match=r"person\.given_date"):
        ps.estimate({}, compared, {}, {k: v for k, v in compared.items() if k is not K.GIVEN_DATE})
