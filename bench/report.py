"""The benchmark's output: markdown tables (with the machine and the command), and a PNG plot."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from bench.measurements import Cell, medians
from bench.servers import REPO_ROOT, specs
from bench.wrk import WrkResult

MIB = 1024 * 1024


@dataclass(frozen=True)
class MemoryPoint:
    requests: int
    rss_bytes: int
    errors: int


def limit_cell(line: str, run: int, key: str = "limit") -> Cell:
    """A cell from one JSON line of `bench.limit`: items/s, and a batch call's latency percentiles."""
    raw = json.loads(line)
    batch = WrkResult(0, 0, 0, 0, 1.0, raw["batch_ms"])
    return Cell(
        key,
        f"/{raw['kind']}",
        "closed",
        raw["batch_size"],
        raw["items_per_s"],
        batch.percentile_ms(50),
        batch.percentile_ms(95),
        batch.percentile_ms(99),
        raw["errors"],
        run,
    )


def _number(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def _ratio(value: float, reference: float | None) -> str:
    return "—" if not reference or math.isnan(value) else f"{value / reference:.2f}"


def machine(args: argparse.Namespace) -> str:
    import torch

    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)  # fmt: skip
    parts = [f"{cpu}, {os.cpu_count()} cores ({platform.machine()})", f"torch {torch.__version__}"]
    if args.device.startswith("cuda") and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    versions = []
    for package in ("fastapi", "uvicorn", "litserve"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{package} {metadata.version(package)}")
    wrk_path = shutil.which("wrk")
    if wrk_path:
        out = subprocess.run([wrk_path, "-v"], capture_output=True, text=True).stdout.split("[")[0]
        versions.append(out.strip())
    versions.append(f"Python {platform.python_version()}")
    git = shutil.which("git")
    if git:
        commit = subprocess.run([git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT)
        versions.append(f"commit {commit.stdout.strip()}")
    return "; ".join(parts + versions)


def _closed_table(cells: list[Cell], endpoint: str, labels: dict[str, str]) -> list[str]:
    closed = [c for c in cells if c.endpoint == endpoint and c.mode == "closed"]
    if not closed:
        return []
    reference = {c.load: c.requests_per_s for c in closed if c.server == "mmserve"}
    lines = [
        f"### `{endpoint}`, closed loop",
        "",
        "| server | clients | req/s | p50 ms | p95 ms | p99 ms | errors | × mmserve |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = list(labels)
    for cell in sorted(closed, key=lambda c: (c.load, order.index(c.server))):
        lines.append(
            f"| {labels[cell.server]} | {cell.load:g} | {_number(cell.requests_per_s)} | {_number(cell.p50_ms)} | "
            f"{_number(cell.p95_ms)} | {_number(cell.p99_ms)} | {cell.errors} | "
            f"{_ratio(cell.requests_per_s, reference.get(cell.load))} |"
        )
    return [*lines, ""]


def _open_table(cells: list[Cell], labels: dict[str, str]) -> list[str]:
    opened = [c for c in cells if c.mode == "open"]
    if not opened:
        return []
    lines = [
        "### Open loop: a fixed rate, each request timed from when it was due",
        "",
        "| server | endpoint | offered req/s | answered req/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = list(labels)
    for cell in sorted(opened, key=lambda c: (c.endpoint, order.index(c.server))):
        lines.append(
            f"| {labels[cell.server]} | `{cell.endpoint}` | {cell.load:g} | {_number(cell.requests_per_s)} | "
            f"{_number(cell.p50_ms)} | {_number(cell.p95_ms)} | {_number(cell.p99_ms)} | {cell.errors} |"
        )
    return [*lines, ""]


def _mixed_table(cells: list[Cell], labels: dict[str, str]) -> list[str]:
    by_key = {(c.server, c.mode): c for c in cells if c.mode in ("alone", "busy", "load")}
    servers = [s for s in labels if (s, "busy") in by_key]
    if not servers:
        return []
    lines = [
        "### An embedding while 24 clients caption",
        "",
        "`/embed` at one client, alone and while 24 other clients send `/caption` continuously (a second wrk).",
        "",
        "| server | /embed p50 alone | p50 while captioning | × | p99 alone | p99 while captioning | "
        "/caption req/s meanwhile | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for server in servers:
        alone, busy, load = by_key[(server, "alone")], by_key[(server, "busy")], by_key[(server, "load")]
        lines.append(
            f"| {labels[server]} | {_number(alone.p50_ms)} | {_number(busy.p50_ms)} | "
            f"{_ratio(busy.p50_ms, alone.p50_ms)} | {_number(alone.p99_ms)} | {_number(busy.p99_ms)} | "
            f"{_number(load.requests_per_s)} | {alone.errors + busy.errors + load.errors} |"
        )
    return [*lines, ""]


def _memory_table(points: list[MemoryPoint]) -> list[str]:
    if not points:
        return []
    lines = [
        "### Resident memory of mmserve (defaults)",
        "",
        "A fresh server; `/embed` and `/caption` requests alternate, 32 clients. RSS from `/proc/<pid>/status`.",
        "",
        "| after requests | RSS MiB | change from the first batch of requests | errors |",
        "| ---: | ---: | ---: | ---: |",
    ]
    base = points[1].rss_bytes if len(points) > 1 else points[0].rss_bytes
    for point in points:
        change = f"{(point.rss_bytes / base - 1) * 100:+.1f}%" if point.requests else "—"
        lines.append(f"| {point.requests} | {point.rss_bytes / MIB:.1f} | {change} | {point.errors} |")
    return [*lines, ""]


def markdown(
    cells: Iterable[Cell],
    memory: list[MemoryPoint],
    notes: list[str],
    args: argparse.Namespace,
    command: str,
    started: datetime,
) -> str:
    cells = medians(cells)
    labels = {key: spec.label for key, spec in specs(args.device).items()}
    words = getattr(args, "words", (3, 48))
    mix = "" if words == (3, 48) else f": `/embed` texts of {words[0]}–{words[1]} words"
    header = [f"# Serving benchmark{mix}", ""]
    if args.smoke:
        header += [
            "> **Smoke run, not a measurement**: short cells on a shared machine; it shows that the suite works.",
            "",
        ]
    header += [
        f"`{command}`, {started:%Y-%m-%d %H:%M} UTC, on {machine(args)}. Device: `{args.device}`.",
        "",
        f"Servers run one at a time, each its own process; load from wrk (one process per load, "
        f"`-c N -t min(N,2)`), on the same machine. Each cell: {args.warmup_s:g} s warm-up, then "
        f"{args.duration_s:g} s measured; {args.repeat} run(s){', in both orders' if args.both_orders else ''}, "
        "medians shown (errors summed). Every response is verified against the model's answer for that input "
        f"alone (`/embed`: one text per request, 64 texts of {words[0]}–{words[1]} words, the first 8 components "
        f"within "
        f"{args.tolerance:g} and the length; `/caption`: 32 scene images, `max_new_tokens` spread over 4–64, "
        "the exact caption; `/transcribe`, mmserve only: 16 scene sentences spoken by espeak-ng as base64 WAV, "
        "the exact transcript); a wrong answer is an error and its latency is not counted. Latencies are measured "
        "per request by the Lua script. The limit is the model called in a Python loop on batches of the "
        "given size (items/s; its latency columns are one batch call). × mmserve: req/s over mmserve's "
        "(defaults) at the same concurrency.",
        "",
    ]
    body: list[str] = []
    for endpoint in ("/embed", "/caption", "/transcribe"):
        body += _closed_table(cells, endpoint, labels)
    body += _open_table(cells, labels) + _mixed_table(cells, labels) + _memory_table(memory)
    if notes:
        body += ["### Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(header + body)


def plot(cells: Iterable[Cell], path: Path, title: str = "") -> bool:
    """Throughput and p99 against concurrency, a line per server, a column per endpoint (False: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    closed = [c for c in medians(cells) if c.mode == "closed"]
    endpoints = [e for e in ("/embed", "/caption", "/transcribe") if any(c.endpoint == e for c in closed)]
    if not endpoints:
        return False
    figure, axes = plt.subplots(2, len(endpoints), figsize=(6 * len(endpoints), 8), squeeze=False)
    colours = {server: f"C{i}" for i, server in enumerate(specs("cpu"))}  # one colour per server in every panel
    for column, endpoint in enumerate(endpoints):
        for server in dict.fromkeys(c.server for c in closed if c.endpoint == endpoint):
            points = sorted((c for c in closed if c.endpoint == endpoint and c.server == server), key=lambda c: c.load)
            loads = [c.load for c in points]
            style = {"marker": "o", "label": server, "color": colours.get(server)}
            axes[0][column].plot(loads, [c.requests_per_s for c in points], **style)
            if not server.startswith("limit"):  # the limit's latency is a batch call, not a request
                axes[1][column].plot(loads, [c.p99_ms for c in points], **style)
        axes[0][column].set_title(f"{endpoint}: throughput")
        axes[0][column].set_ylabel("requests/s (limit: items/s)")
        axes[1][column].set_title(f"{endpoint}: p99 latency")
        axes[1][column].set_ylabel("ms")
        axes[1][column].set_yscale("log")
        for axis in (axes[0][column], axes[1][column]):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("concurrent clients (limit: batch size)")
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
