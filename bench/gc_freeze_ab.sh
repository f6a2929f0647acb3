#!/bin/bash
# /embed at 8, 32 and 64 clients (texts of 8-20 words), mmserve with MMSERVE_GC_FREEZE off and on, in the order
# off, on, on, off; each run's tables in $OUT/gc_<label>.md (docs/benchmarks.md, "/embed tails").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
run() {
  label=$1; shift
  env "$@" python bench/suite.py --servers mmserve --endpoints /embed --concurrency 8 32 64 --repeat 1 \
    --words 8 20 --rate /embed=0 --output "$OUT/gc_$label.md" --plot "$OUT/gc_$label.png"
}
run off1 MMSERVE_GC_FREEZE=0
run on1 MMSERVE_GC_FREEZE=1
run on2 MMSERVE_GC_FREEZE=1
run off2 MMSERVE_GC_FREEZE=0
grep -H "^| mmserve" "$OUT"/gc_*.md
