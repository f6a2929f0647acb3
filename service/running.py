"""What every running state of the step loop shares: rows that are requests, dropped when gone, failed together.

A running state (`service.denoising.Denoising`; `service.generation.Generation` has the same shape and can
adopt this base) holds a model state whose row i is `items[i]`'s request. This base keeps the two lists in
step: `drop_gone` drops the rows nobody waits for, `fail_all` answers everyone, and `step` runs the model
state's step with the fault handling every state needs (a broken device stops the loop, out of memory puts
the rows back to start again, any other error fails the rows and starts a fresh state). Subclasses say what
a step's updates mean (`_stepped`) and how rows rejoin (`_put_back_all`, `rejoin`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from model import Task
from service.batching import Item
from service.errors import NotReady
from service.faults import DeviceBroken, free_device_memory, is_device_broken, is_out_of_memory

logger = logging.getLogger(__name__)


class RowState(Protocol):
    """A model state whose rows the base keeps in step with its items (`DecodeState`, `DenoiseState`)."""

    def step(self) -> Sequence[Any]: ...
    def filter(self, keep: Sequence[int]) -> None: ...


S = TypeVar("S", bound=RowState)


class RunningRows(Generic[S]):
    """Rows of a model state and the request of each; `what` names a row in logs ("images")."""

    what = "rows"

    def __init__(self, new_state: Callable[[], S]) -> None:
        self.new_state = new_state
        self.state: S = new_state()
        self.items: list[Item[Any, Any]] = []  # row i's request
        self.rejoining: list[tuple[Task, Item[Any, Any]]] = []  # put back after out-of-memory, oldest first
        self.delivered: dict[Item[Any, Any], int] = {}  # progress each stream has had (not sent twice on a rerun)

    def __len__(self) -> int:
        return len(self.items) + len(self.rejoining)

    def requests(self) -> list[Item[Any, Any]]:
        """Every row's request, running or waiting to rejoin."""
        return [*self.items, *(item for _, item in self.rejoining)]

    def step(self) -> None:
        """One step for every running row; what it did is `_stepped`'s business."""
        if not self.items:
            return
        try:
            updates = self.state.step()
        except Exception as e:
            if is_device_broken(e):
                self.fail_all(NotReady("the device failed; the server is unhealthy", retry_after_s=1))
                raise DeviceBroken(f"the device failed: {e}") from e
            if not is_out_of_memory(e):  # the state may be inconsistent now: fail its rows, start afresh
                logger.exception("a step failed; failing its %d %s", len(self.items), self.what)
                self.fail_all(e)
                self.state = self.new_state()
                return
        else:
            self._stepped(updates)
            return
        # Out of memory, outside the except block (its traceback no longer holds the step's tensors).
        self._put_back_all()
        free_device_memory()

    def _stepped(self, updates: Sequence[Any]) -> None:
        raise NotImplementedError

    def _put_back_all(self) -> None:
        raise NotImplementedError

    def drop_gone(self, now: float) -> None:
        """Drop the rows nobody waits for any more (client gone, deadline passed): they compute no more."""
        keep = []
        for row, item in enumerate(self.items):
            reason = item.gone(now)
            if reason is None:
                keep.append(row)
            else:
                item.fail(reason)
        if len(keep) < len(self.items):
            self._filter(keep)
        rejoining = []
        for task, item in self.rejoining:
            if (reason := item.gone(now)) is None:
                rejoining.append((task, item))
            else:
                item.fail(reason)
                self.delivered.pop(item, None)
        self.rejoining = rejoining

    def fail_all(self, error: BaseException) -> None:
        """Answer every running and rejoining row with `error`; the state's rows are left to the caller."""
        for item in [*self.items, *(item for _, item in self.rejoining)]:
            item.fail(error)
        self.items, self.rejoining, self.delivered = [], [], {}

    def _filter(self, keep: list[int]) -> None:
        self.state.filter(keep)
        self.items = [self.items[i] for i in keep]
        alive = {*self.items, *(item for _, item in self.rejoining)}
        self.delivered = {item: n for item, n in self.delivered.items() if item in alive}


def deliver(item: Item[Any, Any], update: Any) -> None:
    """Send one update to a request's stream sink; a sink that fails (its event loop closed) stops nothing."""
    assert item.on_update is not None
    try:
        item.on_update(update)
    except Exception:
        logger.debug("a stream sink failed", exc_info=True)
