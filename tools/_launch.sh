# Shared by tools/{dist,slurm}_{train,test}.sh (sourced, not run): the project's interpreter and
# the two launchers. PYTHON defaults to the project's .venv/bin/python when present.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
# outside the project's environment: one line saying how to run it (mixedae/runtime/environment.py)
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $0: PYTHON=$PYTHON is not a program on PATH; leave PYTHON unset to use" \
       "$ROOT/.venv/bin/python (create it with: bash tools/setup_env.sh)" >&2; exit 2
fi
"$PYTHON" -m mixedae.runtime.environment "$0" || exit 2

# launch_torchrun NPROC TOOL ARGS...: NPROC processes per node with torchrun (CPU: gloo).
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT.
# Stopping the job (Ctrl-C, scancel): torchrun SIGTERMs the ranks and SIGKILLs those still there
# after --shutdown-timeout: 5 s here instead of 30 (TORCH_ELASTIC_SHUTDOWN_TIMEOUT overrides).
# (When a rank fails, torch 2.14's torchrun waits a fixed 30 s instead; a rank frozen on this
# host is then ended by the ranks that time out: mixedae/runtime/distributed.py.)
launch_torchrun() {
  local nproc=$1 tool=$2; shift 2
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec "$PYTHON" -m torch.distributed.run \
      --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
      --shutdown-timeout="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-5}" \
      --master_addr="${MASTER_ADDR:-127.0.0.1}" --nproc_per_node="$nproc" \
      --master_port="${PORT:-29500}" "$ROOT/tools/$tool" "$@"
}

# launch_srun PARTITION JOB_NAME TOOL ARGS...: one Slurm task per GPU (mmengine's slurm launcher).
# GPUS (total, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun flags).
launch_srun() {
  local partition=$1 job=$2 tool=$3; shift 3
  local gpus=${GPUS:-8}
  local per_node=${GPUS_PER_NODE:-$(( gpus < 8 ? gpus : 8 ))}
  # shellcheck disable=SC2086  # SRUN_ARGS is a list of flags
  exec srun -p "$partition" --job-name="$job" --gres=gpu:"$per_node" --ntasks="$gpus" \
      --ntasks-per-node="$per_node" --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 \
      ${SRUN_ARGS:-} "$PYTHON" -u "$ROOT/tools/$tool" "$@"
}
