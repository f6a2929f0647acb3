"""`/embed` alone under the default scheduler and under `MMSERVE_SCHEDULER=static`, alternated, with every
text-encoder call logged (issue 24: why the suite saw one or the other ahead by up to 24%).

    python -m bench.embed_ab [--pairs 3] [--words 8 20] [--clients 64] [--duration-s 15]

Runs the servers one at a time, fresh each run, in the order default, static, static, default, default, ...
(so each mode runs first as often as second), wrk with `--clients` connections, 3 s of warm-up, then
`--duration-s` measured; every response is verified (`bench/verify.lua`). Each server runs as
`python -m bench.embed_ab --serve`: mmserve with `CallCost.observe` wrapped to log each encoder call (its
end, tokens computed, seconds, and the padding-aware plan's fitted cost per call after it). Prints one JSON
line per run: req/s, p99, the fitted cost (median, min, max over the measured window), tokens per call, and
the encoder's busy share of the window (its calls' seconds over the window) with the gaps between calls.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import runpy
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def serve() -> None:
    """mmserve (`python -m service serve`) with every text-encoder call logged to `$EMBED_AB_LOG`."""
    from model import length_batches

    log = open(os.environ["EMBED_AB_LOG"], "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    observe = length_batches.CallCost.observe

    def logged(self: length_batches.CallCost, tokens: int, seconds: float) -> None:
        observe(self, tokens, seconds)
        log.write(f"{time.monotonic():.4f} {tokens} {seconds:.5f} {self.tokens}\n")

    length_batches.CallCost.observe = logged  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # uvicorn installs its own once it starts
    sys.argv = ["service", "serve"]
    runpy.run_module("service", run_name="__main__")


def summary(lines: list[str], window_s: float) -> dict[str, Any]:
    """The encoder calls of the last `window_s` seconds of a log (wrk's measured window ends the load)."""
    rows = [tuple(map(float, line.split())) for line in lines]
    end = rows[-1][0]
    calls = [row for row in rows if row[0] >= end - window_s]
    gaps = [b[0] - b[2] - a[0] for a, b in itertools.pairwise(calls)]  # one call's end to the next's start
    waits = [g for g in gaps if g > 0.002]
    return {
        "calls": len(calls),
        "cost_median": statistics.median(row[3] for row in calls),
        "cost_min": min(row[3] for row in calls),
        "cost_max": max(row[3] for row in calls),
        "tokens_per_call": round(statistics.mean(row[1] for row in calls), 1),
        "encoder_busy": round(sum(row[2] for row in calls) / window_s, 3),
        "gaps_over_2ms_s": round(sum(waits), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--words", type=int, nargs=2, default=(8, 20), metavar=("MIN", "MAX"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=15.0)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    from bench import wrk
    from bench.servers import Server, ServerSpec
    from bench.workload import build, write_lua
    from model import load_model

    work = Path(tempfile.mkdtemp(prefix="embed-ab-"))
    model = load_model("builtin", "cpu")
    lua = write_lua(build(model, words=tuple(args.words))["embed"], work / "embed.lua")
    del model
    modes = ["default", "static", "static", "default"] * ((args.pairs + 1) // 2)
    for run, mode in enumerate(modes[: 2 * args.pairs]):
        log = work / f"calls-{run}.log"
        env = {"EMBED_AB_LOG": str(log), **({"MMSERVE_SCHEDULER": "static"} if mode == "static" else {})}
        spec = ServerSpec("mmserve-ab", mode, (sys.executable, "-m", "bench.embed_ab", "--serve"), env)
        with Server(spec, "cpu") as server:
            result = wrk.run(server.url, lua, args.clients, 3.0, args.duration_s)
        row = {"run": run, "mode": mode, "req_s": round(result.requests_per_s, 1)}
        row |= {"p99_ms": round(result.percentile_ms(99), 1), "errors": result.errors}
        print(json.dumps(row | summary(log.read_text().splitlines(), args.duration_s)), flush=True)


if __name__ == "__main__":
    main()
