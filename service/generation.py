"""Continuous batching for one stepwise model: its generation state, the request in each row, its encoder cache.

Driven by the step loop (`service.scheduler`), on the inference thread only. Sequences join between
steps (`admit`: the images encoded, or taken from the encoder cache, and the prompts prefilled), every
running sequence advances one token per `step`, a finished one answers at once and leaves, and one whose
client left or whose deadline passed is dropped (`drop_gone`) and frees its slot. Each row's updates go to
its request's stream sink, if it has one, as they come.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from model import Task
from model.api import GenerationState, StepwiseGenerator, Update
from service.batching import Item
from service.encoder_cache import EncoderCache
from service.engine import Generated, GenerationInput
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

    def __len__(self) -> int:
        return len(self.items)

    def free_for(self, task: Task) -> int:
        """How many more sequences of `task` may join now."""
        return max(0, min(self.state.free, self.limits[task] - self.tasks.count(task)))

    def admit(self, task: Task, items: Sequence[GenerationItem]) -> None:
        """Join new sequences (prefill); a batch that fails is retried one by one, so a bad one fails alone."""
        started = time.monotonic()
        try:
            self._prefill(task, items, started)
        except Exception as e:
            if len(items) == 1:
                logger.debug("a %s sequence failed to start: %r", task, e)
                _fail(items[0], e)
                return
            logger.warning("prefilling %d %s sequences failed (%r); retrying one by one", len(items), task, e)
            for item in items:
                self.admit(task, [item])
            return
        self.metrics.batch_size.labels(task).observe(len(items))
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
        self.items += items
        self.tasks += [task] * len(items)
        self._apply([*[None] * (running - len(items)), *updates])

    def step(self) -> None:
        """One token for every running sequence; the finished ones answer and leave."""
        if not self.items:
            return
        try:
            updates = self.state.step()
        except Exception as e:  # the state may be inconsistent now: fail its sequences, start a fresh one
            logger.exception("a decoding step failed; failing its %d sequences", len(self.items))
            self.fail_all(e)
            self.state = self.model.new_state(self.capacity)
            return
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

    def fail_all(self, error: BaseException) -> None:
        for item in self.items:
            _fail(item, error)
        self.items, self.tasks = [], []

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
            if item.on_update is not None:
                _deliver(item, update)
            if update.finished:
                item.finished_at = now
                if not item.future.done():
                    item.future.set_result(Generated(update.text or "", update.finish_reason, update.tokens))
            else:
                keep.append(row)
        if len(keep) < len(self.items):
            self._filter(keep)

    def _filter(self, keep: list[int]) -> None:
        self.state.filter(keep)
        self.items = [self.items[i] for i in keep]
        self.tasks = [self.tasks[i] for i in keep]


def _deliver(item: Item[Any, Any], update: Update) -> None:
    assert item.on_update is not None
    try:
        item.on_update(update)
    except Exception:  # a sink that fails (its event loop closed) must not stop the others
        logger.debug("a stream sink failed", exc_info=True)


def _fail(item: Item[Any, Any], error: BaseException) -> None:
    item.finished_at = time.monotonic()
    if not item.future.done():
        item.future.set_exception(error)
