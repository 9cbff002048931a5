"""The daemons' process helpers."""

from __future__ import annotations

import gc
import weakref

from samenloop.policies import process


class _Node:
    def __init__(self) -> None:
        self.other: object = self  # a cycle: only the collector can free it


def test_settling_the_heap_freezes_start_up_and_still_collects_what_comes_after():
    before = _Node()
    tracked = len(gc.get_objects())
    try:
        process.settle_heap()
        assert gc.get_freeze_count() >= tracked // 2  # less what was garbage already
        frozen = weakref.ref(before)
        del before
        later = _Node()
        collected = weakref.ref(later)
        del later
        gc.collect()
        assert frozen() is not None  # frozen: never collected
        assert collected() is None
    finally:
        gc.unfreeze()
