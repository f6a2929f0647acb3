"""The in-process limit: a Python loop calling the model's batched call, no HTTP, no queue.

Run by the suite as its own process: `python -m bench.limit --workload W --kinds embed caption --batch-sizes 1 8
--duration-s 5`. For each kind and batch size it prints one JSON line: items/s, and the latency percentiles of
one batch call (what every item of that batch waits). Its first batch is checked against the
expected answers (mismatches are reported as errors): the limit does the same work the servers do.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from PIL import Image

from bench.workload import Kind, Request, load


def _inputs(kind: Kind, requests: list[Request]) -> list[Any]:
    if kind == "embed":
        return [json.loads(r.body)["input"] for r in requests]
    return [
        (Image.open(io.BytesIO(base64.b64decode(r.image_png_b64))).convert("RGB"), r.max_new_tokens) for r in requests
    ]


def _call(model: Any, kind: Kind, batch: list[Any]) -> list[Any]:
    if kind == "embed":
        return [row[:8].tolist() for row in model.embed_text(batch)]
    return list(model.caption([image for image, _ in batch], [limit for _, limit in batch]))


def _mismatches(kind: Kind, outputs: list[Any], requests: list[Request], tolerance: float) -> int:
    if kind == "caption":
        return sum(output != request.expect for output, request in zip(outputs, requests, strict=True))
    return sum(
        max(abs(a - b) for a, b in zip(output, request.expect, strict=True)) > tolerance
        for output, request in zip(outputs, requests, strict=True)
    )


def measure(
    model: Any, kind: Kind, requests: list[Request], batch_size: int, duration_s: float, tolerance: float
) -> dict[str, Any]:
    inputs = _inputs(kind, requests)
    stream = cycle(range(len(inputs)))
    first = list(islice(stream, batch_size))
    outputs = _call(model, kind, [inputs[i] for i in first])  # also the warm-up
    errors = _mismatches(kind, outputs, [requests[i] for i in first], tolerance)
    batch_ms: list[float] = []
    items = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        batch = [inputs[i] for i in islice(stream, batch_size)]
        t = time.perf_counter()
        _call(model, kind, batch)
        batch_ms.append((time.perf_counter() - t) * 1000)
        items += len(batch)
    elapsed = time.perf_counter() - started
    return {"batch_size": batch_size, "items_per_s": items / elapsed, "batch_ms": batch_ms, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", type=Path, required=True)
    parser.add_argument("--kinds", choices=["embed", "caption"], nargs="+", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", required=True)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="for embedding components")
    parser.add_argument(
        "--naive", action="store_true", help="pad every batch of texts to its longest (no micro-batches by length)"
    )
    args = parser.parse_args(argv)
    from model import load_model

    model = load_model("builtin", device=args.device)
    if args.naive:
        model.text_tower.padding_aware = False
    workload = load(args.workload)
    for kind in args.kinds:
        for batch_size in args.batch_sizes:
            result = measure(model, kind, workload[kind], batch_size, args.duration_s, args.tolerance)
            print(json.dumps({"kind": kind, **result}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
