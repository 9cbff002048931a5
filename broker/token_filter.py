"""A Bloom filter over the token index's prefixes: which tokens may be held at all.

Most tokens of a batch are new. On PostgreSQL, looking each one up costs a random
leaf of the prefix index, and once the index outgrows the server's buffer pool
(about 5 million tokens at the default 128 MB) most of those leaves are misses: the
cost of a batch would grow with the index. The broker therefore keeps, in memory, a
filter of every prefix in the index and looks up only the tokens the filter may
hold (those of earlier signals, and about 1% false positives). A filter never
misses a prefix it was given, so no hit is lost; a false positive costs one lookup.

On PostgreSQL the index is partitioned by ranges of row ids (migration 0004), and a
lookup through the partitioned table probes every partition's prefix index: at
10 million tokens, eleven probes per candidate, most of them in partitions that
cannot hold it. :class:`IndexFilter` therefore also keeps a :class:`PartitionMap`,
one small filter per partition, and says for each candidate which partitions may
hold it; the store looks it up in those alone.

The filters are sans-IO: :class:`~samenloop.broker.token_index.TokenIndex` feeds them under
the matching lock (see ``filtered`` there), with every prefix it inserts and every
row other writers inserted since it last looked, by row id.

Indices come from the prefix by two multiply-shift hashes with multipliers drawn
at random per filter (Kirsch and Mitzenmacher's double hashing), so that a party
cannot choose tokens that crowd one region of the filter.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

#: Indices per prefix.
HASHES: Final = 4
#: Bits per prefix when the filter is built; it is rebuilt bigger once below half that.
BUILD_BITS_PER_PREFIX: Final = 16
REBUILD_BITS_PER_PREFIX: Final = 8
#: The smallest filter: 2^20 bits (128 KiB).
MIN_BITS_LOG2: Final = 20
#: An :class:`IndexFilter`'s prefix filter is sized for at least this many prefixes
#: (2 MiB), so that a small index is never rebuilt: each rebuild reads the whole index
#: under the matching lock.
MIN_INDEX_PREFIXES: Final = 1_000_000

_ONE: Final = np.uint64(1)
_WORD_SHIFT: Final = np.uint64(6)
_BIT_MASK: Final = np.uint64(63)

Prefixes = npt.NDArray[np.int64]


def as_array(prefixes: Iterable[int] | Prefixes) -> Prefixes:
    """Prefixes (signed 64-bit integers) as the array the filter takes."""
    if isinstance(prefixes, np.ndarray):
        return prefixes.astype(np.int64, copy=False)
    return np.fromiter(prefixes, dtype=np.int64)


def _bits_log2(expected: int) -> int:
    """Bits (as a power of two) of a filter for ``expected`` prefixes."""
    wanted = max(expected, 1) * BUILD_BITS_PER_PREFIX
    return max(MIN_BITS_LOG2, (wanted - 1).bit_length())


class _Hashes:
    """The ``HASHES`` bit indices of prefixes in a filter of ``2**bits_log2`` bits."""

    def __init__(self, bits_log2: int) -> None:
        self.bits_log2 = bits_log2
        self._shift = np.uint64(64 - bits_log2)
        # Odd multipliers, so that each hash is a bijection of the 64-bit prefix.
        self._first = np.uint64(secrets.randbits(64) | 1)
        self._second = np.uint64(secrets.randbits(64) | 1)

    def indices(self, prefixes: Prefixes) -> list[npt.NDArray[np.uint64]]:
        unsigned = prefixes.view(np.uint64)
        first = unsigned * self._first  # wraps modulo 2^64, as multiply-shift hashing wants
        second = (unsigned * self._second) | _ONE
        return [(first + np.uint64(i) * second) >> self._shift for i in range(HASHES)]


def _set_bits(words: npt.NDArray[np.uint64], indices: list[npt.NDArray[np.uint64]]) -> None:
    for index in indices:
        # Unbuffered: several prefixes may set bits of the same word.
        np.bitwise_or.at(words, index >> _WORD_SHIFT, _ONE << (index & _BIT_MASK))


class PrefixFilter:
    """A Bloom filter of 64-bit prefixes, sized for ``expected`` of them.

    ``may_hold`` never answers ``False`` for a prefix that was added (no false
    negatives); it answers ``True`` for about 0.3% (when built) to 2.5% (before it
    asks to be rebuilt, see :attr:`wants_rebuild`) of the prefixes it was not given.
    """

    def __init__(self, expected: int) -> None:
        self._hashes = _Hashes(_bits_log2(expected))
        self._words = np.zeros(self.bits // 64, dtype=np.uint64)
        self._added = 0

    @property
    def bits(self) -> int:
        return 1 << self._hashes.bits_log2

    @property
    def added(self) -> int:
        """Prefixes added so far (repeats counted)."""
        return self._added

    @property
    def wants_rebuild(self) -> bool:
        """Whether the filter holds so many prefixes that its false positives grow."""
        return self._added * REBUILD_BITS_PER_PREFIX > self.bits

    def add(self, prefixes: Prefixes) -> None:
        _set_bits(self._words, self._hashes.indices(prefixes))
        self._added += len(prefixes)

    def may_hold(self, prefixes: Prefixes) -> npt.NDArray[np.bool_]:
        """For each prefix, whether it may have been added."""
        held = np.ones(len(prefixes), dtype=np.bool_)
        for index in self._hashes.indices(prefixes):
            held &= ((self._words[index >> _WORD_SHIFT] >> (index & _BIT_MASK)) & _ONE) == _ONE
        return held

    def candidates(self, prefixes: Sequence[int] | Prefixes) -> list[int]:
        """The prefixes that may have been added, in their order."""
        if not len(prefixes):
            return []
        array = as_array(prefixes)
        return [int(p) for p in array[self.may_hold(array)]]


class PartitionMap:
    """Which partitions of the token index may hold a prefix.

    The index is partitioned by ranges of ``partition_ids`` row ids, each starting at
    a multiple of it. One Bloom filter per partition that holds rows, each sized
    for a full partition (so none ever needs to grow) and all with the same hashes,
    stacked in one array: a prefix is tested against every partition at once.
    Meant for the few candidates a :class:`PrefixFilter` let through, not for
    whole batches.
    """

    def __init__(self, partition_ids: int) -> None:
        if partition_ids < 1:
            raise ValueError("partition_ids must be positive")
        self.partition_ids = partition_ids
        self._hashes = _Hashes(_bits_log2(partition_ids))
        self._starts: list[int] = []
        self._rows: dict[int, int] = {}  # partition start -> row of _words
        self._words = np.zeros((0, (1 << self._hashes.bits_log2) // 64), dtype=np.uint64)

    @property
    def starts(self) -> list[int]:
        """The partitions that have a filter, by their first row id, in order."""
        return sorted(self._starts)

    def start_of(self, row_id: int) -> int:
        """The first row id of ``row_id``'s partition."""
        return row_id // self.partition_ids * self.partition_ids

    def add(self, start: int, prefixes: Prefixes) -> None:
        """Prefixes of rows in the partition that starts at row id ``start``."""
        if start % self.partition_ids:
            raise ValueError(f"no partition starts at row id {start}")
        row = self._rows.get(start)
        if row is None:
            row = self._rows[start] = len(self._starts)
            self._starts.append(start)
            empty = np.zeros((1, self._words.shape[1]), dtype=np.uint64)
            self._words = np.vstack([self._words, empty])
        _set_bits(self._words[row], self._hashes.indices(prefixes))

    def add_rows(self, row_ids: Prefixes, prefixes: Prefixes) -> None:
        """Prefixes of rows, each with its row id."""
        starts = row_ids // self.partition_ids * self.partition_ids
        for start in np.unique(starts).tolist():
            self.add(int(start), prefixes[starts == start])

    def add_range(self, first_id: int, last_id: int, prefixes: Prefixes) -> None:
        """Prefixes of rows whose ids lie somewhere from ``first_id`` to ``last_id``: each
        goes to every partition of that range."""
        for start in range(self.start_of(first_id), last_id + 1, self.partition_ids):
            self.add(start, prefixes)

    def partitions(self, prefixes: Sequence[int]) -> dict[int, list[int]]:
        """For each partition that may hold any of ``prefixes``, those it may hold."""
        if not prefixes or not self._starts:
            return {}
        array = as_array(prefixes)
        held = np.ones((len(self._starts), len(array)), dtype=np.bool_)
        for index in self._hashes.indices(array):
            words = self._words[:, index >> _WORD_SHIFT]  # partitions x prefixes
            held &= ((words >> (index & _BIT_MASK)) & _ONE) == _ONE
        return {
            self._starts[row]: [int(p) for p in array[held[row]]]
            for row in np.flatnonzero(held.any(axis=1)).tolist()
        }


class IndexFilter:
    """The token index as the broker's store knows it in memory (PostgreSQL): a
    :class:`PrefixFilter` of every prefix, a :class:`PartitionMap` of where each one
    is, and ``last_id``, the newest row id they cover."""

    def __init__(self, expected: int, partition_ids: int, last_id: int) -> None:
        self.prefixes = PrefixFilter(max(expected, MIN_INDEX_PREFIXES))
        self.partitions = PartitionMap(partition_ids)
        self.last_id = last_id
        #: When the database server it was read from started (``pg_postmaster_start_time``):
        #: another value later means another server or a restart (see ``TokenIndex``).
        self.server_started: object = None

    @property
    def wants_rebuild(self) -> bool:
        return self.prefixes.wants_rebuild

    def add_rows(self, row_ids: Prefixes, prefixes: Prefixes) -> None:
        """Rows by their ids and prefixes (not beyond ``last_id``: a scan's or a catch-up's)."""
        self.prefixes.add(prefixes)
        self.partitions.add_rows(row_ids, prefixes)

    def catch_up(
        self, row_ids: Prefixes, prefixes: Prefixes, wanted: Prefixes
    ) -> dict[int, list[int]]:
        """Rows other writers inserted, read by id since ``last_id`` (in id order): those
        still past it go in, and ``last_id`` moves to the newest. Answers, for each
        partition, the ``wanted`` prefixes among all of them."""
        fresh = row_ids > self.last_id  # unless another thread took some in already
        if fresh.any():
            self.add_rows(row_ids[fresh], prefixes[fresh])
            self.last_id = int(row_ids[fresh].max())
        on_wanted = np.isin(prefixes, wanted)
        found: dict[int, list[int]] = {}
        for row_id, prefix in zip(
            row_ids[on_wanted].tolist(), prefixes[on_wanted].tolist(), strict=True
        ):
            found.setdefault(self.partitions.start_of(row_id), []).append(prefix)
        return found

    def add_inserted(self, prefixes: Prefixes, first_id: int, last_id: int) -> None:
        """Rows just committed, whose ids lie from ``first_id`` to ``last_id``; then covers
        up to ``last_id``. Rows it covers already (read by id since) are left alone; when
        some of them are (others were deleted before the filter read them), all go in
        again: a prefix added twice costs nothing but a count."""
        if last_id < first_id:
            raise ValueError("the inserted rows' first id must not come after their last")
        if last_id <= self.last_id:
            return
        if len(prefixes):
            self.prefixes.add(prefixes)
            self.partitions.add_range(first_id, last_id, prefixes)
        self.last_id = last_id

    def candidates(self, prefixes: Sequence[int] | Prefixes) -> dict[int, list[int]]:
        """For each partition, the ``prefixes`` it may hold."""
        return self.partitions.partitions(self.prefixes.candidates(prefixes))
