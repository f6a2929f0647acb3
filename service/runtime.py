"""The running service: its lifecycle state, the per-task batchers, the inference thread, the decode pool.

States: `loading` (the inference thread is loading and warming up the models) → `ok` → `draining`
(shutdown: nothing new is admitted, what was accepted finishes) ; `unhealthy` when loading failed, the
inference thread died, the device failed (a sticky error in a batch, or in `/health`'s device check) or
is stuck (the watchdog: a turn ran over `MMSERVE_STEP_TIMEOUT_S`); every admitted request is then
answered 503 at once. Routes talk only to the runtime: `admit` (503 / 501 / 429, before the body
is read), `prepare_*` (decoding and the model's preprocessing, in the decode pool), the reservation's
`submit`, then `wait` for results or `stream` a generation's updates as they are decoded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, TypeVar

from model import ALL_TASKS, Task
from model.api import Update
from service.audio import decode_audio
from service.batching import Batcher, Item, Reservation
from service.engine import Engine, GenerationInput, TranscriptionInput
from service.errors import ClientDisconnected, NotReady, Timeout
from service.images import decode_image
from service.metrics import Metrics
from service.scheduler import InferenceThread
from service.settings import Settings
from service.watchdog import Watchdog

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEVICE_CHECK_INTERVAL_S = 5.0  # /health checks the device at most this often
DEVICE_CHECK_WAIT_S = 2.0  # and waits for the check at most this long (probes time out after 4 s)


class State(StrEnum):
    LOADING = "loading"
    OK = "ok"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"


class Runtime:
    """Everything with a lifetime: started in the app's lifespan, drained and stopped at its end."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Condition()
        self.batchers: dict[Task, Batcher[Any, Any]] = {}
        for task in sorted(ALL_TASKS):
            policy = settings.batch_policy(task)
            self.batchers[task] = Batcher(
                task, policy.max_batch_size, policy.max_wait_ms, settings.queue_capacity, self._lock
            )
        metrics.watch_queues({task: b.pending for task, b in self.batchers.items()})
        self._engine: Engine | None = None
        self._failed = False
        self._draining = False
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="mmserve-decode")
        self._thread = InferenceThread(
            lambda: Engine.load(settings),
            self.batchers,
            self._lock,
            metrics,
            self._ready,
            self._failure,
            encoder_cache_bytes=settings.encoder_cache_bytes,
            max_turn_ms=settings.max_turn_ms,
        )
        metrics.watch_running(self._thread.running)
        self._watchdog: Watchdog | None = None
        if settings.step_timeout_s > 0:
            self._watchdog = Watchdog(
                self._thread.busy_since, settings.step_timeout_s, self._stuck, exit_after=settings.exit_on_stuck
            )
        self._device_checked_at = -float("inf")  # the last /health device check (monotonic seconds)
        self._device_check: asyncio.Future[None] | None = None  # one running now

    # Lifecycle.
    def start(self) -> None:
        """Start loading in the inference thread; returns at once (the state says `loading` meanwhile)."""
        self._thread.start()
        if self._watchdog is not None:
            self._watchdog.start()

    def begin_drain(self) -> None:
        """Stop admitting new requests, and run queued ones without waiting for batch-mates.

        Called from uvicorn's signal handler too: that runs on the event loop's thread, and the batcher
        lock is re-entrant and never held while a batch runs, so taking it here cannot deadlock.
        """
        self._draining = True
        self._thread.flush()

    async def drain(self, timeout_s: float) -> None:
        """Wait for every admitted item to finish (at most `timeout_s`), then stop the inference thread."""
        self.begin_drain()
        deadline = time.monotonic() + timeout_s
        while self._in_flight() and time.monotonic() < deadline and self._thread.is_alive():
            await asyncio.sleep(0.02)
        if self._in_flight():
            logger.warning("shutting down with %d requests unfinished", self._in_flight())
        if self._watchdog is not None:
            self._watchdog.stop()
        self._thread.stop()
        await asyncio.to_thread(self._thread.join, max(0.0, deadline - time.monotonic()) + 1)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def state(self) -> State:
        if self._failed or (self._engine is not None and not self._thread.is_alive() and not self._draining):
            return State.UNHEALTHY
        if self._draining:
            return State.DRAINING
        return State.OK if self._engine is not None else State.LOADING

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def _ready(self, engine: Engine) -> None:
        self._engine = engine
        logger.info("ready: serving %s", ", ".join(sorted(engine.tasks)))

    def _failure(self, error: BaseException) -> None:
        self._failed = True

    def _stuck(self, running_s: float) -> None:
        """The watchdog's verdict (on its thread): unhealthy, and every admitted request answered 503 now."""
        self._failed = True
        self._thread.abort(
            NotReady(f"the device is stuck (a step has run for {running_s:.0f} s); the server is unhealthy", 1)
        )

    async def check_device(self) -> None:
        """`/health`'s device check: a tiny computation on the device, at most every `DEVICE_CHECK_INTERVAL_S`
        (a cached verdict between). A device that fails it is broken for good: unhealthy, everyone 503. A
        busy or hung device is not judged here (the watchdog does): the check is awaited at most
        `DEVICE_CHECK_WAIT_S`, keeps running in its thread, and no second one starts meanwhile."""
        engine = self._engine
        now = time.monotonic()
        if engine is None or self._failed or now - self._device_checked_at < DEVICE_CHECK_INTERVAL_S:
            return
        if self._device_check is None:
            self._device_checked_at = now
            self._device_check = asyncio.ensure_future(asyncio.to_thread(engine.check_device))
        try:
            await asyncio.wait_for(asyncio.shield(self._device_check), DEVICE_CHECK_WAIT_S)
        except TimeoutError:
            return
        except Exception as e:
            logger.error("the device check failed (%r): the server is unhealthy", e)
            self._failed = True
            self._thread.abort(NotReady("the device failed; the server is unhealthy", retry_after_s=1))
        self._device_check = None

    def _in_flight(self) -> int:
        return sum(b.in_flight() for b in self.batchers.values())

    # What routes use.
    @contextmanager
    def admit(self, task: Task, count: int = 1) -> Iterator[Reservation[Any, Any]]:
        """Room for `count` items of `task`, if the service takes them now (else 503, 501 or 429)."""
        engine = self.ensure_ready()
        engine.check_supported(task)
        with self.batchers[task].reserve(count) as reservation:
            yield reservation

    def ensure_ready(self) -> Engine:
        """The engine, when the service takes requests (else 503 with the reason)."""
        state = self.state
        if state is not State.OK or self._engine is None:
            message = {
                State.LOADING: "the model is still loading; retry shortly",
                State.DRAINING: "the server is shutting down",
                State.UNHEALTHY: "the server is unhealthy",
            }.get(state, "the server is not ready")
            raise NotReady(message, retry_after_s=1)
        return self._engine

    def model_name(self, task: Task) -> str:
        return self._engine.model_name(task) if self._engine else ""

    # Preprocessing, in the decode pool (off the event loop and off the inference thread).
    async def prepare_generation(
        self, task: Task, data: bytes, question: str | None = None, max_new_tokens: int | None = None
    ) -> GenerationInput:
        """Image bytes → the model's input for a caption or an answer."""
        engine = self.ensure_ready()
        max_pixels = self.settings.max_image_pixels
        return await self._in_pool(
            lambda: engine.prepare_generation(task, decode_image(data, max_pixels), question, max_new_tokens)
        )

    async def prepare_transcription(
        self, task: Task, data: bytes, language: str | None = None, field: str = "audio"
    ) -> tuple[TranscriptionInput, float]:
        """Audio bytes → the model's input, and the audio's duration in seconds (`field` names it in a 422)."""
        engine = self.ensure_ready()
        spec, max_seconds = engine.audio_spec(task), self.settings.max_audio_seconds

        def prepare() -> tuple[TranscriptionInput, float]:
            audio = decode_audio(data, spec, max_seconds, field)
            return engine.prepare_transcription(task, audio.samples, language), audio.seconds

        return await self._in_pool(prepare)

    async def prepare_image(self, task: Task, data: bytes) -> Any:
        """Image bytes → the model's input for an image embedding."""
        engine = self.ensure_ready()
        max_pixels = self.settings.max_image_pixels
        return await self._in_pool(lambda: engine.prepare_image(task, decode_image(data, max_pixels)))

    async def prepare_texts(self, task: Task, texts: Sequence[str]) -> list[Any]:
        """Texts → the model's inputs (token ids)."""
        engine = self.ensure_ready()
        return await self._in_pool(lambda: [engine.prepare_text(task, text) for text in texts])

    async def _in_pool(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, work)

    # Results.
    async def wait(
        self, items: Sequence[Item[Any, Any]], deadline: float, disconnected: Callable[[], Awaitable[None]]
    ) -> list[Any]:
        """The items' outputs in order; on a timeout (504), a disconnect or a failure the rest are dropped."""
        waiters = [asyncio.wrap_future(item.future) for item in items]
        for waiter in waiters:  # mark late failures as seen: their request has already been answered
            waiter.add_done_callback(lambda w: w.cancelled() or w.exception())
        watcher = asyncio.ensure_future(disconnected())
        pending: set[asyncio.Future[Any]] = set(waiters)
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending | {watcher},
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if watcher in done:
                    raise ClientDisconnected("the client disconnected")
                if not done:
                    raise self._timeout()
                pending.discard(watcher)
                for waiter in done:
                    waiter.result()  # raises the item's error
            return [waiter.result() for waiter in waiters]
        finally:
            watcher.cancel()
            for item in items:  # a no-op for finished items; queued ones are skipped, running ones dropped
                if not item.future.done():
                    item.abandon()

    def stream_sink(self) -> tuple[asyncio.Queue[Any], Callable[[Update], None]]:
        """A queue on this event loop, and the sink the inference thread calls with each update."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def sink(update: Update) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, update)

        return queue, sink

    async def stream(
        self, item: Item[Any, Any], updates: asyncio.Queue[Any], deadline: float
    ) -> AsyncGenerator[Update]:
        """A generation's updates as they are decoded, the last one finished; its error, or 504, if it fails.

        The item's future is queued behind its updates when it is done, so its error (or, for a model
        that generates whole batches, its only result) comes in order. Leaving early (the client went
        away: the response's task is cancelled) drops the sequence.
        """
        loop = asyncio.get_running_loop()
        item.future.add_done_callback(lambda future: loop.call_soon_threadsafe(updates.put_nowait, future))
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        entry = await updates.get()
                except TimeoutError:
                    raise self._timeout() from None
                if isinstance(entry, Update):
                    yield entry
                    if entry.finished:
                        return
                    continue
                if entry.cancelled():
                    raise ClientDisconnected("the client disconnected")
                if (error := entry.exception()) is not None:
                    raise error
                result = entry.result()  # generated as a whole (no step-wise updates came)
                yield Update(result.text, True, result.finish_reason, result.text, result.tokens)
                return
        finally:
            if not item.future.done():
                item.abandon()

    def _timeout(self) -> Timeout:
        return Timeout(f"the request did not complete within {self.settings.request_timeout_s:g} s")
