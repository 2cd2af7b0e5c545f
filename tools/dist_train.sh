#!/usr/bin/env bash
# Distributed training with torchrun:  bash tools/dist_train.sh CONFIG NPROC [train.py args...]
# NPROC processes per node (one per GPU; without CUDA they run on CPU with gloo).
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8 --pretrained P
# PYTHON defaults to the project's .venv/bin/python when present.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NPROC [tools/train.py options]" >&2; exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_torchrun "$2" train.py "$1" --launcher pytorch "${@:3}"
