"""Continuous batching for one stepwise model: its generation state, the request in each row, its encoder cache.

Driven by the step loop (`service.scheduler`), on the inference thread only. Sequences join between
steps (`admit`: the images encoded, or taken from the encoder cache, and the prompts prefilled), every
running sequence advances one token per `step`, a finished one answers at once and leaves, and one whose
client left or whose deadline passed is dropped (`drop_gone`) and frees its slot. Each row's updates go to
its request's stream sink, if it has one, as they come.

Faults (`service.faults`): a prefill that runs out of memory is retried in halves (one sequence that does
not fit alone fails with 507); a decoding step that runs out of memory puts every running sequence back to
be prefilled again from the start (greedy decoding is deterministic, so each produces the same tokens; the
updates a stream has already had are not sent twice) and halves the cap on running sequences, which grows
back slowly. A broken device fails every sequence with 503 and stops the loop (`DeviceBroken`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import InvalidStateError
from typing import Any

from model import Task
from model.api import GenerationState, StepwiseGenerator, Update
from service.batching import Item
from service.encoder_cache import EncoderCache
from service.engine import Generated, GenerationInput
from service.errors import NotReady, OutOfMemory
from service.faults import BatchCap, DeviceBroken, free_device_memory, is_device_broken, is_out_of_memory, run_split
from service.metrics import Metrics

logger = logging.getLogger(__name__)

GenerationItem = Item[GenerationInput, Generated]


class Generation:
    """The running sequences of one model (captions and answers share it when one model does both)."""

    def __init__(
        self,
        model: StepwiseGenerator,
        limits: Mapping[Task, int],
        cache: EncoderCache,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.limits = dict(limits)  # the most sequences of each task running at once
        self.capacity = sum(self.limits.values())
        self.cache = cache
        self.metrics = metrics
        self.state: GenerationState = model.new_state(self.capacity)
        self.items: list[GenerationItem] = []  # row i's request
        self.tasks: list[Task] = []  # row i's task
        self.cap = BatchCap(self.capacity, metrics.batch_cap.labels("decode_step").set)  # running sequences
        self.rejoining: list[tuple[Task, GenerationItem]] = []  # put back after out-of-memory, oldest first
        self.delivered: dict[GenerationItem, int] = {}  # updates each stream has had (not sent twice on a rerun)

    def __len__(self) -> int:
        return len(self.items) + len(self.rejoining)

    def free_for(self, task: Task) -> int:
        """How many more sequences of `task` may join now."""
        room = min(self.state.free, self.cap.limit - len(self.items), self.limits[task] - self.tasks.count(task))
        return max(0, room)

    def rejoin(self) -> None:
        """Let sequences put back after an out-of-memory step join again, oldest first, as room allows."""
        while self.rejoining:
            task = self.rejoining[0][0]
            room = self.free_for(task)
            batch = [item for t, item in self.rejoining if t == task][:room]
            if not batch:
                return
            self.rejoining = [(t, item) for t, item in self.rejoining if item not in batch]
            self.admit(task, batch)

    def admit(self, task: Task, items: Sequence[GenerationItem]) -> None:
        """Join new sequences (prefill). A batch out of memory is retried in halves, one that fails otherwise
        one by one, so a bad sequence fails alone; a broken device raises `DeviceBroken`."""
        started = time.monotonic()

        def out_of_memory(size: int) -> None:
            self.metrics.out_of_memory.labels(task).inc()
            self.cap.out_of_memory(len(self.items) + size)

        try:
            run_split(items, lambda part: self._prefill(task, part, started), _fail, out_of_memory, task)
        except DeviceBroken:
            for item in items:
                _fail(item, NotReady("the device failed; the server is unhealthy", retry_after_s=1))
            raise
        self.metrics.inference_duration.labels(task).observe(time.monotonic() - started)

    def _prefill(self, task: Task, items: Sequence[GenerationItem], started: float) -> None:
        payloads = [item.payload for item in items]
        images = self.cache.get_or_compute(
            [p.image_key for p in payloads],
            lambda missing: self.model.encode_images([payloads[i].image for i in missing]),
        )
        updates = self.state.prefill([p.spec for p in payloads], images)
        running = len(self.items) + len(items)
        for item in items:
            item.started_at, item.batch_size = started, running
            self.metrics.queue_duration.labels(task).observe(item.queue_s)
        self.metrics.batch_size.labels(task).observe(len(items))
        self.items += items
        self.tasks += [task] * len(items)
        self._apply([*[None] * (running - len(items)), *updates])

    def step(self) -> None:
        """One token for every running sequence; the finished ones answer and leave."""
        if not self.items:
            return
        try:
            updates = self.state.step()
        except Exception as e:
            if is_device_broken(e):
                self.fail_all(NotReady("the device failed; the server is unhealthy", retry_after_s=1))
                raise DeviceBroken(f"the device failed: {e}") from e
            if not is_out_of_memory(e):  # the state may be inconsistent now: fail its sequences, start afresh
                logger.exception("a decoding step failed; failing its %d sequences", len(self.items))
                self.fail_all(e)
                self.state = self.model.new_state(self.capacity)
                return
        else:
            self._stepped(updates)
            return
        # Out of memory, outside the except block (its traceback no longer holds the step's tensors).
        self._put_back_all()
        free_device_memory()

    def _put_back_all(self) -> None:
        """Every running sequence leaves the state, to be prefilled again (`rejoin`), and the cap is halved;
        a sequence that ran alone fails (507)."""
        running = len(self.items)
        logger.warning("a decoding step of %d sequences ran out of memory; prefilling them again", running)
        self.metrics.out_of_memory.labels("decode_step").inc()
        self.cap.out_of_memory(running)
        if running == 1:  # it ran alone: it will never fit
            _fail(self.items[0], OutOfMemory("the sequence does not fit in the device's memory, even alone"))
            self.delivered.pop(self.items[0], None)
        else:
            self.rejoining = [*zip(self.tasks, self.items, strict=True), *self.rejoining]
        self.items, self.tasks = [], []
        self.state.filter([])  # no rows: whatever the failed step left in their slots is never read again

    def _stepped(self, updates: Sequence[Update]) -> None:
        self.cap.fitted()
        self.metrics.decode_steps.inc()
        self.metrics.batch_size.labels("decode_step").observe(len(updates))
        for item in self.items:  # what a response reports: the most sequences it decoded with
            item.batch_size = max(item.batch_size, len(updates))
        self._apply(updates)

    def drop_gone(self, now: float) -> None:
        """Drop the sequences nobody waits for any more (client gone, deadline passed): they compute no more."""
        keep = []
        for row, item in enumerate(self.items):
            reason = item.gone(now)
            if reason is None:
                keep.append(row)
            else:
                _fail(item, reason)
        if len(keep) < len(self.items):
            self._filter(keep)
        rejoining = []
        for task, item in self.rejoining:
            if (reason := item.gone(now)) is None:
                rejoining.append((task, item))
            else:
                _fail(item, reason)
                self.delivered.pop(item, None)
        self.rejoining = rejoining

    def fail_all(self, error: BaseException) -> None:
        """Answer every running and rejoining sequence with `error`; the state's rows are left to the caller."""
        for item in [*self.items, *(item for _, item in self.rejoining)]:
            _fail(item, error)
        self.items, self.tasks, self.rejoining, self.delivered = [], [], [], {}

    def _apply(self, updates: Sequence[Update | None]) -> None:
        """Deliver each row's update (None: no news for that row); resolve and remove the finished."""
        now = time.monotonic()
        keep = []
        for row, (item, task, update) in enumerate(zip(self.items, self.tasks, updates, strict=True)):
            if update is None:
                keep.append(row)
                continue
            if not item.first_token_at:
                item.first_token_at = now
                self.metrics.time_to_first_token.labels(task).observe(now - item.enqueued_at)
            if item.on_update is not None and (update.finished or update.tokens > self.delivered.get(item, 0)):
                _deliver(item, update)
                self.delivered[item] = update.tokens
            if update.finished:
                item.finished_at = now
                with contextlib.suppress(InvalidStateError):  # answered already (by the watchdog)
                    item.future.set_result(Generated(update.text or "", update.finish_reason, update.tokens))
            else:
                keep.append(row)
        if len(keep) < len(self.items):
            self._filter(keep)

    def _filter(self, keep: list[int]) -> None:
        self.state.filter(keep)
        self.items = [self.items[i] for i in keep]
        self.tasks = [self.tasks[i] for i in keep]
        alive = {*self.items, *(item for _, item in self.rejoining)}
        self.delivered = {item: n for item, n in self.delivered.items() if item in alive}


def _deliver(item: Item[Any, Any], update: Update) -> None:
    assert item.on_update is not None
    try:
        item.on_update(update)
    except Exception:  # a sink that fails (its event loop closed) must not stop the others
        logger.debug("a stream sink failed", exc_info=True)


def _fail(item: Item[Any, Any], error: BaseException) -> None:
    item.fail(error)
