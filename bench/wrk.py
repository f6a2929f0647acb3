"""Running wrk with `verify.lua`, and reading what it prints.

wrk (Debian's package) generates the load in its own process, in C, so the load generator costs little of
the machine it measures. It has no fixed-rate mode, and Debian has no wrk2; `verify.lua` paces
requests itself with wrk's `delay()` hook for the open loop (see the script).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

WINDOW_SLACK_S = 0.3  # wrk's threads start a few ms after the process
SCRIPT = Path(__file__).resolve().parent / "verify.lua"


class WrkMissing(RuntimeError):
    """wrk is not installed (Debian: `apt-get install wrk`)."""


@dataclass(frozen=True)
class WrkResult:
    ok: int  # verified responses in the measured window
    status_errors: int  # non-200 responses in the window
    mismatches: int  # 200s whose body was not the right answer
    socket_errors: int  # connect, read, write and timeout errors over the whole run
    window_s: float
    latencies_ms: list[float] = field(repr=False)
    examples: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.status_errors + self.mismatches + self.socket_errors

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.window_s if self.window_s else 0.0

    def percentile_ms(self, p: float) -> float:
        """The p-th percentile of the verified responses' latencies (NaN when there were none)."""
        if not self.latencies_ms:
            return math.nan
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=1000, method="inclusive")[round(p * 10) - 1]


def parse_output(text: str) -> WrkResult:
    """The result from wrk's stdout (the "bench: ..." lines `verify.lua` prints after wrk's summary)."""
    ok = status_errors = mismatches = socket_errors = 0
    window_s = 0.0
    latencies: list[float] = []
    examples: list[str] = []
    seen_done = False
    for line in text.splitlines():
        if not line.startswith("bench: "):
            continue
        key, _, rest = line.removeprefix("bench: ").partition(" ")
        if key == "socket_errors":
            socket_errors = sum(int(v) for v in rest.split())
            seen_done = True
        elif key == "window_s":
            window_s = float(rest)
        elif key == "thread":
            counts = dict(pair.split("=") for pair in rest.split())
            ok += int(counts["ok"])
            status_errors += int(counts["status_errors"])
            mismatches += int(counts["mismatches"])
        elif key == "latency_ms":
            latencies.extend(float(v) for v in rest.split())
        elif key == "example":
            examples.append(rest)
    if not seen_done:
        raise ValueError(f"wrk printed no results (did verify.lua fail?):\n{text[-2000:]}")
    return WrkResult(ok, status_errors, mismatches, socket_errors, window_s, latencies, examples)


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("wrk is not installed: apt-get install wrk")
    return path


def run(
    url: str,
    data_file: Path,
    connections: int,
    warmup_s: float = 0.0,
    measure_s: float = 5.0,
    rate: float = 0.0,
    limit: int = 0,
    threads: int | None = None,
) -> WrkResult:
    """One wrk process against `url` with `connections` connections and min(connections, 2) threads.

    `rate` > 0: open loop at that many requests/s. `limit` > 0: stop after about that many responses
    (each thread stops after its share; wrk is then interrupted, which ends its run early).
    """
    threads = threads or min(connections, 2)
    per_thread_limit = math.ceil(limit / threads) if limit else 0
    env = {
        **os.environ,
        "BENCH_DATA": str(data_file),
        "BENCH_WARMUP_S": str(warmup_s),
        "BENCH_MEASURE_S": str(measure_s if not limit else 1e9),
        "BENCH_RATE": str(rate),
        "BENCH_THREADS": str(threads),
        "BENCH_LIMIT": str(per_thread_limit),
    }
    # wrk takes whole seconds; a timed run is interrupted once its window has passed.
    duration_s = math.ceil(warmup_s + measure_s) + 2 if not limit else 3600
    command = [wrk_binary(), f"-c{connections}", f"-t{threads}", f"-d{duration_s}s", "--timeout", "60s"]
    command += ["-s", str(SCRIPT), url]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = 0
    if limit:
        assert process.stderr is not None
        for line in process.stderr:  # wrk runs its whole duration unless interrupted
            stopped += line.startswith("bench: limit reached")
            if stopped == threads:
                process.send_signal(signal.SIGINT)
                break
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(warmup_s + measure_s + WINDOW_SLACK_S)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}: {stderr[-2000:]}")
    result = parse_output(stdout)
    if limit:  # the whole run is the window
        result = WrkResult(
            result.ok,
            result.status_errors,
            result.mismatches,
            result.socket_errors,
            0.0,
            result.latencies_ms,
            result.examples,
        )
    return result
