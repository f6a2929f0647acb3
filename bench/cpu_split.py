"""Where the two cores go during a closed-loop `/embed` cell: the server's processes, wrk, and idle.

`python -m bench.cpu_split --servers mmserve litserve --concurrency 32 64 --words 8 20`: for each server (one
at a time) and load, wrk runs its cell (2 s warm-up, `--duration-s` measured, every answer verified, as in
`bench/suite.py`) while the CPU time of the server's whole process tree (psutil) and of wrk (this process's
reaped children) is read before and after. Printed: req/s, and each part's share of the machine's cores over
the cell, and the server's CPU milliseconds per request. It answers why a server on these 2 cores stays below
the in-process limit: what the load generator and the HTTP layer cost, beside the model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import wrk
from bench.servers import Server, specs
from bench.workload import build, write_lua


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (those alive now)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", nargs="+", default=["mmserve", "litserve"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--words", type=int, nargs=2, default=[8, 20])
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    from model import load_model

    model = load_model("builtin", device="cpu")
    requests = build(model, caption_count=0, words=tuple(args.words))["embed"]
    del model
    gc.collect()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="mmserve-cpu-split-") as workdir:
        lua = write_lua(requests, Path(workdir) / "embed.lua")
        for key in args.servers:
            with Server(specs("cpu")[key], "cpu") as server:
                assert server.process is not None
                for concurrency in args.concurrency:
                    wrk.run(server.url, lua, concurrency, 0.0, 2.0)  # warm-up, not measured
                    server_before, wrk_before, started = tree_cpu_s(server.process.pid), children_cpu_s(), time.time()
                    result = wrk.run(server.url, lua, concurrency, 0.0, args.duration_s)
                    wall = time.time() - started
                    server_s = tree_cpu_s(server.process.pid) - server_before
                    wrk_s = children_cpu_s() - wrk_before
                    row = {
                        "server": key,
                        "clients": concurrency,
                        "req_per_s": round(result.requests_per_s, 1),
                        "errors": result.errors,
                        "server_share": round(server_s / (wall * cores), 3),
                        "wrk_share": round(wrk_s / (wall * cores), 3),
                        "idle_share": round(1 - (server_s + wrk_s) / (wall * cores), 3),
                        "server_cpu_ms_per_request": round(1000 * server_s / max(1, result.ok), 2),
                    }
                    print(json.dumps(row), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
