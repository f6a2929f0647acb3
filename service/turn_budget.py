"""How many items may join or run in one turn of the step loop, so that the turn stays within a time budget.

Every running stream waits for a whole turn between two of its tokens. What a turn holds besides the
decoding step: sequences joining (their images encoded and prompts prefilled; a transcript's audio is
encoded a block per turn before it joins, `service.generation`), and a whole batch of a model that cannot
decode step by step (Hugging Face captioning and VQA, Whisper: its batch runs inside the turn). So while
sequences are decoding, each task takes only as many items as fit in `MMSERVE_MAX_TURN_MS`, from the cost
per item measured on the task's recent joins or batches (a moving average); the rest wait for the next
turns. One item is never cut: a single generation longer than the budget still holds the loop for its
whole length.

The denoising step is cut the same way, its rows the items (`DENOISE_STEP`), but only while other work
shares the loop (`shared`): queued embeddings, captions, answers, transcripts, or sequences decoding, now or
within the last `QUIET_AFTER_S` (a client that sends one request after another is between two of them most
of the time: without the memory its next request would find a whole step of every image in its way). When
images are generated alone, every running image steps at once, as fast as one batched call allows.
"""

from __future__ import annotations

DENOISE_STEP = "denoise_step"  # the task name the denoising step's cost per row is kept under
QUIET_AFTER_S = 1.0  # other work last seen this long ago: images step all at once again


class TurnBudget:
    """The most items of each whole-batch task that fit in `max_turn_ms` (0: no budget)."""

    def __init__(self, max_turn_ms: float) -> None:
        self.max_turn_s = max_turn_ms / 1000
        self._per_item_s: dict[str, float] = {}  # measured seconds per item, by task
        self._other_work_at = float("-inf")  # when work beside the images was last seen (monotonic seconds)

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

    def saw_other_work(self, now: float) -> None:
        """Work beside the images waits or runs at `now` (monotonic seconds)."""
        self._other_work_at = now

    def shared(self, now: float) -> bool:
        """Whether the denoising step shares the loop with other work: seen within the last `QUIET_AFTER_S`."""
        return now - self._other_work_at < QUIET_AFTER_S
