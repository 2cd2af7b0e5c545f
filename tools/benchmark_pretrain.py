#!/usr/bin/env python
"""Pretraining throughput: MAE vs MixedAE side by side (img/s, peak memory, step-time ratio).

One full training step = forward + backward + AdamW step, bf16 autocast on CUDA. Runs eager
and (``--compile``) torch.compile'd models in the same process, so the ratio compares like with
like on the same device. Each row also gives the step's analytic FLOPs (torch's FlopCounterMode
over one forward + backward of the same config with attn_impl=sdpa, scaled to the batch: the
same model FLOPs for every impl, attention counted dense) and the MFU against the device's
dense bf16 peak (H100 SXM / H200 989 TFLOP/s, H100 PCIe 756, A100 312; None elsewhere).

    python tools/benchmark_pretrain.py                         # GPU: ViT-B/16, batch 256
    python tools/benchmark_pretrain.py --device cpu --model tiny --batch-size 16 --steps 3
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv

from mixedae.runtime.cli import add_debug_flag, run_main  # noqa: E402
import torch  # noqa: E402
from mixedae.pretrain.config import get_preset  # noqa: E402
from mixedae.model.attention.homologous import IMPLS  # noqa: E402
from mixedae.model.mixed_autoencoder import MixedAutoencoder  # noqa: E402


def mode_attn(opts: set) -> dict:
    """Config fields of a benchmark mode's options (see --modes; checked in ``main``)."""
    return dict(attn_impl=next(iter(opts), "sdpa"))


PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("H20", 148.0),
                    ("A100", 312.0), ("L40S", 362.0))


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 tensor-core peak of ``device`` by its name (None when not listed / CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)


def step_flops(cfg, batch_size: int, device: torch.device) -> float:
    """Analytic FLOPs of one forward + backward at ``batch_size`` (see module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode
    g = cfg.group_size
    cfg = dataclasses.replace(cfg, attn_impl="sdpa", batch_size=g)
    torch.manual_seed(0)
    model = MixedAutoencoder(cfg.model_config()).to(device)
    x = torch.randn(g, 3, cfg.img_size, cfg.img_size, device=device)
    with FlopCounterMode(display=False) as fc:
        model(x)["loss"].backward()
    del model
    return fc.get_total_flops() * batch_size / g


def bench(preset: str, args, compiled: bool, attn: dict | None = None) -> dict:
    dev = torch.device(args.device)
    if compiled:  # a fresh cache per model: recompiles of the shared forward code object
        torch._dynamo.reset()  # would otherwise hit dynamo's limit and fall back to eager
    torch.manual_seed(0)
    cfg = get_preset(preset, model=args.model, batch_size=args.batch_size,
                     mixing=args.mixing if preset.startswith("mixedae") else "none",
                     **getattr(args, "overrides", {}), **(attn or {}))
    model = MixedAutoencoder(cfg.model_config()).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                            fused=dev.type == "cuda")
    fwd = torch.compile(model) if compiled else model
    x = torch.randn(args.batch_size, 3, cfg.img_size, cfg.img_size, device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step():
        with amp:
            out = fwd(x)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        out = step()
    sync()
    warm_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    res = dict(preset=preset, compiled=compiled, step_ms=dt * 1e3,
               img_per_s=args.batch_size / dt, warmup_s=warm_s, loss=float(out["loss"].detach()),
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda"
               else None)
    del model, opt, fwd, out
    flops = step_flops(cfg, args.batch_size, dev)
    peak = peak_tflops(dev)
    res.update(gflop_per_step=flops / 1e9, tflop_per_s=flops / dt / 1e12,
               peak_tflop_per_s=peak, mfu=flops / dt / 1e12 / peak if peak else None)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def _main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--mixing", default="compose", choices=["compose", "full"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--modes", default="eager,compiled",
                    help="comma list of eager|compiled, optionally with ':' and '+'-joined "
                         f"option: an attention impl ({'|'.join(IMPLS)}; default sdpa), "
                         "e.g. eager,eager:fused,compiled:triton")
    ap.add_argument("--json", help="append results as JSON lines to this file")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    for mode in args.modes.split(","):   # before any work
        base, _, opts = mode.partition(":")
        opts = set(filter(None, opts.split("+")))
        if base not in ("eager", "compiled") or len(opts) > 1 or opts - set(IMPLS):
            ap.error(f"--modes: {mode!r} is not eager|compiled[:IMPL] with IMPL one of {IMPLS}")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    rows = []
    mae = {}
    for mode in args.modes.split(","):
        base_mode, _, opts = mode.partition(":")
        opts = set(filter(None, opts.split("+")))
        attn = mode_attn(opts)
        pair = {"mae_base": mae[base_mode]} if base_mode in mae else {}
        for preset in ("mae_base", "mixedae_base"):
            if preset in pair:
                continue
            try:
                r = bench(preset, args, compiled=base_mode == "compiled",
                          attn=attn if preset != "mae_base" else None)
            except Exception as e:  # report and go on: the other mode's numbers still count
                print(f"{mode:9s} {preset:13s} FAILED: {type(e).__name__}: {str(e)[:300]}")
                break
            rows.append(r)
            pair[preset] = r
            if preset == "mae_base":
                mae[base_mode] = r
            mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else "n/a"
            print(f"{mode:9s} {preset:13s} ViT-{args.model} bs{args.batch_size}: "
                  f"{r['img_per_s']:8.1f} img/s  {r['step_ms']:7.1f} ms/step  peak {mem}  "
                  f"{r['tflop_per_s']:.1f} TFLOP/s" + (f" MFU {r['mfu']:.3f}  " if r['mfu']
                                                         else "  ") +
                  f"(warmup {r['warmup_s']:.1f}s, loss {r['loss']:.3f})", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**r, "mode": mode, "device": args.device,
                                        "model": args.model, "batch": args.batch_size}) + "\n")
        if len(pair) < 2:
            continue
        ratio = pair["mixedae_base"]["step_ms"] / pair["mae_base"]["step_ms"]
        print(f"{mode:9s} MixedAE/MAE step-time ratio: {ratio:.3f}", flush=True)


def main(argv=None) -> int:
    return run_main("tools/benchmark_pretrain.py", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
