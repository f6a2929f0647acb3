"""Continuous batching of text-to-image: the denoising state, the request in each row.

Driven by the step loop (`service.scheduler`), on the inference thread only, exactly as `service.generation`
drives captions: images join between steps (`admit`: their prompts encoded, their noise drawn from their
own seeds), every running image advances one denoising step per `step` (one batched UNet call, each row at
its own timestep and guidance; or, when the loop says how many fit its turn, `step(limit)`, the images
that have waited longest since their last step, so that each keeps advancing, to the same image), a
finished one is decoded and answered at once (`GeneratedImage`) and leaves, and one whose client left or
whose deadline passed is dropped (`drop_gone`) and frees its row. Each row's `ImageUpdate`s (step i of N,
and a preview when one was due) go to its request's sink, if it has one, as they come.

Faults (`service.faults`): a join that runs out of memory is retried in halves (an image that does not fit
alone fails with 507); a step that runs out of memory puts every running image back to start again (its
seed makes the same image; the updates a stream has had are not sent twice) and halves the cap on
running images, which doubles back after `GROW_AFTER_S` seconds without out-of-memory. A broken device
fails every image with 503 and stops the loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import InvalidStateError
from dataclasses import dataclass

from model import Task
from model.api import DenoisingState, ImageGenerator, ImageSpec, ImageUpdate
from service.batching import Item
from service.engine import GeneratedImage
from service.errors import NotReady, OutOfMemory
from service.faults import BatchCap, DeviceBroken, free_device_memory, run_split
from service.metrics import Metrics
from service.running import Row, RunningRows

logger = logging.getLogger(__name__)

TASK: Task = "text_to_image"
ImageItem = Item[ImageSpec, GeneratedImage]


@dataclass(eq=False)
class ImageRow(Row):
    """A running image, and since which step of the state it has waited for its next one."""

    waiting_since: int = 0  # the state's step count at its last step (or its join): the lowest steps first


class Denoising(RunningRows[DenoisingState, ImageRow]):
    """The running images of one text-to-image model."""

    what = "images"

    def __init__(self, model: ImageGenerator, capacity: int, metrics: Metrics) -> None:
        super().__init__(lambda: model.new_state(capacity))
        self.model = model
        self.capacity = capacity
        self.metrics = metrics
        self.cap = BatchCap(capacity, metrics.batch_cap.labels("denoise_step").set)  # running images
        metrics.running_images.set_function(lambda: len(self))
        self.steps = 0  # steps the state has taken (of all its rows or some), for `waiting_since`

    def free_for(self, task: Task) -> int:
        """How many more images may join now."""
        return max(0, min(self.capacity - len(self.rows), self.cap.limit - len(self.rows)))

    def rejoin(self) -> None:
        """Let images put back after an out-of-memory step join again, oldest first, as room allows."""
        room = self.free_for(TASK)
        if self.rejoining and room:
            batch, self.rejoining = self.rejoining[:room], self.rejoining[room:]
            self._join_all(batch)

    def admit(self, task: Task, items: Sequence[ImageItem]) -> None:
        """Join new images. A join out of memory is retried in halves, one that fails otherwise image by
        image, so a bad one fails alone; a broken device raises `DeviceBroken`."""
        self._join_all([ImageRow(item, TASK) for item in items])

    def step(self, limit: int | None = None) -> None:
        """One denoising step for at most `limit` running images (all when None; at least one): those that
        have waited longest since their last step, the earliest to arrive first among equals, so that every
        image keeps advancing."""
        if limit is None or limit >= len(self.rows):
            self._step(self.rows, lambda: self.state.step())
            return
        order = sorted(range(len(self.rows)), key=lambda i: (self.rows[i].waiting_since, i))
        indices = sorted(order[: max(1, limit)])
        self._step([self.rows[i] for i in indices], lambda: self.state.step(indices))

    def _join_all(self, rows: Sequence[ImageRow]) -> None:
        started = time.monotonic()

        def out_of_memory(size: int) -> None:
            self.metrics.out_of_memory.labels(TASK).inc()
            self.cap.out_of_memory(len(self.rows) + size)

        try:
            run_split(
                rows, lambda part: self._join(part, started), lambda row, e: row.item.fail(e), out_of_memory, TASK
            )
        except DeviceBroken:
            for row in rows:
                row.item.fail(NotReady("the device failed; the server is unhealthy", retry_after_s=1))
            raise

    def _join(self, rows: Sequence[ImageRow], started: float) -> None:
        self.state.join([row.item.payload for row in rows])
        running = len(self.rows) + len(rows)
        for row in rows:
            row.waiting_since = self.steps
            item = row.item
            item.started_at = item.started_at or started  # a rerun keeps its first start
            item.batch_size = max(item.batch_size, running)
            self.metrics.queue_duration.labels(TASK).observe(item.queue_s)
        self.metrics.batch_size.labels(TASK).observe(len(rows))
        self.rows += rows

    def _out_of_memory(self) -> None:
        """Every running image leaves the state, to start again (`rejoin`), and the cap is halved; an image
        that ran alone fails (507)."""
        running = len(self.rows)
        logger.warning("a denoising step of %d images ran out of memory; starting them again", running)
        self.metrics.out_of_memory.labels("denoise_step").inc()
        self.cap.out_of_memory(running)
        if running == 1:  # it ran alone: it will never fit
            self.rows[0].item.fail(OutOfMemory("the image does not fit in the device's memory, even alone"))
        else:
            self.rejoining = [*self.rows, *self.rejoining]
        self._keep([])
        free_device_memory()

    def _stepped(self, rows: list[ImageRow], updates: Sequence[ImageUpdate]) -> None:
        """Each row's update to its stream (progress not sent twice after a rerun); finished images answered."""
        self.cap.fitted()
        self.steps += 1
        self.metrics.denoise_steps.inc()
        self.metrics.batch_size.labels("denoise_step").observe(len(updates))
        now = time.monotonic()
        finished = set()
        for row, update in zip(rows, updates, strict=True):
            row.waiting_since = self.steps
            item = row.item
            item.batch_size = max(item.batch_size, len(updates))
            if not item.first_token_at:
                item.first_token_at = now  # its first step: what a stream shows first
            self._tell(row, update, update.step, update.finished)
            if update.finished:
                assert update.image is not None
                item.finished_at = now
                self.metrics.images_generated.inc()
                self.metrics.image_duration.observe(now - item.started_at)
                self.metrics.inference_duration.labels(TASK).observe(now - item.started_at)
                with contextlib.suppress(InvalidStateError):  # answered already (by the watchdog)
                    item.future.set_result(GeneratedImage.of(item.payload, update.image))
                finished.add(row)
        if finished:
            self._keep([row for row in self.rows if row not in finished])
