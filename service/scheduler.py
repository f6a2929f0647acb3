"""The one inference thread: it owns the device, picks the next due batch and runs it.

The thread first loads the models and warms them up (so the device is only ever touched from here),
then loops: of all batchers with a batch due, take the one whose oldest item has waited longest, run
it through the engine under `torch.inference_mode()`, and resolve the items' futures. A batch that
raises is retried item by item, so one bad item fails alone. On `stop()` it flushes what is queued
without waiting for `max_wait_ms`, then exits.

This is the seam for continuous batching: a step-wise decoder would replace `_run_batch` with a loop
that admits new items between decoding steps; the batchers and routes would not change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from model import Task
from service.batching import Batcher, Item
from service.engine import Engine
from service.metrics import Metrics

logger = logging.getLogger(__name__)


class InferenceThread(threading.Thread):
    """Loads the engine, then runs every batch of every task, one at a time."""

    def __init__(
        self,
        load_engine: Callable[[], Engine],
        batchers: Mapping[Task, Batcher[Any, Any]],
        lock: threading.Condition,
        metrics: Metrics,
        on_ready: Callable[[Engine], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        super().__init__(name="mmserve-inference", daemon=True)
        self._load_engine = load_engine
        self._batchers = batchers
        self._lock = lock
        self._metrics = metrics
        self._on_ready = on_ready
        self._on_failure = on_failure
        self._stopping = False
        self._flushing = False  # draining: no new work will come, so nothing waits for batch-mates

    def flush(self) -> None:
        """From now on run every batch at once, without waiting for `max_wait_ms` (for draining)."""
        with self._lock:
            self._flushing = True
            self._lock.notify_all()

    def stop(self) -> None:
        """Finish every queued item, then exit (join the thread to wait for it)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def run(self) -> None:
        try:
            engine = self._load_engine()
            engine.warm_up()
        except BaseException as e:
            logger.exception("loading the model failed")
            self._on_failure(e)
            return
        self._on_ready(engine)
        try:
            while (next_batch := self._next_batch()) is not None:
                task, items = next_batch
                self._run_batch(engine, task, items)
        except BaseException as e:  # a bug in the loop itself: report unhealthy rather than hang
            logger.exception("the inference thread died")
            self._on_failure(e)
        logger.info("inference thread stopped")

    def _next_batch(self) -> tuple[Task, list[Item[Any, Any]]] | None:
        """Block until some batcher has a batch due; None once stopping and nothing is left."""
        with self._lock:
            while True:
                now = time.monotonic()
                flush_now = self._stopping or self._flushing
                due = {task: b.due_at(flush_now) for task, b in self._batchers.items()}
                ready = [task for task, at in due.items() if at is not None and at <= now]
                if ready:
                    task = min(ready, key=lambda t: self._batchers[t].oldest_enqueued_at())
                    items = self._batchers[task].take()
                    if items:
                        return task, items
                    continue  # everything taken was abandoned or expired
                if self._stopping and all(at is None for at in due.values()):
                    return None
                waits = [at - now for at in due.values() if at is not None]
                self._lock.wait(timeout=min(waits) if waits else None)

    def _run_batch(self, engine: Engine, task: str, items: list[Item[Any, Any]]) -> None:
        started = time.monotonic()
        for item in items:
            item.started_at = started
            item.batch_size = len(items)
            self._metrics.queue_duration.labels(task).observe(item.queue_s)
        self._metrics.batch_size.labels(task).observe(len(items))
        self._execute(engine, task, items)

    def _execute(self, engine: Engine, task: str, items: list[Item[Any, Any]]) -> None:
        try:
            outputs = engine.run(task, [item.payload for item in items])
        except Exception as e:
            _free_device_memory(e)
            if len(items) == 1:
                self._finish(task, items, error=e)
                return
            logger.warning("a %s batch of %d failed (%r); retrying item by item", task, len(items), e)
            for item in items:
                self._execute(engine, task, [item])
            return
        self._finish(task, items, outputs=outputs)

    def _finish(
        self,
        task: str,
        items: list[Item[Any, Any]],
        outputs: list[Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        finished = time.monotonic()
        self._metrics.inference_duration.labels(task).observe(finished - items[0].started_at)
        for i, item in enumerate(items):
            item.finished_at = finished
            if outputs is not None:
                item.future.set_result(outputs[i])
            else:
                item.future.set_exception(error or RuntimeError("no output"))


def _free_device_memory(error: BaseException) -> None:
    """After a CUDA out-of-memory error, give the cached blocks back before retrying smaller batches."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
