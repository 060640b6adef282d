#!/usr/bin/env bash
# One-shot GPU benchmark of baldro-pl (benchmarks/gpu_suite.py): step time, tokens/s, MFU and peak memory of
# NPO with and without BalDRO, the public code's patterns, the forward + backward floor, FSDP vs no FSDP and a
# micro-batch sweep, on a ~1.1B Llama built from a config (no download), bf16, in <= 8 minutes on one GPU.
#
# Usage:
#   bash benchmarks/gpu_suite.sh                      # results in benchmarks/results/gpu_suite.{json,md}
#   bash benchmarks/gpu_suite.sh --out DIR            # elsewhere; every gpu_suite.py option passes through
#   bash benchmarks/gpu_suite.sh --tiny               # smoke test on a CPU: every case on a tiny model
#   bash benchmarks/gpu_suite.sh --cases baldro-pl,floor --budget-s 120   # a subset, a shorter budget
#   PYTHON=/path/to/python bash benchmarks/gpu_suite.sh                   # another interpreter (default python3)
#
# With the device tool: run(command="bash benchmarks/gpu_suite.sh", timeout_s=600). When $OUT is set, the JSON,
# the Markdown and the console log (gpu_suite.log) are copied into it. Nothing is installed or downloaded: the
# machine's torch, transformers, lightning and torchmetrics are used, and this repository goes on PYTHONPATH.
# Exit status: gpu_suite.py's (1 when a case failed; skipped and out-of-memory cases do not count).
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="$REPO/benchmarks/results"
previous=""
for arg in "$@"; do  # where gpu_suite.py will write (the last --out wins, as in argparse)
    case "$arg" in
        --out=*) RESULTS="${arg#--out=}" ;;
    esac
    if [ "$previous" = "--out" ]; then RESULTS="$arg"; fi
    previous="$arg"
done
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LOG="$(mktemp "${TMPDIR:-/tmp}/gpu_suite.XXXXXX.log")"
"${PYTHON:-python3}" "$REPO/benchmarks/gpu_suite.py" --out "$RESULTS" "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    for name in gpu_suite.json gpu_suite.md; do
        if [ -f "$RESULTS/$name" ]; then cp "$RESULTS/$name" "$OUT/$name"; fi
    done
    cp "$LOG" "$OUT/gpu_suite.log"
fi
rm -f "$LOG"
exit "$status"
