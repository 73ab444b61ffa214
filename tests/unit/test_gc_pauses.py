"""pgbust/gc_pauses.py: collections timed per generation, the start-up heap frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram

from pgbust import gc_pauses
from pgbust.gc_pauses import GC_PAUSE_BUCKETS, GcPauses, freeze_startup_heap

REGISTRY = CollectorRegistry()
HISTOGRAM = Histogram(
    "t_gc_pause_seconds", "t", ["generation"], buckets=GC_PAUSE_BUCKETS, registry=REGISTRY
)


@pytest.fixture
def histogram() -> Iterator[Histogram]:
    """Automatic collections are off meanwhile: only the test's own are counted."""
    HISTOGRAM.clear()
    gc.disable()
    try:
        yield HISTOGRAM
    finally:
        gc.enable()


def count(histogram: Histogram, generation: str) -> float:
    value = REGISTRY.get_sample_value("t_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's heap goes back to the collector


def test_every_collection_is_timed_under_its_generation(histogram: Histogram) -> None:
    pauses = GcPauses(histogram)
    pauses.install()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.remove()
    assert count(histogram, "2") == 2
    assert count(histogram, "0") == 1
    timed = count(histogram, "2")
    gc.collect(2)  # removed: no longer timed
    assert count(histogram, "2") == timed


def test_installing_twice_times_each_collection_once(histogram: Histogram) -> None:
    pauses = GcPauses(histogram)
    pauses.install()
    pauses.install()
    try:
        gc.collect(1)
    finally:
        pauses.remove()
    assert count(histogram, "1") == 1
    assert pauses._callback not in gc.callbacks


def test_freezing_moves_every_live_object_out_of_the_collectors_reach(unfrozen: None) -> None:
    gc_pauses._frozen = False
    survivor = [object()]  # alive now: frozen with the rest
    frozen = freeze_startup_heap()
    assert frozen == gc.get_freeze_count() > 1000
    assert not any(o is survivor for o in gc.get_objects())
    made_later = [object()]
    assert any(o is made_later for o in gc.get_objects())


def test_only_the_first_freeze_of_a_process_freezes(unfrozen: None) -> None:
    gc_pauses._frozen = False
    first = freeze_startup_heap()
    made_later = [object()]
    assert freeze_startup_heap() == first  # a second call takes nothing more
    assert any(o is made_later for o in gc.get_objects())
