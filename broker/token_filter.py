"""A Bloom filter over the token index's prefixes: which tokens may be held at all.

Most tokens of a batch are new. On PostgreSQL, looking each one up costs a random
leaf of the prefix index, and once the index outgrows the server's buffer pool
(about 5 million tokens at the default 128 MB) most of those leaves are misses: the
cost of a batch would grow with the index. The broker therefore keeps, in memory, a
filter of every prefix in the index and looks up only the tokens the filter may
hold (those of earlier signals, and about 1% false positives). A filter never
misses a prefix it was given, so no hit is lost; a false positive costs one lookup.

The filter is sans-IO: :class:`~samenloop.broker.store.BrokerStore` feeds it under the
matching lock (see ``_filtered`` there), with every prefix it inserts and every row
other writers inserted since it last looked, by row id.

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

_ONE: Final = np.uint64(1)
_WORD_SHIFT: Final = np.uint64(6)
_BIT_MASK: Final = np.uint64(63)

Prefixes = npt.NDArray[np.int64]


def as_array(prefixes: Iterable[int] | Prefixes) -> Prefixes:
    """Prefixes (signed 64-bit integers) as the array the filter takes."""
    if isinstance(prefixes, np.ndarray):
        return prefixes.astype(np.int64, copy=False)
    return np.fromiter(prefixes, dtype=np.int64)


class PrefixFilter:
    """A Bloom filter of 64-bit prefixes, sized for ``expected`` of them.

    ``may_hold`` never answers ``False`` for a prefix that was added (no false
    negatives); it answers ``True`` for about 0.3% (when built) to 2.5% (before it
    asks to be rebuilt, see :attr:`wants_rebuild`) of the prefixes it was not given.
    """

    def __init__(self, expected: int) -> None:
        wanted = max(expected, 1) * BUILD_BITS_PER_PREFIX
        self._bits_log2 = max(MIN_BITS_LOG2, (wanted - 1).bit_length())
        self._words = np.zeros((1 << self._bits_log2) // 64, dtype=np.uint64)
        self._shift = np.uint64(64 - self._bits_log2)
        # Odd multipliers, so that each hash is a bijection of the 64-bit prefix.
        self._first = np.uint64(secrets.randbits(64) | 1)
        self._second = np.uint64(secrets.randbits(64) | 1)
        self._added = 0

    @property
    def bits(self) -> int:
        return 1 << self._bits_log2

    @property
    def added(self) -> int:
        """Prefixes added so far (repeats counted)."""
        return self._added

    @property
    def wants_rebuild(self) -> bool:
        """Whether the filter holds so many prefixes that its false positives grow."""
        return self._added * REBUILD_BITS_PER_PREFIX > self.bits

    def _indices(self, prefixes: Prefixes) -> list[npt.NDArray[np.uint64]]:
        unsigned = prefixes.view(np.uint64)
        first = unsigned * self._first  # wraps modulo 2^64, as multiply-shift hashing wants
        second = (unsigned * self._second) | _ONE
        return [(first + np.uint64(i) * second) >> self._shift for i in range(HASHES)]

    def add(self, prefixes: Prefixes) -> None:
        for index in self._indices(prefixes):
            # Unbuffered: several prefixes may set bits of the same word.
            np.bitwise_or.at(self._words, index >> _WORD_SHIFT, _ONE << (index & _BIT_MASK))
        self._added += len(prefixes)

    def may_hold(self, prefixes: Prefixes) -> npt.NDArray[np.bool_]:
        """For each prefix, whether it may have been added."""
        held = np.ones(len(prefixes), dtype=np.bool_)
        for index in self._indices(prefixes):
            held &= ((self._words[index >> _WORD_SHIFT] >> (index & _BIT_MASK)) & _ONE) == _ONE
        return held

    def candidates(self, prefixes: Sequence[int]) -> list[int]:
        """The prefixes that may have been added, in their order."""
        if not prefixes:
            return []
        array = as_array(prefixes)
        return [int(p) for p in array[self.may_hold(array)]]
