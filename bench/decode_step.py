"""A decoding step's time per row: main's step against this one's (shapes changing, or fixed per bucket), and
eager against CUDA graphs.

In-process, the shipped model, no HTTP: `n` caption rows prefilled together and stepped to the decoder's
room (end of sequence off: 63 tokens each), every step timed (it ends in the host sync of its tokens, so on
CUDA the time is the device's too). Variants:
  before   the code of another checkout (`--before`, main's), in a process with that checkout first on the path;
  dynamic  this code, the step's shapes changing every step (the default on a CPU);
  fixed    this code, fixed shapes per bucket (`MMSERVE_FIXED_SHAPE_STEP`);
  graphs   (CUDA) fixed shapes, each bucket's step replayed as a CUDA graph (`MMSERVE_CUDA_GRAPHS`).
Each variant runs in its own process (one warm-up run, then `--runs` timed ones, each step's fastest of them
kept; graphs are captured in the warm-up), the processes in turns, both orders, and the median of the turns
taken, since the machine is shared: compare ratios, not absolute times.

    python -m bench.decode_step --batch-sizes 1 8 32 --repeats 2 --before /work/main
    python -m bench.decode_step --device cuda --variants fixed graphs    (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _worker(variant: str, device: str, sizes: list[int], runs: int, capacity: int | None) -> None:
    """Time `runs` runs of each batch size with one variant; one JSON line per size."""
    import torch

    from model.checkpoint import WEIGHTS_DIR, load_builtin
    from model.generate import DecodeState
    from model.scenes import make_scene, render
    from model.tokenizer import PAD, SEP

    class NoTextTower(torch.nn.Module):  # decoding never embeds text: skip loading MiniLM
        max_tokens = 256

    torch.set_num_threads(1)
    builtin = load_builtin(WEIGHTS_DIR, device, torch.float32, text_tower=NoTextTower())  # type: ignore[arg-type]
    options: dict[str, Any] = {}
    if variant != "before":
        from model.step_graphs import DecodeOptions

        options["options"] = DecodeOptions(fixed_shapes=variant != "dynamic", cuda_graphs=variant == "graphs")
    room = builtin.config.decoder.max_len
    for n in sizes:
        state = DecodeState(
            builtin.module.decoder,
            capacity or n,
            builtin._context_len,
            eos_id=-1,  # never ends: every row runs to max_len
            pad_id=builtin._ids[PAD],
            sep_id=builtin._ids[SEP],
            detokenize=builtin._decode,
            masked_context=builtin.module.config.audio is not None,  # as served: captions next to transcripts
            **options,
        )
        images = [builtin.prepare_image(render(make_scene(seed))) for seed in range(n)]
        specs = [builtin.sequence("caption", None, room) for _ in range(n)]
        runs_s: list[list[float]] = []  # each timed run's step times
        with torch.inference_mode():
            encodings = builtin.encode_images(images)
            for run in range(1 + runs):  # the first warms up (and captures the graphs)
                state.prefill(specs, encodings)
                times = []
                while True:
                    started = time.perf_counter()
                    updates = state.step()
                    times.append(time.perf_counter() - started)
                    if any(update.finished for update in updates):
                        break
                state.filter([])
                if run:
                    runs_s.append(times)
        # each step's fastest of the runs (the least disturbed by the machine's other work), averaged over steps
        fastest = [min(step) for step in zip(*runs_s, strict=True)]
        steps = len(fastest)
        graphs = getattr(state, "graphs", None)
        captured = graphs.captured if graphs is not None else []
        row = {"variant": variant, "batch": n, "ms_per_row_step": round(1000 * statistics.fmean(fastest) / n, 4)}
        print(json.dumps({**row, "steps": steps, "graphs": captured}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=2, help="turns of every variant's process")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per process and batch size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--capacity", type=int, default=None, help="the state's slots (default: the batch size)")
    parser.add_argument("--variants", nargs="+", default=None, help="default: before dynamic fixed (+ graphs on CUDA)")
    parser.add_argument("--before", type=Path, default=None, help="a checkout whose step is 'before' (main's)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.device, args.batch_sizes, args.runs, args.capacity)
        return
    variants = args.variants or [
        *(["before"] if args.before else []),
        "dynamic",
        "fixed",
        *(["graphs"] if args.device.startswith("cuda") else []),
    ]
    results: dict[tuple[str, int], list[float]] = {}
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else list(reversed(variants)):
            code = args.before if variant == "before" else ROOT
            env = {**os.environ, "PYTHONPATH": str(code)}
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--device", args.device]
            command += ["--runs", str(args.runs), "--batch-sizes", *map(str, args.batch_sizes)]
            command += ["--capacity", str(args.capacity)] if args.capacity else []
            lines = subprocess.run(command, env=env, cwd=code, check=True, stdout=subprocess.PIPE, text=True).stdout
            for line in lines.splitlines():
                row = json.loads(line)
                results.setdefault((variant, row["batch"]), []).append(row["ms_per_row_step"])
                print(line, file=sys.stderr, flush=True)
    base = "before" if "before" in variants else variants[0]
    for n in args.batch_sizes:
        summary: dict[str, Any] = {"batch": n}
        for variant in variants:
            summary[f"{variant}_ms_per_row_step"] = round(statistics.median(results[(variant, n)]), 4)
        pairs = [(base, variant) for variant in variants if variant != base]
        if {"fixed", "graphs"} <= set(variants) and base != "fixed":
            pairs.append(("fixed", "graphs"))  # eager against graphs, the same fixed-shape step
        for old, new in pairs:
            ratio = summary[f"{old}_ms_per_row_step"] / summary[f"{new}_ms_per_row_step"]
            summary[f"{new}_speedup_vs_{old}"] = round(ratio, 3)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
