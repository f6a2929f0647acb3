#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent device machine (no network there: carry .venv).
#   run: bash bench/gpu_check.sh      (writes what it measured under $OUT, or bench/results/gpu/)
# 1. the GPU tests (HF adapters in bf16, the built-in model's continuous batching = greedy alone, its decoding
#    step as CUDA graphs = eager token for token, training steps on CUDA); 2. the decoding step's time per token,
#    eager (shapes changing; fixed per bucket) against CUDA graphs, at batch 1, 8 and 32, with the speed-up;
#    3. the benchmark suite with --device cuda, quick, when wrk is there (it needs wrk and the bench extra:
#    carry them or install them first); 4. nvidia-smi, for the record.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
. .venv/bin/activate 2>/dev/null || true
{ date -u; nvidia-smi; python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
    > "$out/machine.txt" 2>&1
timeout 300 python -m pytest -q -m gpu tests/gpu 2>&1 | tee "$out/gpu-tests.txt"
# one JSON line per batch size: ms per token of each variant, graphs_speedup_vs_fixed (eager fixed shapes → graphs)
timeout 240 python -m bench.decode_step --device cuda --batch-sizes 1 8 32 --repeats 2 --runs 3 \
    --variants dynamic fixed graphs 2>"$out/decode-step-runs.txt" | tee "$out/decode-step.txt"
if command -v wrk >/dev/null; then
    timeout 420 python bench/suite.py --quick --device cuda 2>&1 | tee "$out/suite.txt"
    cp bench/results/quick.* "$out/" 2>/dev/null || true
else
    echo "wrk is not installed here: the suite was not run" | tee "$out/suite.txt"
fi
