"""One measured cell of the benchmark, and the median over repeated runs."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from bench.wrk import WrkResult

Mode = Literal["closed", "open", "alone", "busy", "load"]
# closed: N clients, each sends when answered; open: a fixed rate; alone / busy: /embed at c=1 without
# and with 24 clients captioning at once; load: the caption load of "busy" itself.


@dataclass(frozen=True)
class Cell:
    server: str
    endpoint: str
    mode: Mode
    load: float  # concurrency (closed, alone, busy, load) or requests/s (open)
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    run: int = 0
    examples: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, Mode, float]:
        return self.server, self.endpoint, self.mode, self.load


def from_wrk(server: str, endpoint: str, mode: Mode, load: float, result: WrkResult, run: int) -> Cell:
    return Cell(
        server,
        endpoint,
        mode,
        load,
        result.requests_per_s,
        result.percentile_ms(50),
        result.percentile_ms(95),
        result.percentile_ms(99),
        result.errors,
        run,
        tuple(result.examples),
    )


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def medians(cells: Iterable[Cell]) -> list[Cell]:
    """One cell per (server, endpoint, mode, load): the median of each number over the runs; errors summed."""
    groups: dict[tuple[str, str, Mode, float], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[cell.key].append(cell)
    return [
        replace(
            group[0],
            requests_per_s=_median(c.requests_per_s for c in group),
            p50_ms=_median(c.p50_ms for c in group),
            p95_ms=_median(c.p95_ms for c in group),
            p99_ms=_median(c.p99_ms for c in group),
            errors=sum(c.errors for c in group),
            run=len(group),
            examples=tuple(e for c in group for e in c.examples)[:3],
        )
        for group in groups.values()
    ]
