"""Is ONNX Runtime faster than torch for the MiniLM text tower on this CPU? (issue 24, item 4)

An experiment, not a serving path: exports the tower (encoder, mean pooling and normalisation in one
graph, dynamic batch and length) with `torch.onnx.export`, then runs the same batches of
`bench.workload.embed_texts` (3–48 words) through both, in alternating order, one thread each (the machine
is shared: compare the ratio), and prints texts/s and the least cosine to torch per batch size. Needs
`onnxruntime`, `onnx` and `onnxscript`, which the project does not depend on: install them somewhere and
pass `--packages DIR` (appended to `sys.path`).

    python -m bench.onnx_text --packages /tmp/onnx-packages --batch-sizes 1 8 32 --duration-s 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.workload import embed_texts
from model.pooling import mean_pool
from model.text import TextTower


class Pooled(nn.Module):
    """The tower's computation on padded ids: encoder, mean pooling over the mask, L2 normalisation."""

    def __init__(self, tower: TextTower) -> None:
        super().__init__()
        self.encoder = tower.encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask), dim=-1)


def padded(tower: TextTower, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = [tower.tokenize(t) for t in texts]
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), tower.tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return input_ids, mask


def export(tower: TextTower, path: Path) -> None:
    ids, mask = padded(tower, ["an example text", "a second, longer example text to export with"])
    torch.onnx.export(
        Pooled(tower).eval(),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
        opset_version=17,
        dynamo=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packages", type=Path, help="where onnxruntime, onnx and onnxscript are installed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.packages:
        sys.path.append(str(args.packages))
    import onnxruntime as ort  # type: ignore[import-not-found, unused-ignore]

    torch.set_num_threads(1)
    tower = TextTower(padding_aware=False)
    pooled = Pooled(tower).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "minilm.onnx"
        export(tower, path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    texts = embed_texts(256)

    def run_torch(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = pooled(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        return out

    def run_onnx(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out

    runners: dict[str, Any] = {"torch": run_torch, "onnx": run_onnx}
    for batch_size in args.batch_sizes:
        stream = cycle(texts)
        rates: dict[str, list[float]] = {name: [] for name in runners}
        least_cosine = 1.0
        for repeat in range(args.repeats):
            spent = dict.fromkeys(runners, 0.0)
            batches, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.duration_s or batches < 2:
                ids, mask = padded(tower, list(islice(stream, batch_size)))
                outputs = {}
                names = list(runners) if (batches + repeat) % 2 == 0 else list(reversed(runners))
                for name in names:
                    wall = time.perf_counter()
                    outputs[name] = runners[name](ids, mask)
                    spent[name] += time.perf_counter() - wall
                least_cosine = min(least_cosine, float((outputs["torch"] * outputs["onnx"]).sum(-1).min()))
                batches += 1
            for name in runners:
                rates[name].append(batches * batch_size / spent[name])
        torch_rate, onnx_rate = statistics.median(rates["torch"]), statistics.median(rates["onnx"])
        row = {
            "batch": batch_size,
            "torch_texts_per_s": round(torch_rate, 1),
            "onnx_texts_per_s": round(onnx_rate, 1),
            "speedup": round(onnx_rate / torch_rate, 3),
            "least_cosine": round(least_cosine, 6),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
