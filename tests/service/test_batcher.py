"""The generic batcher and the inference thread, with a stand-in engine that records its batches.

These test the scheduling machinery on its own (no model is involved in batching); the HTTP tests run
the same machinery with the real tiny model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from service.batching import Batcher
from service.errors import QueueFull, Timeout
from service.metrics import Metrics
from service.scheduler import InferenceThread


class RecordingEngine:
    """Doubles numbers, records each batch, fails any batch that holds a negative number."""

    tasks: frozenset[str] = frozenset()  # no task decodes step by step: every batch goes through run()

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s

    def stepwise(self, task: str) -> None:
        return None

    def denoiser(self) -> None:  # no text-to-image
        return None

    def warm_up(self) -> None:
        pass

    def run(self, task: str, payloads: Sequence[Any], progress: Any = None) -> list[Any]:
        self.batches.append(list(payloads))
        time.sleep(self.delay_s)
        if any(p < 0 for p in payloads):
            raise ValueError("negative input")
        return [2 * p for p in payloads]


@pytest.fixture
def lock() -> threading.Condition:
    return threading.Condition()


def start_thread(
    engine: RecordingEngine, batchers: dict[str, Batcher[Any, Any]], lock: threading.Condition
) -> InferenceThread:
    ready = threading.Event()
    thread = InferenceThread(lambda: engine, batchers, lock, Metrics(), lambda _: ready.set(), lambda _: None)  # type: ignore[arg-type,return-value]
    thread.start()
    assert ready.wait(5)
    return thread


@pytest.fixture
def running(lock: threading.Condition) -> Iterator[tuple[RecordingEngine, Batcher[int, int]]]:
    engine = RecordingEngine()
    batcher: Batcher[int, int] = Batcher("double", max_batch_size=4, max_wait_ms=60_000, capacity=100, lock=lock)
    thread = start_thread(engine, {"double": batcher}, lock)
    yield engine, batcher
    thread.stop()
    thread.join(5)


def submit(batcher: Batcher[int, int], payloads: Sequence[int], timeout_s: float = 10.0) -> list[Any]:
    with batcher.reserve(len(payloads)) as slots:
        return [slots.submit(p, time.monotonic() + timeout_s) for p in payloads]


def test_flushes_a_full_batch_at_once(running: tuple[RecordingEngine, Batcher[int, int]]) -> None:
    engine, batcher = running  # max_wait_ms is a minute: only a full batch can run within the test
    items = submit(batcher, [1, 2, 3, 4])
    assert [item.future.result(30) for item in items] == [2, 4, 6, 8]
    assert engine.batches == [[1, 2, 3, 4]]
    assert all(item.batch_size == 4 for item in items)


def test_flushes_a_partial_batch_after_max_wait(lock: threading.Condition) -> None:
    engine = RecordingEngine()
    batcher: Batcher[int, int] = Batcher("double", max_batch_size=4, max_wait_ms=200, capacity=100, lock=lock)
    thread = start_thread(engine, {"double": batcher}, lock)
    try:
        [item] = submit(batcher, [5])
        assert item.future.result(30) == 10
        assert item.queue_s >= 0.2  # it waited for batch-mates (a lower bound: never flaky under load)
        assert engine.batches == [[5]]
    finally:
        thread.stop()
        thread.join(5)


def test_no_wait_when_idle(lock: threading.Condition) -> None:
    """With max_wait_ms=0 a lone item runs at once; batches form from what arrives while the device is busy."""
    engine = RecordingEngine(delay_s=0.2)
    batcher: Batcher[int, int] = Batcher("double", max_batch_size=8, max_wait_ms=0, capacity=100, lock=lock)
    thread = start_thread(engine, {"double": batcher}, lock)
    try:
        [first] = submit(batcher, [1])
        while not engine.batches:  # the first batch is running (it sleeps 0.2 s) ...
            time.sleep(0.001)
        later = submit(batcher, [2]) + submit(batcher, [3])  # ... while these two arrive
        assert [item.future.result(30) for item in [first, *later]] == [2, 4, 6]
        assert engine.batches == [[1], [2, 3]]
    finally:
        thread.stop()
        thread.join(5)


def test_splits_more_than_max_batch_size(lock: threading.Condition) -> None:
    engine = RecordingEngine()
    batcher: Batcher[int, int] = Batcher("double", max_batch_size=4, max_wait_ms=60_000, capacity=100, lock=lock)
    thread = start_thread(engine, {"double": batcher}, lock)
    items = submit(batcher, list(range(10)))
    assert [item.future.result(30) for item in items[:8]] == [2 * i for i in range(8)]  # two full batches
    thread.stop()  # the partial rest runs on stop, without waiting out max_wait_ms
    thread.join(30)
    assert [item.future.result(0) for item in items[8:]] == [16, 18]
    assert [len(batch) for batch in engine.batches] == [4, 4, 2]


def test_a_failing_batch_is_retried_item_by_item(running: tuple[RecordingEngine, Batcher[int, int]]) -> None:
    engine, batcher = running
    items = submit(batcher, [1, -1, 3, 4])
    assert items[0].future.result(5) == 2
    with pytest.raises(ValueError, match="negative"):
        items[1].future.result(5)
    assert [items[2].future.result(5), items[3].future.result(5)] == [6, 8]
    assert engine.batches == [[1, -1, 3, 4], [1], [-1], [3], [4]]


def test_admission_refuses_beyond_capacity(lock: threading.Condition) -> None:
    batcher: Batcher[int, int] = Batcher("double", max_batch_size=4, max_wait_ms=50, capacity=3, lock=lock)
    items = submit(batcher, [1, 2])
    with pytest.raises(QueueFull, match="queue is full") as refused, batcher.reserve(2):
        pass
    assert refused.value.headers["Retry-After"] == "1"
    with batcher.reserve(1):
        pass  # an unused reservation is given back on exit
    assert batcher.in_flight() == 2
    items[0].future.cancel()  # a finished (here: abandoned) item frees its slot
    assert batcher.in_flight() == 1


def test_abandoned_and_expired_items_are_never_computed(lock: threading.Condition) -> None:
    engine = RecordingEngine()
    batcher: Batcher[int, int] = Batcher("double", max_batch_size=8, max_wait_ms=500, capacity=100, lock=lock)
    thread = start_thread(engine, {"double": batcher}, lock)
    try:
        abandoned, kept = submit(batcher, [1, 2])
        [expired] = submit(batcher, [3], timeout_s=0.01)
        abandoned.future.cancel()
        assert kept.future.result(5) == 4
        with pytest.raises(Timeout):
            expired.future.result(5)
        assert engine.batches == [[2]]
    finally:
        thread.stop()
        thread.join(5)


def test_stop_flushes_what_is_queued(lock: threading.Condition) -> None:
    engine = RecordingEngine()
    batcher: Batcher[int, int] = Batcher("double", max_batch_size=8, max_wait_ms=60_000, capacity=100, lock=lock)
    thread = start_thread(engine, {"double": batcher}, lock)
    items = submit(batcher, [1, 2, 3])
    thread.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert [item.future.result(0) for item in items] == [2, 4, 6]


def test_tasks_are_served_oldest_item_first(lock: threading.Condition) -> None:
    engine = RecordingEngine(delay_s=0.02)
    first: Batcher[int, int] = Batcher("first", max_batch_size=2, max_wait_ms=0, capacity=100, lock=lock)
    second: Batcher[int, int] = Batcher("second", max_batch_size=2, max_wait_ms=0, capacity=100, lock=lock)
    thread = start_thread(engine, {"first": first, "second": second}, lock)
    try:
        items = submit(first, [1, 2]) + submit(first, [3]) + submit(second, [10, 20]) + submit(first, [4])
        for item in items:
            item.future.result(5)
        # [3] waited longer than [10, 20], which waited longer than [4]: no task drains before another.
        assert engine.batches == [[1, 2], [3, 4], [10, 20]] or engine.batches == [[1, 2], [3], [10, 20], [4]]
    finally:
        thread.stop()
        thread.join(5)
