"""How `mmserve serve` ends: its exit statuses, and leaving with one when the process cannot go on.

A supervisor (Docker's `restart:`, Kubernetes, systemd) restarts a process that exits, never one that only
reports itself unhealthy, so every fatal state ends the process: a model that cannot load exits at once,
a broken device or a dead inference thread after `MMSERVE_UNHEALTHY_EXIT_AFTER_S` (503s meanwhile, so a
load balancer sees it), a stuck device after the watchdog's grace. The statuses are README's table.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from enum import IntEnum

from service.logs import flush_logs

logger = logging.getLogger(__name__)


class ExitStatus(IntEnum):
    """`mmserve serve`'s exit statuses (the client commands have their own)."""

    OK = 0  # stopped by SIGTERM/SIGINT after draining (outside a container: killed by the signal, -15 / 143)
    ERROR = 1  # an unexpected error (with its traceback)
    USAGE = 2  # a bad command line or setting
    STUCK = 3  # the device is stuck: a step ran over MMSERVE_STEP_TIMEOUT_S (the watchdog)
    LOAD_FAILED = 4  # the model could not be loaded or warmed up at start-up
    DEVICE_FAILED = 5  # the device failed at run time (a sticky CUDA error, or /health's device check)
    INFERENCE_THREAD_DIED = 6  # the inference thread died (a bug in the step loop)
    CANNOT_LISTEN = 7  # the port is in use (or the address is not this machine's), found before loading


def one_line(error: BaseException) -> str:
    """An error as one line: its message (its type when the message is empty), newlines folded."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def exit_now(status: ExitStatus, reason: str) -> None:
    """Log `reason` as one line and end the process with `status`, whatever its threads are doing."""
    logger.critical("%s (exiting with status %d)", reason, status)
    flush_logs()  # the log's writer thread: what it holds, written now
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(status)  # a stuck or dead inference thread cannot be joined: leave without it


def exit_after(delay_s: float, status: ExitStatus, reason: str) -> None:
    """`exit_now` after `delay_s`, from a thread of its own (returns at once)."""

    def wait_then_exit() -> None:
        time.sleep(delay_s)
        exit_now(status, reason)

    threading.Thread(target=wait_then_exit, name="mmserve-exit", daemon=True).start()
