"""The cycle collector policy of ``serve``: survivors of young collections are frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator

import pytest

from modi_sync.collector import YOUNG_THRESHOLD, CycleCollector

from .yclient import eventually


class Node:
    """A tracked object that can take part in a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def _is_seen_by_collector(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


@pytest.fixture
async def collector() -> AsyncIterator[CycleCollector]:
    collector = CycleCollector(full_every=3600)
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()


async def test_a_survivor_of_a_young_collection_is_frozen_and_still_freed_by_refcount(
    collector: CycleCollector,
) -> None:
    node = Node()
    gc.collect(0)
    assert not _is_seen_by_collector(node)  # frozen: no collection scans it again
    gone = weakref.ref(node)
    del node
    assert gone() is None


async def test_a_cycle_that_dies_young_is_collected_as_before(collector: CycleCollector) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gc.collect(0) >= 2
    assert gone() is None


async def test_a_frozen_object_that_joins_a_garbage_cycle_waits_for_the_full_collection(
    collector: CycleCollector,
) -> None:
    a = Node()
    gc.collect(0)  # a is frozen
    b = Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect(0)
    assert gone() is not None  # the price of freezing: young collections cannot see it
    assert collector.collect_all() >= 2
    assert gone() is None


async def test_the_full_collection_runs_by_itself() -> None:
    collector = CycleCollector(full_every=0.05)
    collector.start()
    try:
        a = Node()
        gc.collect(0)
        a.other = Node()
        a.other.other = a
        gone = weakref.ref(a)
        del a
        await eventually(lambda: gone() is None, timeout=5)
    finally:
        collector.stop()


async def test_stop_gives_the_collector_back() -> None:
    before = gc.get_threshold()
    collector = CycleCollector(full_every=3600)
    collector.start()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() > 0
    collector.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert not any(cb.__self__ is collector for cb in gc.callbacks if hasattr(cb, "__self__"))
