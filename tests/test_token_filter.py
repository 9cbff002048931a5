"""The broker's prefix filter: no prefix it was given is ever missed."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samenloop.broker import token_filter
from samenloop.broker.token_filter import IndexFilter, PartitionMap, PrefixFilter, as_array

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


ROW_IDS = st.integers(1, 50_000)


@given(st.lists(st.tuples(ROW_IDS, st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=300))
def test_a_row_is_always_found_in_its_partition(rows):
    index = PartitionMap(partition_ids=10_000)
    ids, prefixes = as_array([r[0] for r in rows]), as_array([r[1] for r in rows])
    index.add_rows(ids, prefixes)
    found = index.partitions([prefix for _, prefix in rows])
    for row_id, prefix in rows:
        assert prefix in found[row_id // 10_000 * 10_000]
    assert index.starts == sorted({row_id // 10_000 * 10_000 for row_id, _ in rows})


def test_prefixes_of_other_partitions_are_rarely_sent_there():
    rng = random.Random(11)
    index = PartitionMap(partition_ids=100_000)
    held = {start: [rng.getrandbits(64) - 2**63 for _ in range(20_000)] for start in (0, 300_000)}
    for start, prefixes in held.items():
        index.add(start, as_array(prefixes))
    found = index.partitions(held[0])
    assert len(found[0]) == len(held[0])
    assert len(found.get(300_000, [])) < 0.01 * len(held[0])
    assert index.partitions([]) == {}
    assert PartitionMap(partition_ids=10).partitions([1, 2]) == {}


def test_rows_known_only_by_their_range_go_to_every_partition_of_it():
    index = PartitionMap(partition_ids=1000)
    index.add_range(1999, 2001, as_array([5, 6]))
    assert index.starts == [1000, 2000]
    assert index.partitions([5]) == {1000: [5], 2000: [5]}
    assert index.partitions([6]) == {1000: [6], 2000: [6]}


def test_a_partition_starts_at_a_multiple_of_its_size():
    with pytest.raises(ValueError, match="no partition starts at row id 1500"):
        PartitionMap(partition_ids=1000).add(1500, as_array([1]))
    with pytest.raises(ValueError, match="positive"):
        PartitionMap(partition_ids=0)


def test_the_index_filter_says_where_each_candidate_may_be():
    index = IndexFilter(expected=100, partition_ids=1000, last_id=2500)
    index.add_rows(as_array([10, 1500, 2500]), as_array([-1, 2, 3]))
    found = index.candidates([-1, 2, 3])
    assert -1 in found[0]
    assert 2 in found[1000]
    assert 3 in found[2000]
    index.add_inserted(as_array([4]), first_id=2600, last_id=3100)
    assert index.last_id == 3100
    assert 4 in index.candidates([4])[2000]
    assert 4 in index.candidates([4])[3000]
    index.add_inserted(as_array([]), first_id=3200, last_id=3200)  # nothing new: moves on
    assert index.last_id == 3200
    index.add_inserted(as_array([5]), first_id=3100, last_id=3300)  # partly read already
    assert index.last_id == 3300
    assert 5 in index.candidates([5])[3000]
    index.add_inserted(as_array([6]), first_id=3001, last_id=3300)  # all read already
    assert 6 not in index.candidates([6]).get(3000, [])
    with pytest.raises(ValueError, match="first id must not come after their last"):
        index.add_inserted(as_array([7]), first_id=3400, last_id=3350)
    assert not index.wants_rebuild


def test_catching_up_takes_new_rows_once_and_says_where_the_wanted_ones_are():
    index = IndexFilter(expected=100, partition_ids=1000, last_id=1500)
    ids, prefixes = as_array([1400, 1600, 2100]), as_array([7, 8, 9])
    found = index.catch_up(ids, prefixes, wanted=as_array([7, 9, 10]))
    assert found == {1000: [7], 2000: [9]}  # every wanted row read, taken in or not
    assert index.last_id == 2100
    assert index.prefixes.added == 2  # 1400 was covered already
    assert 8 in index.candidates([8])[1000]
    assert index.catch_up(as_array([]), as_array([]), wanted=as_array([7])) == {}
    assert index.last_id == 2100
