"""Scored person hits: Fellegi-Sunter weights per key kind, and the thresholds.

A node that hears, for one of its signals, that keys of some kinds
(:class:`~samenloop.node.identifiers.person_keys.PersonKeyKind`) agreed with another
party's record combines them into one probable hit with the score
:func:`score`: the sum of the agreeing kinds' Fellegi-Sunter agreement weights
``log2(m / u)``, where ``m`` is the probability that a kind agrees for two records of
the same person and ``u`` that it agrees for two records of different people.

The weights in :data:`WEIGHTS` were estimated by ``bench/linkage_weights.py`` from
labelled *training* data only — FEBRL3 (5,000 records, deduplicated within the file)
and a Dutch synthetic training set generated with a seed different from the evaluation
set's — and never on the data sets the benchmark (``bench/linkage.py``) reports: FEBRL4
and the Dutch evaluation set. ``m`` and ``u`` are counted from the labels, with add-half
smoothing so that a kind never seen to agree for different people keeps a finite weight.

The kinds are not independent (most share the surname or the date), so a sum of
weights over-counts evidence; the thresholds are therefore not derived from the weights
but chosen on the same training data as the lowest scores at which the pairs scoring at
least that much had the stated precision there. ``docs/linkage.md`` has the figures.

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from samenloop.node.identifiers.person_keys import PersonKeyKind

__all__ = [
    "DISCLOSURE_THRESHOLD",
    "SHOWN_THRESHOLD",
    "WEIGHTS",
    "KindWeight",
    "estimate",
    "score",
]


@dataclass(frozen=True, slots=True)
class KindWeight:
    """``m`` and ``u`` of one key kind and its agreement weight in bits."""

    m: float
    u: float

    @property
    def agreement(self) -> float:
        """``log2(m/u)``: bits added when the kind agrees."""
        return math.log2(self.m / self.u)

    @property
    def disagreement(self) -> float:
        """``log2((1-m)/(1-u))``: bits added (negative) when both had the kind and it differs."""
        return math.log2((1 - self.m) / (1 - self.u))


# fmt: off
#: Estimated by bench/linkage_weights.py (see the module docstring); regenerate, do not edit.
WEIGHTS: Final[Mapping[PersonKeyKind, KindWeight]] = {
    PersonKeyKind.PHONETIC_DATE: KindWeight(m=0.6692, u=2.756e-07),
    PersonKeyKind.GIVEN_DATE: KindWeight(m=0.7044, u=4.823e-07),
    PersonKeyKind.NAMES_YEAR_MONTH: KindWeight(m=0.6699, u=4.497e-07),
    PersonKeyKind.NAMES_YEAR: KindWeight(m=0.635, u=5.533e-07),
    PersonKeyKind.NAMES_MONTH_DAY: KindWeight(m=0.6263, u=7.904e-08),
    PersonKeyKind.NAMES_ADDRESS: KindWeight(m=0.5122, u=1.301e-06),
    PersonKeyKind.NAMES_POSTCODE: KindWeight(m=0.5205, u=2.5e-07),
    PersonKeyKind.GIVEN_ADDRESS: KindWeight(m=0.5393, u=2.789e-07),
    PersonKeyKind.ADDRESS_DATE: KindWeight(m=0.6507, u=1.746e-06),
}
#: Lowest score at which a hit is shown as probable (training precision >= 0.99).
SHOWN_THRESHOLD: Final = 9.4
#: Lowest score at which a hit may lead to disclosure (training precision >= 0.999).
DISCLOSURE_THRESHOLD: Final = 72.7
# fmt: on


def score(
    agreeing: Iterable[PersonKeyKind],
    compared: Iterable[PersonKeyKind] | None = None,
    weights: Mapping[PersonKeyKind, KindWeight] = WEIGHTS,
) -> float:
    """The score, in bits, of a pair whose keys of the ``agreeing`` kinds are equal.

    Each agreeing kind adds its agreement weight ``log2(m/u)``. ``compared`` are the
    kinds that both records have a key of (both had the parts); each of those that did
    not agree adds its disagreement weight ``log2((1-m)/(1-u))``, which is negative: two
    records with the same surname, date and address but different given names (twins)
    score lower than a pair of which one has no given name at all. Without ``compared``
    only the agreement weights count. A kind counts once however often it is named;
    an agreeing kind counts as compared.
    """
    agree = frozenset(agreeing)
    disagree = frozenset(compared or ()) - agree
    return sum((weights[kind].agreement for kind in agree), 0.0) + sum(
        (weights[kind].disagreement for kind in disagree), 0.0
    )


def estimate(
    match_agree: Mapping[PersonKeyKind, int],
    match_compared: Mapping[PersonKeyKind, int],
    non_match_agree: Mapping[PersonKeyKind, int],
    non_match_compared: Mapping[PersonKeyKind, int],
) -> dict[PersonKeyKind, KindWeight]:
    """``m`` and ``u`` per kind from labelled pairs, with add-half smoothing.

    For each kind: of the true pairs in which both records had a key of the kind
    (``match_compared``), how many had equal keys (``match_agree``); the same for the
    pairs of different people (``non_match_*``). ``m = (agree + 0.5) / (compared + 1)``
    and likewise ``u``.
    """
    out = {}
    for kind in PersonKeyKind:
        if match_compared.get(kind, 0) <= 0 or non_match_compared.get(kind, 0) <= 0:
            raise ValueError(f"estimate needs compared pairs of each class for {kind.value}")
        m = (match_agree.get(kind, 0) + 0.5) / (match_compared[kind] + 1)
        u = (non_match_agree.get(kind, 0) + 0.5) / (non_match_compared[kind] + 1)
        out[kind] = KindWeight(m=m, u=u)
    return out
