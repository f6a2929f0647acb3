"""The watchdog: a thread that notices when the device is stuck (the step loop makes no progress for too long).

It times progress, not batches: `busy_since` moves on at every turn of the loop and at every decoding step
of a whole-batch generation, so a generation that runs for minutes but keeps stepping is left alone. A
batch or a decoding step takes milliseconds to seconds; one that has run for `MMSERVE_STEP_TIMEOUT_S`
will not finish (a hung kernel, a lost device, a deadlocked driver). Then the service turns unhealthy
(`/health` and `/health/live` answer 503, so an orchestrator restarts it), every admitted request is
answered 503 instead of waiting for its timeout, and, after a short grace for those answers to go out,
the process exits with `EXIT_STUCK` (unless `MMSERVE_EXIT_ON_STUCK=false`, for tests in one process).
A loop that died is not stuck: the watchdog stops watching once the thread is gone (the runtime's failure
handler answers and exits then, with its own status).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from service.exits import ExitStatus

logger = logging.getLogger(__name__)

EXIT_STUCK = ExitStatus.STUCK  # 3, the process's exit status when the device is stuck
EXIT_GRACE_S = 2.0  # between answering everyone 503 and exiting


class Watchdog(threading.Thread):
    """Calls `on_stuck(seconds)` once, when the loop has made no progress (`busy_since`) for over `timeout_s`."""

    def __init__(
        self,
        busy_since: Callable[[], float | None],
        timeout_s: float,
        on_stuck: Callable[[float], None],
        exit_after: bool,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(name="mmserve-watchdog", daemon=True)
        self._busy_since = busy_since
        self._timeout_s = timeout_s
        self._on_stuck = on_stuck
        self._exit_after = exit_after
        self._alive = alive  # whether the watched thread still runs
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        interval = min(1.0, self._timeout_s / 4)
        while not self._stopped.wait(interval):
            if not self._alive():
                return
            since = self._busy_since()
            if since is None or (running_s := time.monotonic() - since) <= self._timeout_s:
                continue
            logger.critical(
                "a step has run for %.1f s (MMSERVE_STEP_TIMEOUT_S=%g): the device is stuck", running_s, self._timeout_s
            )
            self._on_stuck(running_s)
            if self._exit_after:
                time.sleep(EXIT_GRACE_S)
                logger.critical("exiting with status %d", EXIT_STUCK)
                sys.stderr.flush()
                os._exit(EXIT_STUCK)  # the stuck thread cannot be joined: leave without it
            return
