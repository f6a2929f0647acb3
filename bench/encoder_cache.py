"""The encoder cache on a VQA workload: one image, five questions about it, for many images.

Starts mmserve twice (the encoder cache on, then off), one at a time, and asks five questions about each
image in turn, from `--clients` concurrent clients (each client goes through its own images). Every
answer is checked against the model's own, computed in-process first. Prints and writes to
docs/encoder_cache.md: req/s, p50 and p99 per question, and the cache's hits and misses from /metrics.

    python bench/encoder_cache.py                     # the built-in model, 1 and 8 clients
    python bench/encoder_cache.py --images 40 --clients 1 4

The client is Python (httpx) in its own process: it costs the server CPU, equally for both runs; compare
the ratio, not the absolute numbers (bench/suite.py's wrk-driven figures are the absolute ones).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import platform
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bench.servers import Server, ServerSpec
from model import load_model
from model.scenes import make_scene, render

QUESTIONS = (
    "what colour is the circle?",
    "how many shapes are there?",
    "is there a red square?",
    "what shape is on the left?",
    "what colour is the square?",
)
OUT = Path(__file__).resolve().parent.parent / "docs" / "encoder_cache.md"


def png_b64(seed: int) -> tuple[str, object]:
    image = render(make_scene(seed))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), image


async def drive(url: str, images: list[str], expected: list[list[str]], clients: int) -> tuple[float, list[float]]:
    """Every client asks the five questions about each of its images in turn; (seconds, latencies)."""
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient, mine: list[int]) -> None:
        for i in mine:
            for q, question in enumerate(QUESTIONS):
                started = time.perf_counter()
                response = await http.post("/vqa", json={"image": images[i], "question": question})
                latencies.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                if response.json()["answer"] != expected[i][q]:
                    raise AssertionError(
                        f"image {i}, {question!r}: {response.json()['answer']!r} != {expected[i][q]!r}"
                    )

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, list(range(c, len(images), clients))) for c in range(clients)))
        return time.perf_counter() - started, latencies


def cache_counts(url: str) -> tuple[int, int]:
    metrics = httpx.get(f"{url}/metrics").text
    found = dict(re.findall(r'^mmserve_encoder_cache_lookups_total\{result="(hit|miss)"\} (\S+)$', metrics, re.M))
    return int(float(found.get("hit", 0))), int(float(found.get("miss", 0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()

    model = load_model("builtin", args.device)
    # each client count gets images of its own, so that no run finds the previous run's in the cache
    workloads = []
    for run in range(len(args.clients)):
        encoded = [png_b64(20_000_000 + 1000 * run + i) for i in range(args.images)]
        answers = [model.answer([image] * len(QUESTIONS), list(QUESTIONS)) for _, image in encoded]
        workloads.append(([b64 for b64, _ in encoded], answers))
    del model
    rows = []
    for label, env in (("on (64 MiB)", {}), ("off", {"MMSERVE_ENCODER_CACHE_BYTES": "0"})):
        spec = ServerSpec("mmserve-cache", f"encoder cache {label}", (sys.executable, "-m", "service", "serve"), env)
        server = Server(spec, args.device)
        server.start()
        try:
            server.wait_ready()
            for clients, (images, expected) in zip(args.clients, workloads, strict=True):
                seconds, latencies = asyncio.run(drive(server.url, images, expected, clients))
                hits, misses = cache_counts(server.url)
                rows.append((label, clients, len(latencies) / seconds, statistics.median(latencies),
                             statistics.quantiles(latencies, n=100)[98], hits, misses))  # fmt: skip
                print(f"cache {label}, {clients} clients: {rows[-1][2]:.1f} req/s, p50 {rows[-1][3]:.1f} ms")
        finally:
            server.stop()
    table = [
        "| encoder cache | clients | req/s | p50 ms | p99 ms | hits | misses (cumulative per server) |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]} | {r[6]} |" for r in rows]
    for clients in args.clients:
        on = next(r for r in rows if r[1] == clients and r[0].startswith("on"))
        off = next(r for r in rows if r[1] == clients and r[0] == "off")
        table.append(f"\n{clients} clients: cache on / off = {on[2] / off[2]:.2f}× req/s, p50 {on[3] / off[3]:.2f}×")
    text = "\n".join(table)
    print(text)
    if not args.no_write:
        OUT.write_text(
            "# The encoder cache: one image, five questions\n\n"
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()}, "
            f"the built-in model on {args.device}, {args.images} images × {len(QUESTIONS)} questions each, "
            "every answer checked against the model's own.\n\n"
            f"    python bench/encoder_cache.py --images {args.images} --clients {' '.join(map(str, args.clients))}\n\n"
            + text
            + "\n"
        )


if __name__ == "__main__":
    main()
