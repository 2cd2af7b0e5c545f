#!/usr/bin/env python
"""Every GPU check in one run (``tools/gpu_suite.sh`` is the entry point), each part on a time
budget so the whole fits one 8-minute call on an H100/H200; only torch, timm, numpy needed.

  correctness  every homologous-attention impl vs a masked-softmax reference on the device
               (fp32, bf16; both cls modes where the impl has them; values and gradients);
               the Triton selection vs torch.topk (same keys, exactly K); every baseline
               preset fwd/bwd under bf16 with finite grads; compiled loss == eager loss
  loader       tools/benchmark_loader.py: the pretraining engine's input stream for
               --decode cpu (PIL workers, all cores) and --decode gpu (workers read bytes;
               batched decode + augmentation on the GPU)
  dense        the dense backbone (plain ViT-B + relative position bias, 4 feature maps) at
               512², forward+backward, bf16 autocast vs fp32 (TF32 as in training)
  pretrain     tools/benchmark_pretrain.py: MAE vs MixedAE per impl, eager then compiled
               (ViT-B/16, batch 256, bf16), ratios side by side

Prints one table; writes a dated JSONL to bench/results/ (and to $OUT when set).
``--device cpu --quick`` runs every part at toy size (how the suite is tested without a GPU).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv
import torch  # noqa: E402
sys.path.insert(0, str(REPO / "tools"))
import benchmark_loader  # noqa: E402
import benchmark_pretrain  # noqa: E402
import gpu_suite_checks as checks  # noqa: E402
from mixedae.model.homologous_attention import IMPLS  # noqa: E402

# seconds per part; deadlines are cumulative (an early overrun eats later budgets, never the
# total), and a run starts only if its expected time is left
BUDGET_S = dict(correctness=90, loader=40, dense=35, pretrain_eager=70, pretrain_compiled=185)
NEED_S = dict(eager=8, compiled=75)
DATA_CANDIDATES = (REPO / ".bench_data" / "imagenet_tiny", REPO.parent / "shared" / "data" /
                   "imagenet_tiny")
COMPILED_ORDER = ("sdpa", "fused", "triton", "flex", "explicit")  # compiled runs, most wanted


class Suite:
    def __init__(self, args):
        self.args, self.rows, self.t0 = args, [], time.perf_counter()
        self.deadline = self.t0
        self.meta = dict(date=dt.datetime.now().isoformat(timespec="seconds"),
                         device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                         torch=torch.__version__, commit=_commit(), quick=args.quick)

    def add(self, part: str, name: str, summary: str, ok: bool | None = None, **data):
        row = dict(part=part, name=name, summary=summary, ok=ok, **data)
        self.rows.append(row)
        flag = {True: "ok", False: "FAIL", None: "--"}[ok]
        print(f"[{part:17s}] {flag:4s} {name:42s} {summary}", flush=True)

    def run_part(self, part: str, fn):
        self.deadline += BUDGET_S[part] * self.args.budget_scale
        try:
            fn(self, lambda need=0.0: time.perf_counter() + need < self.deadline)
        except Exception as e:  # one broken part must not hide the others' numbers
            self.add(part, "part failed", f"{type(e).__name__}: {str(e)[:300]}", ok=False)

    def write(self):
        name = f"{self.meta['date'][:10]}_{'quick_' if self.args.quick else ''}" \
               f"{self.meta['device'].replace(' ', '_')}.jsonl"
        out = Path(self.args.out_dir) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            for r in self.rows:
                f.write(json.dumps({**self.meta, **r}) + "\n")
        if os.environ.get("OUT") and Path(os.environ["OUT"]).is_dir():
            shutil.copy(out, Path(os.environ["OUT"]) / name)
        return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def synthetic_jpegs(n: int = 128) -> str:
    """Smooth random photos-like JPEGs (500×375, quality 90) when no real images travelled."""
    import tempfile

    import numpy as np
    from PIL import Image
    root = Path(tempfile.mkdtemp(prefix="synthetic_jpegs_")) / "x"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        img.save(root / f"{i}.jpg", quality=90)
    return str(root.parent)


def part_loader(s: Suite, in_budget):
    a = s.args
    data = a.data or next((str(d) for d in DATA_CANDIDATES if d.is_dir()), None)
    kind = "real JPEGs"
    if data is None:
        data, kind = synthetic_jpegs(), "SYNTHETIC JPEGs (no real images here)"
    s.add("loader", "images", f"{kind}: {data}")
    for path, workers in (("cpu", a.workers), ("gpu", min(8, a.workers))):
        if not in_budget():
            s.add("loader", f"{path} path", "skipped: out of budget")
            continue
        r = benchmark_loader.run_loader(path, data, workers, a.loader_seconds,
                                        a.loader_batch, device=a.device,
                                        max_batches=2 if a.quick else None)
        r.pop("part")
        s.add("loader", f"{path} path, {workers} workers / {r['cpus']} cpus",
              f"{r['img_per_s']:8.1f} img/s", **r)


def part_pretrain(s: Suite, in_budget, compiled: bool):
    a = s.args
    part = "pretrain_compiled" if compiled else "pretrain_eager"
    torch.backends.cuda.matmul.allow_tf32 = True  # as tools/benchmark_pretrain.py
    torch.backends.cudnn.allow_tf32 = True
    bargs = argparse.Namespace(device=a.device, model=a.model, batch_size=a.batch_size,
                               mixing="compose", steps=a.steps, warmup=a.warmup,
                               overrides=a.overrides)
    impls = [i for i in (COMPILED_ORDER if compiled else IMPLS) if i in a.impls]
    mae = None
    for impl in ["mae"] + impls:
        if compiled and a.quick:
            s.add(part, impl, "skipped: quick (a CPU compile takes minutes)")
            continue
        if not in_budget(NEED_S["compiled" if compiled else "eager"]):
            s.add(part, f"{impl}", "skipped: out of budget")
            continue
        reason = checks.impl_unavailable(impl, a.device)
        if reason:
            s.add(part, impl, f"skipped: {reason}")
            continue
        preset = "mae_base" if impl == "mae" else "mixedae_base"
        try:
            r = benchmark_pretrain.bench(preset, bargs, compiled=compiled,
                                         attn=None if impl == "mae" else dict(attn_impl=impl))
        except Exception as e:  # report and go on
            s.add(part, impl, f"FAILED {type(e).__name__}: {str(e)[:200]}", ok=False)
            continue
        mae = r if impl == "mae" else mae
        ratio = r["step_ms"] / mae["step_ms"] if mae and impl != "mae" else None
        mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else "n/a"
        s.add(part, f"{'MAE' if impl == 'mae' else 'MixedAE ' + impl} ViT-{a.model} "
              f"bs{a.batch_size}", f"{r['img_per_s']:8.1f} img/s {r['step_ms']:7.1f} ms  "
              + (f"ratio {ratio:.3f}  " if ratio else "") + f"peak {mem} "
              f"warmup {r['warmup_s']:.0f}s", impl=impl, ratio_to_mae=ratio, **r)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="toy sizes (CPU test of the suite)")
    ap.add_argument("--parts", default="correctness,loader,dense,pretrain_eager,"
                    "pretrain_compiled")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--data", help="JPEG folder for the loader part (default: .bench_data/"
                    "imagenet_tiny, then ../shared/data/imagenet_tiny, else synthetic JPEGs)")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="multiply every part's time budget (seconds: %s)" % BUDGET_S)
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    bad = [p for p in parts if p not in ("correctness", "loader", "dense", "pretrain_eager",
                                         "pretrain_compiled")]
    if bad:
        ap.error(f"--parts: unknown part(s) {bad}")
    args.impls = args.impls.split(",")
    if set(args.impls) - set(IMPLS):
        ap.error(f"--impls: unknown impl(s) {sorted(set(args.impls) - set(IMPLS))}; {IMPLS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu --quick)")
    if args.data and not Path(args.data).is_dir():
        ap.error(f"--data {args.data} is not a folder of images")
    q = args.quick
    args.model, args.batch_size = ("micro", 8) if q else ("base", 256)
    args.steps, args.warmup = (1, 1) if q else (10, 3)
    args.overrides = dict(img_size=32, patch_size=8, mask_patch_size=8, decoder_dim=32,
                          decoder_depth=1, decoder_heads=2) if q else {}
    args.workers = 0 if q else os.cpu_count()
    args.loader_seconds, args.loader_batch = (1.0, 4) if q else (12.0, 128)
    s = Suite(args)
    print(f"GPU SUITE on {s.meta['device']}, torch {torch.__version__}, commit "
          f"{s.meta['commit']}{' (quick)' if q else ''}", flush=True)
    table = dict(correctness=checks.part_correctness, loader=part_loader,
                 dense=checks.part_dense,
                 pretrain_eager=lambda s_, b: part_pretrain(s_, b, compiled=False),
                 pretrain_compiled=lambda s_, b: part_pretrain(s_, b, compiled=True))
    for p in parts:
        s.run_part(p, table[p])
    out = s.write()
    fails = [r["name"] for r in s.rows if r["ok"] is False]
    print(f"\n{'part':17s} {'':4s} {'check / run':42s} result")
    for r in s.rows:
        flag = {True: "ok", False: "FAIL", None: "--"}[r["ok"]]
        print(f"{r['part']:17s} {flag:4s} {r['name']:42s} {r['summary']}")
    print(f"\nGPU SUITE: {'PASS' if not fails else 'FAIL ' + str(fails)} in "
          f"{time.perf_counter() - s.t0:.0f} s; results in {out}", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
