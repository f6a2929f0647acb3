"""The soak's counts: statuses, lost, mismatched, late and 5xx answers and valid latencies, per task."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    mismatched: int = 0
    late: int = 0
    server_errors: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.lost

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_s)

        def percentile(q: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else 0.0

        return {
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "lost": self.lost,
            "mismatched": self.mismatched,
            "late": self.late,
            "server_errors_5xx": self.server_errors,
            "latency_ms_valid": {"p50": percentile(0.50), "p99": percentile(0.99), "max": percentile(1.0)},
        }


@dataclass
class Tallies:
    """One tally per task (an invalid request counts under its route's task), and their sum."""

    tasks: dict[str, Tally] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # the first mismatches and losses, of any task
    # text to image: how many served images were off the expected one by at most 0, 1, ... 8-bit levels
    pixel_differences: Counter[int] = field(default_factory=Counter)

    def of(self, task: str) -> Tally:
        return self.tasks.setdefault(task, Tally())

    def total(self) -> Tally:
        whole = Tally()
        for tally in self.tasks.values():
            whole.statuses.update(tally.statuses)
            whole.lost += tally.lost
            whole.mismatched += tally.mismatched
            whole.late += tally.late
            whole.server_errors += tally.server_errors
            whole.latencies_s += tally.latencies_s
        return whole

    @property
    def requests(self) -> int:
        return sum(tally.requests for tally in self.tasks.values())
