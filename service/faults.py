"""Faults of the model and the device: telling them apart, and running a batch so that one fails alone.

- Out of memory (`torch.cuda.OutOfMemoryError`, or the CPU allocator's "can't allocate memory"): the
  failed attempt's tensors are let go (outside the `except` block, so its traceback does not keep them),
  the CUDA cache is emptied, and the batch is retried in halves, down to one item; only an item that does
  not fit alone fails (507). The task's batch size is then capped (`BatchCap`): halved, and doubled back
  (up to its maximum) after every `GROW_AFTER_S` seconds without out-of-memory, so a memory-tight device
  settles near what fits instead of failing again every few milliseconds.
- A broken device (a CUDA error that is not out of memory, a device-side assert): sticky, so nothing is
  retried; `DeviceBroken` stops the inference thread and the service turns unhealthy at once.
- Any other error: retried item by item, so one bad item fails alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from service.errors import OutOfMemory

logger = logging.getLogger(__name__)

T = TypeVar("T")

GROW_AFTER_S = 10.0  # seconds without out-of-memory before a capped task may take twice as many items

_OOM_MESSAGES = ("can't allocate memory", "out of memory", "failed to allocate")
_BROKEN_MESSAGES = ("cuda error", "device-side assert", "cublas_status", "cudnn_status", "illegal memory access")


class DeviceBroken(Exception):
    """The device failed in a way that does not go away (the CUDA context is lost): stop serving."""


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's equivalent."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MESSAGES)


def is_device_broken(error: BaseException) -> bool:
    """A device error that is not out of memory: every later call on the device fails the same way."""
    if is_out_of_memory(error):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _BROKEN_MESSAGES)


def free_device_memory() -> None:
    """Give the CUDA caching allocator's free blocks back, so the smaller retries can use them."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()


class BatchCap:
    """The most items one batch of a task may hold now: halved on out-of-memory, doubled back (up to the
    maximum) after each `GROW_AFTER_S` seconds of `clock` without one."""

    def __init__(
        self,
        maximum: int,
        on_change: Callable[[int], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.limit = maximum
        self._clock = clock
        self._since = clock()  # the last change (an out-of-memory, or a growth)
        self._on_change = on_change
        on_change(maximum)

    def out_of_memory(self, size: int) -> None:
        """A batch of `size` did not fit: allow at most half of it from now on (and wait again to grow)."""
        self._set(min(self.limit, max(1, size // 2)))

    def fitted(self) -> None:
        """A batch fitted: once `GROW_AFTER_S` seconds have passed since the last change, allow twice as many."""
        if self.limit < self.maximum and self._clock() - self._since >= GROW_AFTER_S:
            self._set(min(self.maximum, self.limit * 2))

    def _set(self, limit: int) -> None:
        self.limit, self._since = limit, self._clock()
        self._on_change(limit)


def run_split(
    items: Sequence[T],
    attempt: Callable[[Sequence[T]], None],
    fail: Callable[[T, BaseException], None],
    on_out_of_memory: Callable[[int], None],
    what: str,
) -> None:
    """`attempt(items)`; if it runs out of memory, the halves in turn (down to one item, which fails with
    `OutOfMemory`); if it fails otherwise, each item alone (one that fails alone gets its error). A broken
    device is raised as `DeviceBroken` at once, with nothing retried. `on_out_of_memory(size)` is told of
    every batch that did not fit.
    """
    parts: list[Sequence[T]]
    try:
        attempt(items)
        return
    except Exception as e:
        if is_device_broken(e):
            raise DeviceBroken(f"the device failed: {e}") from e
        out_of_memory = is_out_of_memory(e)
        if not out_of_memory and len(items) == 1:
            fail(items[0], e)
            return
        if not out_of_memory:
            logger.warning("a %s batch of %d failed (%r); retrying item by item", what, len(items), e)
        parts = [items[: len(items) // 2], items[len(items) // 2 :]] if out_of_memory else [[i] for i in items]
    # Out of the except block: the error and its traceback (and the tensors its frames hold) are gone.
    if out_of_memory:
        free_device_memory()
        on_out_of_memory(len(items))
        if len(items) == 1:
            fail(items[0], OutOfMemory(f"the {what} input does not fit in the device's memory, even alone"))
            return
        logger.warning("a %s batch of %d ran out of memory; retrying in halves", what, len(items))
    for part in parts:
        run_split(part, attempt, fail, on_out_of_memory, what)
