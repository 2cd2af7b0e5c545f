#!/usr/bin/env bash
# Training on a Slurm cluster, one task per GPU (mmengine's slurm launcher):
#   GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# GPUS (total, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun flags).
# MASTER_PORT (the rendezvous port): when unset, every task takes 10000 + SLURM_JOB_ID % 20000
# (mixedae/mm/distributed.py), so jobs sharing a node do not collide on 29500; set it to choose.
# PYTHON defaults to the project's .venv/bin/python when present.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]" >&2; exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_srun "$1" "$2" train.py "$3" --work-dir="$4" --launcher=slurm "${@:5}"
