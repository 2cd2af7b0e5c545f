#!/usr/bin/env bash
# Every GPU check in ONE call, ordered by value (pre-flight, the compiled MAE vs MixedAE
# headline, the loader, then correctness, benchmarks, presets, dense backbone), ended cleanly
# before --limit-s (default 480 s). Needs python3 with torch, triton, timm, torchvision,
# pillow, numpy (no venv, no OpenMMLab, no network); runs from the source tree. Every row is
# appended to bench/results/<date>_<gpu>.jsonl (and to $OUT when that folder exists) as it
# is made. Last line: PASS (exit 0) / INCOMPLETE (exit 3) / FAIL (exit 1).
#
#   bash tools/gpu_suite.sh --plan                 # the planned pieces, expected seconds
#   bash tools/gpu_suite.sh                        # on the GPU machine
#   bash tools/gpu_suite.sh --parts eager,compiled,presets,dense   # a second call
#   bash tools/gpu_suite.sh --device cpu --quick   # every part at toy size, here (~30 s)
# Extra flags go to tools/gpu_suite.py (--parts, --impls, --limit-s, --expect-scale, --data).
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
