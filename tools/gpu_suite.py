#!/usr/bin/env python
"""Every GPU check in one call (``tools/gpu_suite.sh`` is the entry point), ordered by value so
that a call cut short still returns the numbers that matter; needs python3 with torch, timm,
torchvision, pillow, numpy (triton for the Triton impls), never an OpenMMLab package.

  preflight   (<= 10 s) GPU name and memory; torch / triton / timm / torchvision versions and
              "no mm* module imported"; a small JPEG decoded on the device (nvJPEG); /dev/shm
  headline    compiled MAE vs compiled MixedAE with sdpa and with the best Triton impl, each
              MixedAE run preceded by a short correctness check of its impl on the device
  loader      tools/benchmark_loader.py: cpu-pil (the old CPU path), cpu (uint8 crops), gpu
  correctness every other impl vs a masked-softmax reference (fp32, bf16, both cls modes,
              values and gradients); the Triton selection vs torch.topk and its time
  eager       MAE vs MixedAE per impl, eager;  compiled: the remaining impls, compiled
  presets     every baseline preset fwd/bwd under bf16 with finite grads; compiled == eager
  dense       the dense backbone (plain ViT-B + relative position bias, 4 feature maps, 512²,
              fwd+bwd, bf16 vs fp32): the non-mm path (no OpenMMLab on the GPU machine)

Each Triton impl's first check runs in a child process with CUDA_LAUNCH_BLOCKING=1 (an illegal
address cannot poison the suite; its rows carry n_regs, n_spills, block sizes and warps of
every kernel it compiled). Every row is appended to the JSONL (and to $OUT when set) and
flushed the moment it exists. Every piece starts only if its expected time is left before
``--limit-s``; a watchdog ends the suite before the limit with a final row naming what was not
reached. Verdict (last line): PASS only if every planned row ran and passed (exit 0),
``INCOMPLETE (n skipped: ...)`` (exit 3), ``FAIL`` on any failure (exit 1). ``--plan`` prints
the planned pieces with their expected seconds and runs nothing.
"""
from __future__ import annotations

import time

T0 = time.perf_counter()  # --limit-s counts from here, imports included

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv

from mixedae.runtime.cli import add_debug_flag, run_main  # noqa: E402
import torch  # noqa: E402
sys.path.insert(0, str(REPO / "tools"))
import gpu_suite_checks as checks  # noqa: E402
from mixedae.model.attention.homologous import IMPLS, TRITON_IMPLS  # noqa: E402

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
PARTS = ("preflight", "headline", "loader", "correctness", "eager", "compiled", "presets",
         "dense")
HEADLINE_TRITON = ("fused", "triton")  # the best Triton impl first (fused: one kernel pair)
# expected seconds per piece on one H100 (cold compiles included) / at --quick size on a CPU
EXPECT = dict(preflight=(3, 2), check=(10, 6), child_check=(35, 25), compiled=(85, 0),
              eager=(12, 4), loader=(18, 4), selection=(8, 4), preset=(4, 2),
              compiled_check=(50, 0), dense=(25, 4))


@dataclass
class Piece:
    part: str
    name: str
    expect_s: float
    run: Callable
    rows: list = field(default_factory=list)


class Suite:
    def __init__(self, args):
        self.args, self.rows, self.t0 = args, [], T0
        self.lock = threading.RLock()
        self.done = False
        self.child: subprocess.Popen | None = None
        dev = args.device
        self.meta = dict(date=dt.datetime.now().isoformat(timespec="seconds"),
                         device=torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                         torch=torch.__version__, commit=_commit(), quick=args.quick)
        name = f"{self.meta['date'][:10]}_{'quick_' if args.quick else ''}" \
               f"{self.meta['device'].replace(' ', '_')}.jsonl"
        self.paths = [Path(args.out_dir) / name]
        out = os.environ.get("OUT")
        if out and Path(out).is_dir() and Path(out).resolve() != Path(args.out_dir).resolve():
            self.paths.append(Path(out) / name)
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
        self.files = [open(p, "a") for p in self.paths]

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, part: str, name: str, summary: str, ok: bool | None = None, **data):
        """One row: written and flushed to every JSONL first, then printed."""
        with self.lock:
            if self.done:
                return
            row = dict(part=part, name=name, summary=summary, ok=ok,
                       t_s=round(self.elapsed(), 1), **data)
            self.rows.append(row)
            line = json.dumps({**self.meta, **row}, default=str) + "\n"
            for f in self.files:
                f.write(line)
                f.flush()
            flag = {True: "ok", False: "FAIL", None: "--"}[ok]
            print(f"[{part:11s}] {flag:4s} {name:44s} {summary}", flush=True)

    def skip(self, part: str, name: str, reason: str, **data):
        self.add(part, name, f"skipped: {reason}", skipped=reason, **data)

    def finish(self, not_reached: list, reason: str) -> int:
        """The closing row and verdict (once, from the main thread or the watchdog)."""
        with self.lock:
            if self.done:
                return EXIT_INCOMPLETE
            if not_reached:
                self.add("suite", "not reached", f"{reason}: {len(not_reached)} piece(s): "
                         + ", ".join(not_reached), not_reached=not_reached, skipped=reason)
            fails = [r["name"] for r in self.rows if r["ok"] is False]
            skipped = [r["name"] for r in self.rows if r.get("skipped") and
                       r["name"] != "not reached"] + not_reached
            if fails:
                verdict, code = f"FAIL ({len(fails)}: {', '.join(fails)})", EXIT_FAIL
            elif skipped:
                verdict, code = f"INCOMPLETE ({len(skipped)} skipped: {', '.join(skipped)})", \
                    EXIT_INCOMPLETE
            else:
                verdict, code = "PASS", EXIT_PASS
            self.add("suite", "verdict", verdict, ok=not fails if not skipped else None,
                     verdict=verdict.split()[0], exit_code=code)
            self.done = True
            for f in self.files:
                f.close()
            print(f"\n{'part':11s} {'':4s} {'check / run':44s} result")
            for r in self.rows[:-1]:
                flag = {True: "ok", False: "FAIL", None: "--"}[r["ok"]]
                print(f"{r['part']:11s} {flag:4s} {r['name']:44s} {r['summary']}")
            print(f"results in {self.paths[0]}\nGPU SUITE: {verdict} in {self.elapsed():.0f} s",
                  flush=True)
            return code


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ---------------------------------------------------------------- the plan, in order of value
def plan(args) -> list[Piece]:
    q, dev, impls = args.quick, args.device, args.impls
    e = {k: v[1 if q else 0] for k, v in EXPECT.items()}
    P: list[Piece] = []
    args.not_planned = []  # what this CPU cannot run at all (on CUDA every miss is a skip)

    def add(part, name, kind, run, scale=1.0, impl=None):
        reason = impl and dev == "cpu" and checks.impl_unavailable(impl, dev)
        if reason:
            args.not_planned.append(f"{name} ({reason})")
            return
        P.append(Piece(part, name, e[kind] * scale * args.expect_scale, run))

    add("preflight", "gpu", "preflight", lambda s: checks.preflight_gpu(s), 0.3)
    add("preflight", "versions, no mm* import", "preflight", checks.preflight_versions, 0.3)
    add("preflight", "JPEG decode on the device", "preflight", checks.preflight_decode)
    add("preflight", "/dev/shm", "preflight", checks.preflight_shm, 0.1)
    # headline: compiled on the GPU; eager at --quick size (a CPU compile takes minutes)
    bench_kind = "eager" if q else "compiled"
    compiled = not q
    triton_best = next((i for i in HEADLINE_TRITON if i in impls and
                        not checks.impl_unavailable(i, dev)), None)
    head = [i for i in ("sdpa",) if i in impls] + ([triton_best] if triton_best else [])
    add("headline", f"MAE {'compiled' if compiled else 'eager'}", bench_kind,
        lambda s: bench(s, "headline", "mae", compiled))
    for impl in head:
        kind = "child_check" if impl in TRITON_IMPLS else "check"
        add("headline", f"check {impl}", kind, lambda s, i=impl: check_impl(s, "headline", i))
        add("headline", f"MixedAE {impl} {'compiled' if compiled else 'eager'}", bench_kind,
            lambda s, i=impl: bench(s, "headline", i, compiled, needs_check=True))
    for path in ("cpu-pil", "cpu", "gpu"):
        add("loader", f"loader {path}", "loader", lambda s, p=path: checks.loader_row(s, p))
    for impl in impls:
        if impl in head:
            continue
        kind = "child_check" if impl in TRITON_IMPLS else "check"
        add("correctness", f"check {impl}", kind,
            lambda s, i=impl: check_impl(s, "correctness", i))
    if "triton" in impls:
        add("correctness", "selection vs torch.topk", "selection", checks.selection)
    if compiled:  # (at --quick size the headline already ran these eager)
        add("eager", "MAE eager", "eager", lambda s: bench(s, "eager", "mae", False))
    for impl in (i for i in impls if compiled or i not in head):
        add("eager", f"MixedAE {impl} eager", "eager",
            lambda s, i=impl: bench(s, "eager", i, False, needs_check=True), impl=impl)
    if not q:
        for impl in (i for i in checks.COMPILED_ORDER if i in impls and i not in head):
            add("compiled", f"MixedAE {impl} compiled", "compiled",
                lambda s, i=impl: bench(s, "compiled", i, True, needs_check=True))
    for preset, impl in checks.preset_runs(q, impls):
        add("presets", f"{preset} {impl} fwd/bwd", "preset",
            lambda s, p=preset, i=impl: checks.preset_row(s, p, i), impl=impl)
    if not q:
        for impl in (i for i in ("sdpa", "fused") if i in impls):
            add("presets", f"compiled == eager ({impl})", "compiled_check",
                lambda s, i=impl: checks.compiled_vs_eager(s, i))
    add("dense", "dense backbone fp32 vs bf16", "dense", checks.dense)
    return [p for p in P if p.part in args.parts]


# ------------------------------------------------------------------------------- the pieces
def check_impl(s: Suite, part: str, impl: str):
    """The correctness check of ``impl``; a Triton impl in a child process (see docstring)."""
    reason = checks.impl_unavailable(impl, s.args.device, checking=True)
    if reason:
        s.skip(part, f"check {impl}", reason)
        return
    if impl not in TRITON_IMPLS:
        checks.check_impl_rows(s, part, impl)
    else:
        run_child(s, part, impl)
    s.checked[impl] = not any(r["ok"] is False for r in s.rows if r.get("impl") == impl)


def child_cmd(a, impl: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", impl, "--device",
            a.device] + (["--quick"] if a.quick else [])


def run_child(s: Suite, part: str, impl: str):
    a = s.args
    cmd = child_cmd(a, impl)
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "PYTHONUNBUFFERED": "1"}
    left = a.limit_s - a.grace_s - s.elapsed()
    p = s.child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env, cwd=REPO)
    timer = threading.Timer(max(1.0, left), p.kill)
    timer.start()
    try:
        for line in p.stdout:  # rows as the child makes them: a crash keeps the earlier ones
            if line.startswith("ROW "):
                r = json.loads(line[4:])
                s.add(part, r.pop("name"), r.pop("summary"), r.pop("ok"), **r)
        err = p.stderr.read()
        rc = p.wait()
    finally:
        timer.cancel()
        s.child = None
    if rc != 0:
        last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), "")
        s.add(part, f"check {impl} child process", f"exited rc={rc}: {last[:300]}", ok=False,
              impl=impl, rc=rc)


def bench(s: Suite, part: str, impl: str, compiled: bool, needs_check: bool = False):
    a = s.args
    label = f"{'MAE' if impl == 'mae' else 'MixedAE ' + impl} {'compiled' if compiled else 'eager'}"
    reason = checks.impl_unavailable(impl, a.device)
    if not reason and needs_check and impl in TRITON_IMPLS and s.checked.get(impl) is False:
        reason = "its correctness check failed"
    if not reason and needs_check and impl in TRITON_IMPLS and impl not in s.checked:
        reason = "its correctness check did not run"
    if reason:
        s.skip(part, label, reason, impl=impl)
        return
    try:
        r = checks.bench_row(a, impl, compiled)
    except Exception as e:  # report and go on
        s.add(part, label, f"FAILED {type(e).__name__}: {str(e)[:200]}", ok=False, impl=impl)
        return
    key = "compiled" if compiled else "eager"
    if impl == "mae":
        s.mae[key] = r
    mae = s.mae.get(key)
    ratio = r["step_ms"] / mae["step_ms"] if mae and impl != "mae" else None
    mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else "n/a"
    mfu = f"{r['tflop_per_s']:.1f} TFLOP/s " + \
        (f"MFU {r['mfu']:.3f}  " if r.get("mfu") is not None else "")
    s.add(part, f"{label} ViT-{a.model} bs{a.batch_size}",
          f"{r['img_per_s']:8.1f} img/s {r['step_ms']:7.1f} ms  " +
          (f"ratio {ratio:.3f}  " if ratio else "") + f"peak {mem}  {mfu}"
          f"warmup {r['warmup_s']:.0f}s", impl=impl, ratio_to_mae=ratio, **r)


# --------------------------------------------------------------------------------- running
def run(s: Suite, pieces: list[Piece]) -> int:
    a = s.args
    s.checked, s.mae = {}, {}
    state = dict(i=0)

    def watchdog():
        if s.child is not None:
            s.child.kill()
        left = [p.name for p in pieces[state["i"]:]]
        code = s.finish(left, f"watchdog at {s.elapsed():.0f} s (--limit-s {a.limit_s:g}); "
                        "not reached or not finished")
        os._exit(code)

    dog = threading.Timer(max(0.0, a.limit_s - a.grace_s - s.elapsed()), watchdog)
    dog.daemon = True
    dog.start()
    for i, p in enumerate(pieces):
        state["i"] = i
        left = a.limit_s - a.grace_s - s.elapsed()
        if p.expect_s > left:
            s.skip(p.part, p.name, f"expects {p.expect_s:.0f} s, {max(0, left):.0f} s left "
                   f"before --limit-s {a.limit_s:g}")
            continue
        try:
            p.run(s)
        except Exception as e:  # one broken piece must not hide the others' numbers
            s.add(p.part, p.name, f"{type(e).__name__}: {str(e)[:300]}", ok=False)
    state["i"] = len(pieces)
    dog.cancel()
    return s.finish([], "")


def child_main(args) -> int:
    """``--child IMPL``: the correctness rows of one impl, printed as ``ROW {json}`` lines."""
    class Printer:
        def add(self, part, name, summary, ok=None, **data):
            print("ROW " + json.dumps(dict(name=name, summary=summary, ok=ok, **data),
                                      default=str), flush=True)
    p = Printer()
    p.args = args
    checks.check_impl_rows(p, "child", args.child)
    return 0


def _main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="toy sizes (CPU test of the suite)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma list of " + "|".join(PARTS))
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--data", help="JPEG folder for the loader part (default: .bench_data/"
                    "imagenet_tiny, then ../shared/data/imagenet_tiny, else synthetic JPEGs)")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--limit-s", type=float, default=480.0,
                    help="the whole suite ends (cleanly, with a closing row) before this")
    ap.add_argument("--grace-s", type=float, default=None,
                    help="seconds kept free before --limit-s (default 15, quick 2)")
    ap.add_argument("--expect-scale", type=float, default=1.0,
                    help="multiply every expected time (the gate of each piece; < 1 lets "
                         "pieces start that may not finish: the watchdog ends them)")
    ap.add_argument("--plan", action="store_true", help="print the planned pieces and exit")
    ap.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    args.parts = args.parts.split(",")
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown part(s) {bad}; choose from {PARTS}")
    args.impls = args.impls.split(",")
    if set(args.impls) - set(IMPLS):
        ap.error(f"--impls: unknown impl(s) {sorted(set(args.impls) - set(IMPLS))}; {IMPLS}")
    if args.device not in ("cuda", "cpu"):
        ap.error(f"--device {args.device}: cuda or cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu --quick)")
    if args.data and not Path(args.data).is_dir():
        ap.error(f"--data {args.data} is not a folder of images")
    if args.limit_s <= 0 or args.expect_scale <= 0:
        ap.error(f"--limit-s {args.limit_s:g} and --expect-scale {args.expect_scale:g} must "
                 "be > 0")
    args.grace_s = (2.0 if args.quick else 15.0) if args.grace_s is None else args.grace_s
    checks.configure(args)
    if args.child:
        return child_main(args)
    pieces = plan(args)
    if args.plan:
        total = 0.0
        print(f"GPU SUITE plan ({'quick, ' if args.quick else ''}{args.device}; "
              f"--limit-s {args.limit_s:g}):")
        for p in pieces:
            total += p.expect_s
            print(f"  {p.part:11s} {p.name:44s} {p.expect_s:6.1f} s   (by {total:6.1f} s)")
        print(f"  {len(pieces)} pieces, {total:.0f} s expected")
        for n in args.not_planned:
            print(f"  not planned on this device: {n}")
        if total > args.limit_s - args.grace_s:
            late = [p for p in pieces if sum(x.expect_s for x in pieces[:pieces.index(p) + 1])
                    > args.limit_s - args.grace_s]
            print(f"  beyond --limit-s: {len(late)} piece(s) from '{late[0].name}' on; a "
                  f"second call reaches them, e.g. --parts "
                  f"{','.join(dict.fromkeys(p.part for p in late))}")
        return EXIT_PASS
    s = Suite(args)
    print(f"GPU SUITE on {s.meta['device']}, torch {torch.__version__}, commit "
          f"{s.meta['commit']}{' (quick)' if args.quick else ''}; {len(pieces)} pieces, "
          f"--limit-s {args.limit_s:g}", flush=True)
    if args.not_planned:
        s.add("preflight", "not planned on this device", "; ".join(args.not_planned),
              not_planned=args.not_planned)
    return run(s, pieces)


def main(argv=None) -> int:
    return run_main("tools/gpu_suite.py", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
