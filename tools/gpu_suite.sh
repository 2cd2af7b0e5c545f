#!/usr/bin/env bash
# Every GPU check in ONE call (<= 8 min on one H100/H200): attention correctness, the
# pretraining benchmark (MAE vs MixedAE, eager + compiled, every attention impl), the dense
# backbone at 512² bf16 vs fp32 and the input pipeline. Needs python3 with torch, timm, numpy
# (no OpenMMLab, no network); runs from the source tree. Prints one table and writes
# bench/results/<date>_<gpu>.jsonl (copied to $OUT when that folder exists).
#
#   bash tools/gpu_suite.sh                        # on the GPU machine
#   bash tools/gpu_suite.sh --device cpu --quick   # every part at toy size, here (~1 min)
# Extra flags go to tools/gpu_suite.py (--parts, --impls, --budget-scale, --data).
#
# Real JPEGs for the loader part: a GPU machine that receives only the source tree needs them
# copied into the ignored folder .bench_data/ first (and carried), e.g. ~27 MB:
#   mkdir -p .bench_data/imagenet_tiny && cp -r ../shared/data/imagenet_tiny/n0[12]* \
#     .bench_data/imagenet_tiny/
# Without any, the loader part times synthetic JPEGs and says so in its rows.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [[ " $* " == *" --device cpu "* ]]; then
  export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"  # Triton kernels through the interpreter
fi
exec "$PY" tools/gpu_suite.py "$@"
