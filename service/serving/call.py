"""One request's life as serving sees it: its task label, deadline, client, timings; counted once, when it ends.

A `Call` is made when a request reaches serving and ended exactly once: by the request's answer (or error),
or, for a stream, when the stream ends (its last update, an error, or its client leaving). Its task label
may change while it runs (a JSON /embed is known to be an image embedding only once read). The access log
reads its task and timings (`service.logs`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from model import Task
from service.batching import Item
from service.errors import ClientDisconnected, Timeout, status_of
from service.logs import attach as attach_to_request_log
from service.metrics import Metrics
from service.schemas import Timings

Disconnected = Callable[[], Awaitable[None]]  # returns when the client has gone (reads no body)


class Call:
    """One request: its task label, start, deadline and decode time; `end(status)` counts it (once)."""

    def __init__(self, task: Task, metrics: Metrics, timeout_s: float, client: Disconnected | None) -> None:
        self.task = task
        self.started = time.monotonic()
        self.timeout_s = timeout_s
        self.deadline = self.started + timeout_s
        self.client = client
        self.decode_s = 0.0
        self.timings: Timings | None = None  # set by `time()`, read by the request's log line
        self.streaming = False  # a stream owns the end now (its last update, an error, its client leaving)
        self._metrics = metrics
        self._ended = False
        attach_to_request_log(self)

    def end(self, status: int) -> None:
        """Count the request with its outcome and duration (later calls are no-ops)."""
        if self._ended:
            return
        self._ended = True
        self._metrics.requests.labels(self.task, str(status)).inc()
        self._metrics.request_duration.labels(self.task).observe(time.monotonic() - self.started)

    def timeout(self) -> Timeout:
        return Timeout(f"the request did not complete within {self.timeout_s:g} s")

    def left_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def until(self, waiters: Sequence[asyncio.Future[Any]]) -> None:
        """Until every waiter is done; the first error raised, 504 at the deadline, 499 when the client leaves.
        Waiters still pending when it raises are cancelled."""
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(self.client()) if self.client else loop.create_future()
        pending: set[asyncio.Future[Any]] = set(waiters)
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending | {watcher}, timeout=self.left_s(), return_when=asyncio.FIRST_COMPLETED
                )
                if watcher in done:
                    raise ClientDisconnected("the client disconnected")
                if not done:
                    raise self.timeout()
                pending.discard(watcher)
                for waiter in done:
                    waiter.result()  # raises the waiter's error
        finally:
            if watcher.done() and not watcher.cancelled():
                watcher.exception()  # seen (a receive that failed means the client is gone, nothing to log)
            watcher.cancel()
            for waiter in pending:
                waiter.cancel()

    def time(self, items: Sequence[Item[Any, Any]], earlier: Sequence[Item[Any, Any]] = ()) -> Timings:
        """The response's timings; with several items the slowest of each phase. `earlier`: the items of a step
        that ran before (a spoken question's transcription), whose queue and inference times add to these. No items
        (a long recording with no speech): zeros but for the decode and total times."""
        now = time.monotonic()
        phases = [_phases(item, now) for item in items]
        before = [_phases(item, now) for item in earlier]
        self.timings = Timings(
            queue_ms=_ms(max((q for q, _ in phases), default=0.0) + sum(q for q, _ in before)),
            inference_ms=_ms(max((i for _, i in phases), default=0.0) + sum(i for _, i in before)),
            decode_ms=_ms(self.decode_s),
            total_ms=_ms(now - self.started),
            batch_size=max((item.batch_size for item in items), default=0),  # no items: nothing to hear
        )
        return self.timings


def ended_status(error: BaseException) -> int:
    """The status a request that raised `error` is counted with: a cancelled one's client has gone (499)."""
    if isinstance(error, asyncio.CancelledError):
        return ClientDisconnected.status_code
    return status_of(error)


def _phases(item: Item[Any, Any], now: float) -> tuple[float, float]:
    """An item's queue and inference seconds, never negative: a phase not yet stamped ends now (the final
    update can reach its stream just before the inference thread stamps `finished_at`)."""
    started = item.started_at or now
    finished = item.finished_at if item.finished_at >= started else now
    return max(0.0, started - item.enqueued_at), max(0.0, finished - started)


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000, 3)
