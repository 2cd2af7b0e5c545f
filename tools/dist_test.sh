#!/usr/bin/env bash
# Distributed evaluation with torchrun:
#   bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py args...]
# NPROC processes per node (one per GPU; without CUDA they run on CPU with gloo). Multi-node
# and PYTHON as in tools/dist_train.sh.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NPROC [tools/test.py options]" >&2; exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_torchrun "$3" test.py "$1" "$2" --launcher pytorch "${@:4}"
