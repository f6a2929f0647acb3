"""The generic dynamic batcher: one instance per task, consumed by the one inference thread.

A `Batcher` is a queue with a flush policy. The runtime first `reserve()`s room (429 when the task is at
capacity, before any decoding), then `submit()`s prepared payloads; each gets a `concurrent.futures.Future`
(and, when streamed, a sink for its updates). The inference thread asks each batcher when its next batch
is due (`due_at`: at once by default, as TEI and vLLM do: a batch is whatever arrived while the device was
busy; with `max_wait_ms` > 0, when `max_batch_size` items wait or the oldest has waited that long) and
`take()`s it, skipping items whose client gave up or whose deadline passed. Which batch runs next, and
how, is the scheduler's business (`service.scheduler`).

All state is guarded by one lock shared by every batcher and the scheduler (a `threading.Condition`),
so that a submit wakes the inference thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import ClientDisconnected, QueueFull, Timeout

In = TypeVar("In")
Out = TypeVar("Out")

RETRY_AFTER_S = 1  # what a 429 tells the client to wait; batches take milliseconds, queues drain fast


@dataclass(eq=False)
class Item(Generic[In, Out]):
    """One unit of work (an image to caption, one text of an /embed call) and its timings."""

    payload: In
    deadline: float  # time.monotonic() after which nobody wants the answer
    future: Future[Out] = field(default_factory=Future)
    on_update: Callable[[Any], None] | None = None  # streaming: called on the inference thread per step
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0  # set by the inference thread when its batch (or prefill) starts
    first_token_at: float = 0.0
    finished_at: float = 0.0
    batch_size: int = 0  # how many items its batch held (generation: sequences running when it joined)
    abandoned: bool = False  # its request is gone (client left, or answered with an error already)

    def abandon(self) -> None:
        """Nobody wants the answer: a queued item is skipped, a running one dropped at the next step."""
        self.abandoned = True
        self.future.cancel()  # only succeeds while queued; a running item is failed by the scheduler

    def fail(self, error: BaseException) -> None:
        """Answer with `error`, unless answered already (safe from any thread: the watchdog's too). The
        finishing time is set first: the future's callbacks (a stream's end) read it."""
        if self.future.done():
            return
        self.finished_at = time.monotonic()
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(error)

    def gone(self, now: float) -> BaseException | None:
        """Why this running item should be dropped now, or None while its request still wants it."""
        if self.abandoned:
            return ClientDisconnected("the client disconnected")
        if self.deadline <= now:
            return Timeout("the request timed out while running")
        return None

    @property
    def queue_s(self) -> float:
        return self.started_at - self.enqueued_at

    @property
    def inference_s(self) -> float:
        return self.finished_at - self.started_at


class Reservation(Generic[In, Out]):
    """Room for up to `count` items in a batcher; what is not submitted is given back on exit."""

    def __init__(self, batcher: Batcher[In, Out], count: int) -> None:
        self._batcher = batcher
        self._unused = count

    def submit(self, payload: In, deadline: float, on_update: Callable[[Any], None] | None = None) -> Item[In, Out]:
        """Queue one payload in a reserved slot; the slot is freed when its future is done."""
        if self._unused <= 0:
            raise RuntimeError("more items submitted than reserved")
        self._unused -= 1
        return self._batcher._put(Item(payload, deadline, on_update=on_update))

    def _release_unused(self) -> None:
        self._batcher._release(self._unused)
        self._unused = 0


class Batcher(Generic[In, Out]):
    """A bounded queue of items for one task, handed out in batches."""

    def __init__(
        self, task: str, max_batch_size: int, max_wait_ms: float, capacity: int, lock: threading.Condition
    ) -> None:
        self.task = task
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.capacity = capacity
        self._lock = lock
        self._pending: deque[Item[In, Out]] = deque()
        self._reserved = 0  # admitted and not finished: being decoded, waiting or running

    @contextmanager
    def reserve(self, count: int = 1) -> Iterator[Reservation[In, Out]]:
        """Admission: room for `count` items, or `QueueFull` at once."""
        with self._lock:
            if self._reserved + count > self.capacity:
                raise QueueFull(
                    f"the {self.task} queue is full ({self.capacity} requests); retry shortly",
                    retry_after_s=RETRY_AFTER_S,
                )
            self._reserved += count
        reservation = Reservation(self, count)
        try:
            yield reservation
        finally:
            reservation._release_unused()

    def pending(self) -> int:
        """Items waiting for a batch (the queue-size metric)."""
        return len(self._pending)

    def in_flight(self) -> int:
        """Items admitted and not yet finished."""
        return self._reserved

    def due_at(self, flush_now: bool = False) -> float | None:
        """When the next batch should be taken (monotonic seconds), or None when nothing waits."""
        with self._lock:
            if not self._pending:
                return None
            oldest = self._pending[0].enqueued_at
            if flush_now or self.max_wait_s <= 0 or len(self._pending) >= self.max_batch_size:
                return oldest
            return oldest + self.max_wait_s

    def oldest_enqueued_at(self) -> float:
        with self._lock:
            return self._pending[0].enqueued_at if self._pending else float("inf")

    def take(self, limit: int | None = None) -> list[Item[In, Out]]:
        """Up to `max_batch_size` (or `limit`) live items, marked running; abandoned and expired ones dropped."""
        batch: list[Item[In, Out]] = []
        expired: list[Item[In, Out]] = []
        size = self.max_batch_size if limit is None else min(limit, self.max_batch_size)
        with self._lock:
            now = time.monotonic()
            while self._pending and len(batch) < size:
                item = self._pending.popleft()
                if item.deadline <= now:
                    expired.append(item)
                elif item.future.set_running_or_notify_cancel():  # False: cancelled by its client
                    if item.abandoned:  # abandoned between the cancel and now: drop it as it is
                        item.future.set_exception(ClientDisconnected("the client disconnected"))
                    else:
                        batch.append(item)
        for item in expired:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(Timeout("the request timed out while waiting in the queue"))
        return batch

    def fail_pending(self, error: BaseException) -> None:
        """Answer every waiting item with `error` (the inference thread is gone)."""
        with self._lock:
            waiting, self._pending = list(self._pending), deque()
        for item in waiting:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _put(self, item: Item[In, Out]) -> Item[In, Out]:
        item.future.add_done_callback(lambda _: self._release(1))
        with self._lock:
            self._pending.append(item)
            self._lock.notify_all()
        return item

    def _release(self, count: int) -> None:
        if count:
            with self._lock:
                self._reserved -= count
                self._lock.notify_all()
