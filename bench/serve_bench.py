"""Serving benchmark: throughput and latency of /embed and /caption, with and without dynamic batching.

Starts a real server (`python -m service serve`) once with the default batching settings and once with
`max_batch_size=1` for every task, drives each endpoint with closed-loop clients at several
concurrencies for a few seconds each, prints a markdown table and writes it to docs/benchmarks.md.

    python bench/serve_bench.py                       # the built-in model
    python bench/serve_bench.py --model PATH --duration-s 2 --concurrency 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from tests.support.server import ServerProcess, encode_image, noise_image

logger = logging.getLogger("serve_bench")

ENDPOINTS = ("/embed", "/caption")
TASKS = ("caption", "vqa", "embed_text", "embed_image")


@dataclass(frozen=True)
class Cell:
    endpoint: str
    batching: bool
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def request_for(endpoint: str, i: int, image: bytes) -> dict[str, Any]:
    if endpoint == "/embed":
        return {"json": {"input": f"a short sentence about shape number {i}"}}
    return {"files": {"image": ("image.png", image, "image/png")}}


async def measure(url: str, endpoint: str, concurrency: int, duration_s: float, batching: bool) -> Cell:
    """`concurrency` clients, each sending its next request when the last is answered."""
    images = [encode_image(noise_image(seed, (64, 64))) for seed in range(16)]
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for i in range(min(concurrency, 8)):  # open connections, let the first batches run
            await client.post(endpoint, **request_for(endpoint, i, images[i % 16]))
        stop_at = time.monotonic() + duration_s

        async def worker(worker_id: int) -> None:
            nonlocal errors
            i = worker_id
            while time.monotonic() < stop_at:
                started = time.monotonic()
                response = await client.post(endpoint, **request_for(endpoint, i, images[i % 16]))
                if response.status_code == 200:
                    latencies.append(time.monotonic() - started)
                else:
                    errors += 1
                i += concurrency

        started = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [float("nan")]
    p99 = statistics.quantiles(ordered, n=100)[98] if len(ordered) >= 2 else ordered[0]
    return Cell(
        endpoint,
        batching,
        concurrency,
        len(latencies) / elapsed,
        statistics.median(ordered) * 1000,
        p99 * 1000,
        errors,
    )


def server_settings(args: argparse.Namespace, batching: bool) -> dict[str, str]:
    settings = {"MMSERVE_MODEL": args.model, "MMSERVE_DEVICE": args.device, "MMSERVE_LOG_LEVEL": "warning"}
    if args.torch_threads:
        settings["MMSERVE_TORCH_THREADS"] = str(args.torch_threads)
    if not batching:
        settings.update({f"MMSERVE_{task.upper()}_MAX_BATCH_SIZE": "1" for task in TASKS})
    return settings


def run(args: argparse.Namespace) -> tuple[list[Cell], dict[str, Any]]:
    cells: list[Cell] = []
    health: dict[str, Any] = {}
    for batching in (True, False):
        with ServerProcess(server_settings(args, batching)) as server:
            health = httpx.get(f"{server.url}/health").json()
            for endpoint in ENDPOINTS:
                for concurrency in args.concurrency:
                    cell = asyncio.run(measure(server.url, endpoint, concurrency, args.duration_s, batching))
                    logger.info("%s", cell)
                    cells.append(cell)
    return cells, health


def markdown(cells: list[Cell], health: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"`python bench/serve_bench.py --model {args.model} --duration-s {args.duration_s:g}` on "
        f"{datetime.now(UTC):%Y-%m-%d}: model `{health.get('model')}` on {health.get('device')} "
        f"({health.get('dtype')}), {os.cpu_count()} CPU cores ({platform.machine()}), client and server "
        "on the same machine. Closed loop: each client sends its next request when the last is answered; "
        f"{args.duration_s:g} s per cell. `/embed` sends one short text, `/caption` one 64×64 PNG. "
        "*Batching on*: the default per-task settings; *none*: `max_batch_size=1` for every task.",
        "",
        "| endpoint | batching | concurrency | requests/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell in sorted(cells, key=lambda c: (c.endpoint, not c.batching, c.concurrency)):
        lines.append(
            f"| `{cell.endpoint}` | {'on' if cell.batching else 'none'} | {cell.concurrency} | "
            f"{cell.requests_per_s:.1f} | {cell.p50_ms:.1f} | {cell.p99_ms:.1f} | {cell.errors} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="builtin", help="builtin (default), a checkpoint folder or an HF id"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--torch-threads", type=int, default=None, help="the server's MMSERVE_TORCH_THREADS")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parent.parent / "docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    cells, health = run(args)
    table = markdown(cells, health, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    sys.stdout.write(table)
    logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
