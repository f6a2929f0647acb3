"""Splitting a batch of token sequences into micro-batches of similar length, so padding stays small.

An encoder pads every row of a call to the call's longest row, so texts of 3 and 48 words in one call
cost two of 48. Sorted by length, the rows are cut into contiguous groups that minimise an estimate of the
work: each call costs a fixed overhead (`call_tokens`, in token-equivalents: dispatch, small matrices)
plus its rows times its width. A short dynamic programme over the sorted lengths finds the best cuts
(n ≤ a few hundred); equal lengths stay in one call, and one call is kept when splitting would not pay.
`CallCost` learns the fixed cost from the calls' timings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


def length_batches(lengths: Sequence[int], max_rows: int, call_tokens: int) -> list[list[int]]:
    """Indices into `lengths`, grouped into calls of at most `max_rows` rows of similar length (shortest first)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: the least work for the j shortest rows
    cut = [0] * (n + 1)  # cut[j]: where the last call of that best plan starts
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]  # the longest of rows i..j-1, as they are sorted
        for i in range(max(0, j - max_rows), j):
            work = best[i] + call_tokens + (j - i) * width
            if work < best[j]:
                best[j], cut[j] = work, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def padding_fraction(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> float:
    """The share of computed positions that are padding when each group is one call."""
    computed = sum(len(group) * max(lengths[i] for i in group) for group in groups if group)
    return 1 - sum(lengths) / computed if computed else 0.0


class CallCost:
    """A call's fixed cost in tokens' work, fitted to the last `window` calls: seconds ≈ a + b × tokens
    computed (least squares), the cost being a / b. It grows where calls are dear (threads that wait on
    each other on a busy machine, a GPU's launches), so fewer, wider calls are made there."""

    def __init__(self, initial_tokens: int, window: int = 64, bounds: tuple[int, int] = (8, 4096)) -> None:
        self._initial = initial_tokens
        self._bounds = bounds
        self._calls: deque[tuple[int, float]] = deque(maxlen=window)

    def observe(self, tokens: int, seconds: float) -> None:
        self._calls.append((tokens, seconds))

    @property
    def tokens(self) -> int:
        """The fitted cost, or the initial one until calls of different sizes have been seen."""
        n = len(self._calls)
        if n < 8:
            return self._initial
        mean_x = sum(x for x, _ in self._calls) / n
        mean_y = sum(y for _, y in self._calls) / n
        spread = sum((x - mean_x) ** 2 for x, _ in self._calls)
        if spread == 0:
            return self._initial
        slope = sum((x - mean_x) * (y - mean_y) for x, y in self._calls) / spread
        intercept = mean_y - slope * mean_x
        if slope <= 0:  # calls cost the same whatever their size: only their number matters
            return self._bounds[1]
        low, high = self._bounds
        return round(min(high, max(low, intercept / slope)))
