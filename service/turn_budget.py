"""How many items a whole batch may take, so that one turn of the step loop stays within a time budget.

Models that only generate whole batches (Hugging Face captioning and VQA, Whisper) cannot join the running
decoding state: their batch runs inside one turn of the loop, and every running stream waits for it. So
while sequences are decoding, such a batch is cut to as many items as fit in `MMSERVE_MAX_TURN_MS`, from
the cost per item measured on the task's recent batches (a moving average). One item is never cut: a
single generation longer than the budget still holds the loop for its whole length.
"""

from __future__ import annotations


class TurnBudget:
    """The most items of each whole-batch task that fit in `max_turn_ms` (0: no budget)."""

    def __init__(self, max_turn_ms: float) -> None:
        self.max_turn_s = max_turn_ms / 1000
        self._per_item_s: dict[str, float] = {}  # measured seconds per item, by task

    def items(self, task: str, limit: int) -> int:
        """How many items a batch of `task` may take now: at most `limit`, at least one."""
        per_item_s = self._per_item_s.get(task)
        if self.max_turn_s <= 0 or not per_item_s:
            return limit  # no budget, or nothing measured yet
        return max(1, min(limit, int(self.max_turn_s / per_item_s)))

    def observe(self, task: str, seconds: float, size: int) -> None:
        """A batch of `size` items of `task` took `seconds`."""
        if size <= 0:
            return
        per_item_s = seconds / size
        previous = self._per_item_s.get(task)
        self._per_item_s[task] = per_item_s if previous is None else (previous + per_item_s) / 2
