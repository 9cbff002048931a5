"""The broker's prefix filter: no prefix it was given is ever missed."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from samenloop.broker import token_filter
from samenloop.broker.token_filter import PrefixFilter, as_array

PREFIXES = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300)


@given(PREFIXES, PREFIXES)
def test_a_prefix_that_was_added_is_never_missed(first, second):
    bloom = PrefixFilter(expected=len(first) + len(second))
    bloom.add(as_array(first))
    bloom.add(as_array(second))
    assert bloom.may_hold(as_array(first + second)).all()
    assert set(bloom.candidates(first + second)) == set(first + second)
    assert bloom.added == len(first) + len(second)


def test_prefixes_sharing_words_all_get_their_bits():
    """Many prefixes set bits of the same words in one call (the unbuffered update)."""
    bloom = PrefixFilter(expected=1)
    prefixes = as_array(range(-5000, 5000))
    bloom.add(prefixes)
    assert bloom.may_hold(prefixes).all()


def test_false_positives_stay_rare_until_it_asks_to_be_rebuilt():
    rng = random.Random(7)
    size = 50_000
    bloom = PrefixFilter(expected=size)
    bloom.add(as_array(rng.getrandbits(64) - 2**63 for _ in range(size)))
    others = as_array(rng.getrandbits(64) - 2**63 for _ in range(size))
    # 16 bits and 4 hashes per prefix: about 0.24% expected.
    assert bloom.may_hold(others).mean() < 0.01
    assert not bloom.wants_rebuild
    extra = bloom.bits // token_filter.REBUILD_BITS_PER_PREFIX - size + 1
    bloom.add(as_array(rng.getrandbits(64) - 2**63 for _ in range(extra)))
    assert bloom.wants_rebuild
    # Still no false negatives, and false positives below about 2.5%.
    assert bloom.may_hold(others).mean() < 0.05


def test_the_filter_is_sized_by_the_expected_count():
    assert PrefixFilter(expected=0).bits == 1 << token_filter.MIN_BITS_LOG2
    assert PrefixFilter(expected=1_000_000).bits >= 16_000_000
    assert PrefixFilter(expected=1_000_000).bits < 2 * 16_000_000


def test_candidates_of_nothing_and_arrays_pass_through():
    bloom = PrefixFilter(expected=10)
    assert bloom.candidates([]) == []
    array = np.array([1, 2, 3], dtype=np.int64)
    assert as_array(array) is array
