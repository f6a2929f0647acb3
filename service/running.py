"""What every running state of the step loop shares: rows that are requests, dropped when gone, failed together.

A running state (`service.generation.Generation`, `service.denoising.Denoising`) holds a model state whose
row i is `rows[i]`, a `Row` that carries its request. This base keeps the two in step: `step` runs the
model state's step with the fault handling every state needs (a broken device fails everyone and stops the
loop; out of memory is the subclass's to recover from, outside the `except` block, so that the traceback no
longer holds the step's tensors; any other error fails the running rows, and a fresh state is made when
next needed, never inside an `except`), `drop_gone` drops the rows nobody waits for, `fail_all` answers
everyone, `_keep` filters the state and the rows together, and `_tell` sends a row's update to its stream
once (none twice after a rerun). Subclasses say what a step's updates mean (`_stepped`), how to recover
from out of memory (`_out_of_memory`) and how rows join and rejoin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from model import Task
from service.batching import Item
from service.errors import NotReady
from service.faults import DeviceBroken, is_device_broken, is_out_of_memory

logger = logging.getLogger(__name__)


class RowState(Protocol):
    """A model state whose rows the base keeps in step with its own (`DecodeState`, `DenoiseState`)."""

    def step(self) -> Sequence[Any]: ...  # every row's update
    def filter(self, keep: Sequence[int]) -> None: ...


@dataclass(eq=False)
class Row:
    """One row of a running state: its request, its task, and how far its stream has been told."""

    item: Item[Any, Any]
    task: Task
    delivered: int = 0  # progress (tokens, steps) its stream was told of: none is sent twice after a rerun


S = TypeVar("S", bound=RowState)
R = TypeVar("R", bound=Row)


class RunningRows(Generic[S, R]):
    """Rows of a model state, row i's request in `rows[i]`; `what` names a row in logs ("images")."""

    what = "rows"

    def __init__(self, new_state: Callable[[], S]) -> None:
        self._new_state = new_state
        self._state: S | None = new_state()  # None: given up, made afresh when next needed
        self.rows: list[R] = []  # row i of the state
        self.rejoining: list[R] = []  # put back after out-of-memory (or waiting for room), oldest first

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejoining) + len(self._waiting())

    @property
    def state(self) -> S:
        """The model state, made afresh if the last one was given up."""
        if self._state is None:
            self._state = self._new_state()
        return self._state

    @property
    def items(self) -> list[Item[Any, Any]]:
        """The running rows' requests, row by row."""
        return [row.item for row in self.rows]

    def requests(self) -> list[Item[Any, Any]]:
        """Every request held: running, waiting to rejoin, or waiting otherwise (`_waiting`)."""
        return [row.item for row in (*self.rows, *self.rejoining, *self._waiting())]

    def _waiting(self) -> list[R]:
        """Rows held outside the state and `rejoining`, still unanswered (a transcript whose audio is encoded)."""
        return []

    def step(self) -> None:
        """One step for every running row; what it did is `_stepped`'s business."""
        self._step(self.rows, lambda: self.state.step())

    def _step(self, rows: list[R], step: Callable[[], Sequence[Any]]) -> None:
        """Run `step`, which steps the running rows `rows` (all of them, or some) and gives an update for each."""
        if not rows:
            return
        try:
            updates = step()
            if len(updates) != len(rows):
                raise RuntimeError(f"a step of {len(rows)} {self.what} gave {len(updates)} updates")
        except Exception as e:
            if is_device_broken(e):
                self.fail_all(NotReady("the device failed; the server is unhealthy", retry_after_s=1))
                raise DeviceBroken(f"the device failed: {e}") from e
            if not is_out_of_memory(e):  # the state may be inconsistent now: fail its rows, start afresh
                logger.exception("a step failed; failing its %d %s", len(self.rows), self.what)
                self._give_up_state(e)
                return
        else:
            self._stepped(rows, updates)
            return
        self._out_of_memory()  # outside the except block (its traceback no longer holds the step's tensors)

    def _stepped(self, rows: list[R], updates: Sequence[Any]) -> None:
        """The rows `rows` took a step; `updates[i]` is row `rows[i]`'s."""
        raise NotImplementedError

    def _out_of_memory(self) -> None:
        raise NotImplementedError

    def drop_gone(self, now: float) -> None:
        """Drop the rows nobody waits for any more (client gone, deadline passed): they compute no more."""
        survivors = []
        for row in self.rows:
            if (reason := row.item.gone(now)) is None:
                survivors.append(row)
            else:
                row.item.fail(reason)
        if len(survivors) < len(self.rows):
            self._keep(survivors)
        rejoining = []
        for row in self.rejoining:
            if (reason := row.item.gone(now)) is None:
                rejoining.append(row)
            else:
                row.item.fail(reason)
        self.rejoining = rejoining
        for row in self._waiting():
            if (reason := row.item.gone(now)) is not None:
                row.item.fail(reason)

    def fail_all(self, error: BaseException) -> None:
        """Answer every running, rejoining and waiting row with `error`; the state is made afresh when next needed."""
        for row in [*self.rows, *self.rejoining, *self._waiting()]:
            row.item.fail(error)
        self.rows, self.rejoining, self._state = [], [], None

    def _give_up_state(self, error: BaseException) -> None:
        """The state can no longer be trusted: its running rows fail with `error`; a new one is made when next
        needed (not here: this runs in `except` blocks, and making one may fail too)."""
        for row in self.rows:
            row.item.fail(error)
        self.rows, self._state = [], None

    def _keep(self, survivors: list[R]) -> None:
        """Keep the rows `survivors` (in their order) and free the others' slots; a filter that fails gives
        the state up."""
        index = {id(row): i for i, row in enumerate(self.rows)}
        try:
            self.state.filter([index[id(row)] for row in survivors])
        except Exception as e:
            logger.exception("filtering the state failed; failing its %d %s", len(survivors), self.what)
            self.rows = survivors
            self._give_up_state(e)
            return
        self.rows = survivors

    @staticmethod
    def _tell(row: Row, update: Any, progress: int, finished: bool) -> None:
        """Send `update` to the row's stream, if it has one, when it ends the row or brings news (`progress`
        beyond what the stream was told: after a rerun, the steps it had are not sent twice)."""
        if row.item.on_update is not None and (finished or progress > row.delivered):
            send(row.item, update)
            row.delivered = progress


def send(item: Item[Any, Any], update: Any) -> None:
    """Send one update to a request's stream sink; a sink that fails (its event loop closed) stops nothing."""
    assert item.on_update is not None
    try:
        item.on_update(update)
    except Exception:
        logger.debug("a stream sink failed", exc_info=True)
