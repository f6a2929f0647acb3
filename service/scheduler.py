"""The one inference thread and its step loop: it owns the device and decides what runs next.

The thread first loads the models and warms them up (so the device is only ever touched from here),
then turns the loop. Each turn:
1. drops running sequences whose client left or whose deadline passed (they compute no more);
2. lets waiting captions, answers and transcripts join the running sequences, as far as slots allow
   (prefill; a transcript is a row like a caption, its context an audio's tokens);
3. runs one batch of another task that is due (embeddings; captions, answers and transcripts of models
   that cannot decode step by step, or of every model when `MMSERVE_SCHEDULER=static`), the one whose
   oldest item has waited longest;
4. runs one decoding step for every running sequence, and one denoising step for every running image
   (`service.denoising`; while other work shares the loop, for as many images as fit the turn's budget,
   the longest waiting first); the finished ones answer at once.
So nothing waits for a whole generation: an embedding waits at most one step and its own batch. While
sequences decode, what joins them and a whole batch are each cut to fit `MMSERVE_MAX_TURN_MS`
(`service.turn_budget`, at least one item), so the running streams wait between two tokens for about that
long at most (or one item's cost, if that is more); a transcript's audio is encoded a block per turn. When
the device is idle, whatever is queued runs now (`max_wait_ms`, by default 0, is an opt-in wait for
batch-mates). A batch that raises is retried item by item, so one bad item fails alone; one that runs out
of memory is retried in halves and caps its task's batch size for a while (`service.faults`). On `stop()`
it finishes what is queued and running without waiting for batch-mates, then exits. If the loop itself
dies, or the device fails for good (`DeviceBroken`), every admitted request is answered 503 at once.
`busy_since()` tells the watchdog (`service.watchdog`) since when the current turn has made no progress: a
turn is progress, and so is every decoding step inside a whole-batch generation (the models report them), so
a long generation that keeps stepping is never taken for a stuck device. `abort()` answers everyone 503
from another thread when the device is stuck.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import InvalidStateError
from typing import Any, Protocol

from model import Task
from service.batching import Batcher, Item
from service.denoising import Denoising
from service.encoder_cache import EncoderCache
from service.engine import STEPWISE_TASKS, Engine
from service.errors import NotReady
from service.faults import BatchCap, DeviceBroken, run_split
from service.generation import Generation
from service.metrics import Metrics
from service.turn_budget import DENOISE_STEP, TurnBudget

logger = logging.getLogger(__name__)


class Running(Protocol):
    """What the loop steps: rows that join between steps and leave when done (`Generation`, `Denoising`)."""

    def requests(self) -> Sequence[Item[Any, Any]]: ...  # every row's request, running or waiting to rejoin
    def __len__(self) -> int: ...
    def free_for(self, task: Task) -> int: ...
    def admit(self, task: Task, items: Sequence[Item[Any, Any]]) -> None: ...
    def rejoin(self) -> None: ...
    def step(self) -> None: ...
    def drop_gone(self, now: float) -> None: ...
    def fail_all(self, error: BaseException) -> None: ...


class InferenceThread(threading.Thread):
    """Loads the engine, then runs the step loop over every task's queue."""

    def __init__(
        self,
        load_engine: Callable[[], Engine],
        batchers: Mapping[Task, Batcher[Any, Any]],
        lock: threading.Condition,
        metrics: Metrics,
        on_ready: Callable[[Engine], None],
        on_failure: Callable[[BaseException], None],
        encoder_cache_bytes: int = 0,
        max_turn_ms: float = 0.0,
    ) -> None:
        super().__init__(name="mmserve-inference", daemon=True)
        self._load_engine = load_engine
        self._batchers = batchers
        self._lock = lock
        self._metrics = metrics
        self._on_ready = on_ready
        self._on_failure = on_failure
        self._cache = EncoderCache(encoder_cache_bytes, metrics.count_encoder_lookup)
        self._generations: Mapping[Task, Running] = {}  # the stepwise tasks, and the state each steps in
        self._states: list[Running] = []  # the same, each state once (captions and answers may share one)
        self._caps = {t: BatchCap(b.max_batch_size, metrics.batch_cap.labels(t).set) for t, b in batchers.items()}
        self._budget = TurnBudget(max_turn_ms)  # whole batches cut to fit a turn while sequences decode
        self._taken: list[Item[Any, Any]] = []  # the items taken this turn (answered 503 if the loop dies)
        self._busy_since: float | None = None  # the current turn's start or last step; None between turns
        self._stopping = False
        self._flushing = False  # draining: no new work will come, so nothing waits for batch-mates

    def flush(self) -> None:
        """From now on run every batch at once, without waiting for `max_wait_ms` (for draining)."""
        with self._lock:
            self._flushing = True
            self._lock.notify_all()

    def stop(self) -> None:
        """Finish every queued and running item, then exit (join the thread to wait for it)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def run(self) -> None:
        try:
            engine = self._load_engine()
            engine.warm_up()
            self._build_generations(engine)
            self._build_denoising(engine)
        except BaseException as e:  # logged, in one line, by on_failure
            self._on_failure(e)
            return
        self._on_ready(engine)
        try:
            while self._wait_for_work():
                self._busy_since = time.monotonic()
                self._turn(engine)
                self._busy_since, self._taken = None, []
        except DeviceBroken as e:
            logger.exception("the device failed; the server is unhealthy")
            self._on_failure(e)
            self._fail_everything(NotReady("the device failed; the server is unhealthy", retry_after_s=1))
        except BaseException as e:  # a bug in the loop itself: report unhealthy and answer everyone now
            logger.exception("the inference thread died")
            self._on_failure(e)
            self._fail_everything(NotReady("the inference thread stopped; the server is unhealthy", retry_after_s=1))
        finally:
            self._busy_since = None  # a dead loop is not a stuck step (the watchdog also sees the thread gone)
        logger.info("inference thread stopped")

    def busy_since(self) -> float | None:
        """When the turn running now started or last made progress (monotonic seconds), or None when the loop
        is waiting for work."""
        return self._busy_since

    def _progressed(self) -> None:
        """A decoding step inside the running turn finished (called by the model, on this thread)."""
        if self._busy_since is not None:
            self._busy_since = time.monotonic()

    def abort(self, error: BaseException) -> None:
        """From another thread (the watchdog): answer every admitted item with `error` now. The loop may be
        stuck in the device; whatever it finishes later finds its items answered already."""
        for batcher in self._batchers.values():
            batcher.fail_pending(error)
        running = [item for g in self._states for item in g.requests()]
        for item in [*self._taken, *running]:
            item.fail(error)

    def running(self) -> int:
        """Sequences decoding now, or waiting to be prefilled again after an out-of-memory step (the metric)."""
        return sum(len(g) for g in self._states if not isinstance(g, Denoising))  # images: their own gauge

    # The loop.
    def _build_generations(self, engine: Engine) -> None:
        """One generation state per stepwise model; its captions, answers and transcripts share it."""
        by_model: dict[int, Generation] = {}
        generations: dict[Task, Generation] = {}
        for task in STEPWISE_TASKS:
            model = engine.stepwise(task) if task in engine.tasks else None
            if model is None:
                continue
            tasks = [t for t in STEPWISE_TASKS if t in engine.tasks and engine.stepwise(t) is model]
            if id(model) not in by_model:
                limits: dict[Task, int] = {t: self._batchers[t].max_batch_size for t in tasks}
                by_model[id(model)] = Generation(model, limits, self._cache, self._metrics)
            generations[task] = by_model[id(model)]
        self._generations, self._states = dict(generations), list(by_model.values())

    def _build_denoising(self, engine: Engine) -> None:
        """Images denoise step by step, as one more running state (unless whole requests run as batches)."""
        model = engine.denoiser()
        if model is not None and "text_to_image" in engine.tasks:
            capacity = self._batchers["text_to_image"].max_batch_size
            denoising = Denoising(model, capacity, self._metrics)
            self._generations = {**self._generations, "text_to_image": denoising}
            self._states = [*self._states, denoising]

    def _wait_for_work(self) -> bool:
        """Block until there is something to do; False once stopping and nothing is left."""
        with self._lock:
            while True:
                if any(len(g) for g in self._states):
                    return True
                now = time.monotonic()
                due = self._due()
                if any(at <= now for at in due.values()):
                    return True
                if self._stopping and not due:
                    return False
                self._lock.wait(timeout=min((at - now for at in due.values()), default=None))

    def _due(self) -> dict[Task, float]:
        """When each task with waiting items is due to run."""
        flush_now = self._stopping or self._flushing
        due = {task: b.due_at(flush_now) for task, b in self._batchers.items()}
        return {task: at for task, at in due.items() if at is not None}

    def _turn(self, engine: Engine) -> None:
        now = time.monotonic()
        others = self._other_work()  # what this turn takes runs beside the images' step
        for generation in self._states:
            generation.drop_gone(now)
            generation.rejoin()  # sequences put back after an out-of-memory step go before new ones
        due = {task: at for task, at in self._due().items() if at <= now}
        for task in sorted(due, key=lambda t: self._batchers[t].oldest_enqueued_at()):
            joining = self._generations.get(task)
            if joining is not None and (room := joining.free_for(task)):
                items = self._batchers[task].take(self._budget.items(task, room) if self.running() else room)
                self._taken += items
                if items:
                    started = time.monotonic()
                    joining.admit(task, items)
                    self._budget.observe(task, time.monotonic() - started, len(items))
        batch_tasks = [task for task in due if task not in self._generations]
        if batch_tasks:
            task = min(batch_tasks, key=lambda t: self._batchers[t].oldest_enqueued_at())
            limit = self._caps[task].limit
            items = self._batchers[task].take(self._budget.items(task, limit) if self.running() else limit)
            self._taken += items
            if items:
                self._run_batch(engine, task, items)
        for generation in self._states:
            if isinstance(generation, Denoising):
                self._denoise(generation, others)
            else:
                generation.step()

    def _denoise(self, denoising: Denoising, others: bool) -> None:
        """One denoising step: of every running image, or, while other work shares the loop (`others`: some
        ran in this turn), of as many as fit the turn's budget (the longest waiting first)."""
        rows = len(denoising.rows)
        if not rows:
            return
        now = time.monotonic()
        if others or self._other_work():
            self._budget.saw_other_work(now)
        limit = self._budget.items(DENOISE_STEP, rows) if self._budget.shared(now) else rows
        denoising.step(limit)
        self._budget.observe(DENOISE_STEP, time.monotonic() - now, limit)

    def _other_work(self) -> bool:
        """Whether work beside the images waits (queued) or runs (sequences decoding)."""
        return bool(self.running()) or any(b.pending() for t, b in self._batchers.items() if t != "text_to_image")

    # Whole batches.
    def _run_batch(self, engine: Engine, task: Task, items: list[Item[Any, Any]]) -> None:
        started = time.monotonic()
        for item in items:
            item.started_at = started
            item.batch_size = len(items)
            self._metrics.queue_duration.labels(task).observe(item.queue_s)
        self._metrics.batch_size.labels(task).observe(len(items))
        self._execute(engine, task, items)
        self._budget.observe(task, time.monotonic() - started, len(items))

    def _execute(self, engine: Engine, task: Task, items: list[Item[Any, Any]]) -> None:
        """Run the batch; out of memory, its halves; failing otherwise, each item alone (`run_split`)."""
        cap = self._caps[task]

        def attempt(part: Sequence[Item[Any, Any]]) -> None:
            outputs = engine.run(task, [item.payload for item in part], self._progressed)
            cap.fitted()
            self._finish(task, part, outputs=outputs)

        def out_of_memory(size: int) -> None:
            self._metrics.out_of_memory.labels(task).inc()
            cap.out_of_memory(size)

        run_split(items, attempt, lambda item, error: self._finish(task, [item], error=error), out_of_memory, task)

    def _finish(
        self,
        task: str,
        items: Sequence[Item[Any, Any]],
        outputs: list[Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        finished = time.monotonic()
        self._metrics.inference_duration.labels(task).observe(finished - items[0].started_at)
        for i, item in enumerate(items):
            item.finished_at = item.first_token_at = finished
            with contextlib.suppress(InvalidStateError):  # answered already (the watchdog gave up on it)
                if outputs is not None:
                    item.future.set_result(outputs[i])
                else:
                    item.future.set_exception(error or RuntimeError("no output"))

    def _fail_everything(self, error: BaseException) -> None:
        """Answer every running and queued item with `error` (the loop is gone; nobody else will)."""
        for generation in self._states:
            generation.fail_all(error)
        for batcher in self._batchers.values():
            batcher.fail_pending(error)
        for item in list(self._taken):  # taken from a queue this turn, running in a batch or being prefilled
            item.fail(error)
