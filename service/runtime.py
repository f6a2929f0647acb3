"""The running service: its lifecycle state, the per-task batchers, the inference thread, the decode pool.

States: `loading` (the inference thread is loading and warming up the models) → `ok` → `draining`
(shutdown: nothing new is admitted, what was accepted finishes) ; `unhealthy` when loading failed, the
inference thread died, the device failed (a sticky error in a batch, or in `/health`'s device check) or
is stuck (the watchdog: a turn ran over `MMSERVE_STEP_TIMEOUT_S`); every admitted request is then
answered 503 at once. Requests reach it only through `service.serving`, which admits them into
`batchers`, prepares their inputs with `in_pool` (the decode pool) and submits them.

A fatal state ends the process (service.exits), so that its supervisor restarts it: at once when loading
failed, after `MMSERVE_UNHEALTHY_EXIT_AFTER_S` of 503s otherwise (unless `MMSERVE_EXIT_ON_FAILURE=false`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any, TypeVar

from model import ALL_TASKS, Task
from service.batching import Batcher
from service.engine import Engine
from service.errors import NotReady
from service.exits import ExitStatus, exit_after, one_line
from service.faults import DeviceBroken
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
        self._exit_status: ExitStatus | None = None  # why the service cannot go on (it exits with this)
        self._exit_lock = threading.Lock()
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
                self._thread.busy_since,
                settings.step_timeout_s,
                self._stuck,
                exit_after=settings.exit_on_stuck and settings.exit_on_failure,
                alive=self._thread.is_alive,
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

    @property
    def inference_thread(self) -> InferenceThread:
        return self._thread

    @property
    def closing(self) -> bool:
        """Draining or about to exit: responses close their connection (the client's next request goes elsewhere)."""
        return self._draining or self._exit_status is not None

    def _ready(self, engine: Engine) -> None:
        if self.settings.gc_freeze:
            # What loading made (modules, weights' Python objects, tokenizers) lives as long as the process:
            # moved out of the collector's generations, the full collections that serving's garbage triggers
            # no longer walk it, so they stop stalling every request in flight (as vLLM and SGLang do).
            gc.collect()
            gc.freeze()
        self._engine = engine
        logger.info("ready: serving %s", ", ".join(sorted(engine.tasks)))

    @property
    def exit_status(self) -> ExitStatus | None:
        """The status the process exits with, once the service cannot go on; None while it can."""
        return self._exit_status

    def _failure(self, error: BaseException) -> None:
        """The inference thread's end (on that thread): loading failed, the device broke, or the loop died."""
        self._failed = True
        if self._engine is None:
            logger.debug("loading the model failed", exc_info=error)  # the traceback, for a bug in a loader
            self._fatal(ExitStatus.LOAD_FAILED, f"loading the model failed: {one_line(error)}", after_s=0)
        elif isinstance(error, DeviceBroken):
            self._fatal(ExitStatus.DEVICE_FAILED, one_line(error))
        else:
            self._fatal(ExitStatus.INFERENCE_THREAD_DIED, f"the inference thread died: {one_line(error)}")

    def _fatal(self, status: ExitStatus, reason: str, after_s: float | None = None) -> None:
        """Unhealthy for good: exit with `status` after `after_s` (default: `unhealthy_exit_after_s`), unless
        `exit_on_failure` is off. The first fatal state decides the status."""
        with self._exit_lock:
            if self._exit_status is not None:
                return
            self._exit_status = status
        if not self.settings.exit_on_failure:
            logger.critical("%s (staying up, unhealthy: MMSERVE_EXIT_ON_FAILURE=false)", reason)
            return
        delay_s = self.settings.unhealthy_exit_after_s if after_s is None else after_s
        if delay_s > 0:
            logger.critical("%s (unhealthy: exiting in %g s)", reason, delay_s)
        exit_after(delay_s, status, reason)

    def _stuck(self, running_s: float) -> None:
        """The watchdog's verdict (on its thread): unhealthy, and every admitted request answered 503 now
        (the watchdog itself exits, after its grace)."""
        self._failed = True
        with self._exit_lock:
            self._exit_status = self._exit_status or ExitStatus.STUCK
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
            self._fatal(ExitStatus.DEVICE_FAILED, f"the device check failed: {one_line(e)}")
        self._device_check = None

    def _in_flight(self) -> int:
        return sum(b.in_flight() for b in self.batchers.values())

    # What serving uses.
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

    async def in_pool(self, work: Callable[[], T]) -> T:
        """Run `work` in the decode pool (off the event loop and off the inference thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, work)
