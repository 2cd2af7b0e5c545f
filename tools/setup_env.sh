#!/usr/bin/env bash
# Reproducible set-up of the whole MixedAE stack in a virtual environment (idempotent).
#
#   bash tools/setup_env.sh            # creates/updates $MIXEDAE_VENV (default: ./.venv)
#
# What it does and why (details measured in STACK_NOTES):
#   * torch 2.14.1 + torchvision 0.29.1, timm, mmengine, mmdet 3.3, mmseg 1.2.2, pycocotools ...
#   * setuptools pinned < 82: mmcv's setup.py and mmengine 0.10.7 import pkg_resources.
#   * mmcv 2.1.0 WITH compiled ops, built once per machine from the PyPI sdist with the one
#     minimal fix (-std=c++17 -> -std=c++20, required by ATen headers of torch >= 2.13), and the
#     wheel cached in $MIXEDAE_CACHE keyed by mmcv / torch / python / device (cpu or cuda arch).
#     mmdet 3.3 / mmseg 1.2.2 assert mmcv < 2.2.0, hence 2.1.0.
#   * On a machine with nvcc and a visible GPU the same build compiles the CUDA ops for that
#     GPU's architecture; otherwise CPU ops.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIXEDAE_VENV:-$ROOT/.venv}"
CACHE="${MIXEDAE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mixedae}"
PY="${MIXEDAE_PYTHON:-python3.11}"
MMCV_VERSION=2.1.0
TORCH_VERSION=2.14.1
TV_VERSION=0.29.1
JOBS="${MAX_JOBS:-$(nproc)}"

log() { echo "[setup] $*" >&2; }

STAMP_KEY="$(cat "$ROOT/tools/setup_env.sh" "$ROOT/tools/requirements.txt" | sha256sum | cut -c1-16)"
if [ -f "$VENV/.mixedae_stamp" ] && [ "$(cat "$VENV/.mixedae_stamp")" = "$STAMP_KEY" ]; then
  exit 0   # already set up with this exact recipe
fi

command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=(pip_quiet)
# pip, minus the "Location ... is ignored" lines that some machines' pip.conf find-links cause
pip_quiet() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
"${PIP[@]}" install -q --upgrade pip 'setuptools>=77,<82' wheel ninja
log "installing torch $TORCH_VERSION / torchvision $TV_VERSION"
"${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TV_VERSION" 'setuptools>=77,<82'
log "installing python requirements"
"${PIP[@]}" install -q -r "$ROOT/tools/requirements.txt" 'setuptools>=77,<82'

# ---- mmcv with ops: build once per machine, cache the wheel -------------------------------
DEVICE_TAG=cpu
if command -v nvcc >/dev/null && "$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  ARCH="$("$VENV/bin/python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  DEVICE_TAG="cuda-sm${ARCH/./}"
fi
PYTAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$DEVICE_TAG"
if ! "$VENV/bin/python" -c 'import mmcv, mmcv.ops; from mmcv import _ext' 2>/dev/null \
   || [ "$("$VENV/bin/python" -c 'import mmcv; print(mmcv.__version__)')" != "$MMCV_VERSION" ]; then
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION with ops ($DEVICE_TAG), $JOBS jobs; about 30 min on 2 cores, once per machine"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # The one fix: ATen of torch >= 2.13 requires C++20 (upstream: mmcv PR #3340 / issue #3341).
    grep -q -- '-std=c++17' "$SRC/setup.py" || { log "unexpected mmcv setup.py: no -std=c++17 flag"; exit 1; }
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    export MMCV_WITH_OPS=1 MAX_JOBS="$JOBS"
    if [ "$DEVICE_TAG" = cpu ]; then export FORCE_CUDA=0; else export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH"; fi
    # --no-build-isolation: in an isolated build env torch is absent and ops are silently skipped.
    (cd "$SRC" && "${PIP[@]}" wheel -v --no-deps --no-build-isolation . -w "$BUILD/out") > "$BUILD/build.log" 2>&1 \
      || { tail -50 "$BUILD/build.log" >&2; log "mmcv build failed (full log above)"; exit 1; }
    mkdir -p "$WHEEL_DIR.tmp.$$"
    cp "$BUILD"/out/mmcv-*.whl "$WHEEL_DIR.tmp.$$/"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp.$$" "$WHEEL_DIR"   # atomic publish of the cache entry
    log "cached $(ls "$WHEEL_DIR")"
  fi
  "${PIP[@]}" install -q "$WHEEL_DIR"/mmcv-*.whl
fi
"$VENV/bin/python" -c 'from mmcv import _ext' || { log "mmcv installed without compiled ops"; exit 1; }
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
echo "$STAMP_KEY" > "$VENV/.mixedae_stamp"
log "ready: $VENV"
