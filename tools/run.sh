#!/usr/bin/env bash
# The two entry points of the README. Each first runs the (idempotent, cached) set-up.
#   bash tools/run.sh demo [demo options]    # pretrain a small MixedAE on embedded photos (CPU, <5 min)
#   bash tools/run.sh test [pytest options]  # the test suite
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIXEDAE_VENV:-$ROOT/.venv}"
bash "$ROOT/tools/setup_env.sh"
cmd="${1:-}"; shift || true
case "$cmd" in
  demo) cd "$ROOT" && exec "$VENV/bin/mixedae" demo "$@" ;;
  # one pytest-xdist worker per core (MIXEDAE_TEST_WORKERS=0: in this process), whole test
  # files per worker so that a module's expensive fixture (one pipeline run, one distributed
  # training) is built once, the longest files first (tests/conftest.py LONGEST_FIRST)
  test) cd "$ROOT" && exec "$VENV/bin/python" -m pytest -q -n "${MIXEDAE_TEST_WORKERS:-auto}" \
          --dist loadfile --no-loadscope-reorder tests "$@" ;;
  *) echo "usage: bash tools/run.sh demo|test [options]" >&2; exit 2 ;;
esac
