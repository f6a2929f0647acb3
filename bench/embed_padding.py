"""Padding-aware micro-batches for embeddings vs the naive batch (every text padded to the batch's longest).

In-process, the MiniLM text tower, no HTTP: batches of `bench.workload.embed_texts` (3 to 48 words) at each
batch size; for each it prints the padding fraction of both plans and their throughput (texts per second of
wall time and of the process's CPU time). Each batch runs under both plans, in alternating order, so both
see the same load (the machine is shared): compare the ratios. One torch thread by default: on two cores
shared with other jobs, two threads wait on each other at every op, which swamps what is measured.

    python -m bench.embed_padding --batch-sizes 8 32 64 --duration-s 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from itertools import cycle, islice

import torch

from bench.workload import embed_texts
from model.length_batches import padding_fraction
from model.text import TextTower


def paired(tower: TextTower, texts: list[str], batch_size: int, duration_s: float) -> dict[bool, dict[str, float]]:
    """Texts per second of both plans on the same batches, taken in turn from `texts`: each batch runs once
    naive and once padding-aware, in alternating order, so both see the same load (wall and CPU time)."""
    stream = cycle(texts)
    spent = {aware: {"wall_s": 0.0, "cpu_s": 0.0} for aware in (False, True)}
    batches, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration_s or batches < 2:
        batch = list(islice(stream, batch_size))
        for aware in (False, True) if batches % 2 == 0 else (True, False):
            tower.padding_aware = aware
            wall, cpu = time.perf_counter(), time.process_time()
            tower(batch)
            spent[aware]["wall_s"] += time.perf_counter() - wall
            spent[aware]["cpu_s"] += time.process_time() - cpu
        batches += 1
    return {
        aware: {"texts_per_s": batches * batch_size / t["wall_s"], "texts_per_cpu_s": batches * batch_size / t["cpu_s"]}
        for aware, t in spent.items()
    }


def padding(tower: TextTower, texts: list[str], batch_size: int) -> float:
    """The padding fraction over all batches of `texts`, with the tower's current plan."""
    padded = computed = 0.0
    for start in range(0, len(texts) - batch_size + 1, batch_size):
        lengths = [len(tower.tokenize(t)) for t in texts[start : start + batch_size]]
        share = padding_fraction(lengths, tower.calls(lengths))
        computed += sum(lengths) / (1 - share)
        padded += sum(lengths) / (1 - share) - sum(lengths)
    return padded / computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch's threads (the shared machine: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = embed_texts(256)
    tower = TextTower()
    with torch.inference_mode():
        tower(texts[:8])  # warm-up
        for batch_size in args.batch_sizes:
            row: dict[str, float | int] = {"batch": batch_size}
            for aware, name in ((False, "naive"), (True, "aware")):
                tower.padding_aware = aware
                row[f"{name}_padding"] = round(padding(tower, texts, batch_size), 3)
            runs = [paired(tower, texts, batch_size, args.duration_s) for _ in range(args.repeats)]
            for aware, name in ((False, "naive"), (True, "aware")):
                for key in ("texts_per_s", "texts_per_cpu_s"):
                    row[f"{name}_{key}"] = round(statistics.median(run[aware][key] for run in runs), 1)
            row["speedup_wall"] = round(row["aware_texts_per_s"] / row["naive_texts_per_s"], 3)
            row["speedup_cpu"] = round(row["aware_texts_per_cpu_s"] / row["naive_texts_per_cpu_s"], 3)
            row["fitted_call_tokens"] = tower.call_cost.tokens
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
