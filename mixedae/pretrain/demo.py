"""``mixedae demo``: a few-minute CPU pretraining on real photos that ship with installed packages.

No download: the images are scikit-image's ``skimage.data`` samples (astronaut, coffee, chelsea,
rocket, ...) and scikit-learn's ``load_sample_images()`` (china, flower). A small MixedAE
(``mixedae_tiny`` encoder at 64 px, 8-px patches, 16-px mask patches, r = 0.25) is pretrained
on random resized crops of them with the same engine as ``mixedae pretrain``; the run writes

    <output-dir>/checkpoint.pth, model.safetensors, log.jsonl, tb/   (as ``mixedae pretrain``)
    <output-dir>/reconstructions.png   rows: original / mixed input / reconstruction per source
    <output-dir>/curves.png            loss terms and TopK sampling accuracy per layer
    <output-dir>/report/report.html    the ``mixedae report`` page of the run (+ .md, PNGs)

    mixedae demo                      # 300 steps: about 2 minutes of training on 2 idle CPU
                                      # cores; a busy machine stops training at 240 s
                                      # (--time-limit); pictures + report take ~30 s more
    mixedae demo --steps 20 --output-dir /tmp/demo
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mixedae.pretrain.config import get_preset
from mixedae.pretrain.data import PretrainImages, eval_view, packaged_photos, pretrain_transform
from mixedae.pretrain.engine import RunOptions, pretrain
from mixedae.report.maps import plot_reconstructions
from mixedae.runtime.cli import add_debug_flag, check_flags, check_writable_dir, run_main
from mixedae.runtime.distributed import parse_device
from mixedae.runtime.run_logger import read_jsonl, setup_logging

log = logging.getLogger("mixedae.pretrain.demo")

STEPS_PER_EPOCH = 10


def plot_curves(log_path: Path, path: Path, first_block: int = 1) -> None:
    """Loss terms and TopK accuracy per homologous block (block index = encoder layer)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = read_jsonl(log_path)
    recs = [r for r in recs if "loss" in r]  # not the probe's lines
    steps = [r["step"] for r in recs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for k in ("loss", "loss_recon", "loss_homocon"):
        a.plot(steps, [r[k] for r in recs], label=k)
    a.set_xlabel("step"), a.set_title("loss"), a.legend()
    acc = np.array([r["topk_acc"] for r in recs], dtype=float)
    if acc.ndim == 2 and acc.shape[1]:
        for j in range(acc.shape[1]):
            b.plot(steps, acc[:, j], lw=0.8, alpha=0.6, label=f"block {first_block + j}")
        b.plot(steps, acc.mean(1), "k", lw=2, label="mean")
        b.legend(fontsize=6, ncol=2)
    b.set_xlabel("step"), b.set_title("TopK sampling accuracy (homologous attention)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo_config(args: argparse.Namespace):
    """``mixedae_tiny`` (the paper's method and defaults, segment embeddings included) at the
    demo's size."""
    epochs = -(-args.steps // STEPS_PER_EPOCH)
    return get_preset("mixedae_tiny", model=args.model, img_size=args.img_size, patch_size=8,
                      mask_patch_size=16, batch_size=args.batch_size, lr=args.lr,
                      epochs=epochs, warmup_epochs=min(2, max(epochs // 10, 0)))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("mixedae demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="outputs/demo")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (schedule length)")
    p.add_argument("--time-limit", type=float, default=240.0,
                   help="stop training earlier after this many seconds (keeps the demo short "
                        "on a slow or busy CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--model", default="tiny", help="ViT size (tiny, or micro for a quick look)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--resume", default="none", help="'auto' to continue a previous demo run")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae demo", _main, argv)


def _main(argv: list[str]) -> int:
    args = get_args_parser().parse_args(argv)
    check_flags(args, {"steps": ">=1", "time_limit": ">0", "batch_size": ">=1",
                       "img_size": ">=1", "lr": ">0", "seed": ">=0", "num_workers": ">=0"})
    parse_device(args.device)
    setup_logging(0)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    cfg = demo_config(args)
    check_writable_dir(out)
    photos = packaged_photos()
    names = list(photos)
    log.info("demo: %d packaged photos (%s)", len(names), ", ".join(names))
    # a virtual epoch of STEPS_PER_EPOCH batches of random crops of the photos
    n = cfg.batch_size * STEPS_PER_EPOCH
    sources = [photos[names[i % len(names)]] for i in range(n)]
    dataset = PretrainImages(sources, pretrain_transform(cfg.img_size, cfg.crop_scale))
    opts = RunOptions(output_dir=str(out), num_workers=args.num_workers, save_every=10 ** 9,
                      max_steps=args.steps, time_limit=args.time_limit,
                      resume=None if args.resume == "none" else args.resume,
                      seed=args.seed, device=args.device, amp="none", log_every=5)
    result = pretrain(cfg, dataset, opts)

    g = cfg.group_size
    shown = names[:2 * g] if len(names) >= 2 * g else [names[i % len(names)] for i in range(g)]
    view = eval_view(cfg.img_size)
    imgs = torch.stack([view(photos[k]) for k in shown]).to(next(result.model.parameters()).device)
    model = result.model.eval()
    torch.manual_seed(args.seed)
    vis = model.visualize(imgs)
    plot_reconstructions(vis, out / "reconstructions.png", shown)
    plot_curves(out / "log.jsonl", out / "curves.png", cfg.num_global_layers)
    m = result.metrics
    acc = f"{np.mean(m['topk_acc']):.3f}" if m.get("topk_acc") else "n/a"
    print(f"demo finished in {time.perf_counter() - t0:.0f}s: step {result.step}, "
          f"loss {m.get('loss', float('nan')):.4f} (recon {m.get('loss_recon', float('nan')):.4f}"
          f", homocon {m.get('loss_homocon', float('nan')):.4f}), mean TopK acc {acc}")
    for f in ("reconstructions.png", "curves.png", "checkpoint.pth", "model.safetensors"):
        print(f"  {out / f}")
    from mixedae.report.build import ReportOptions, write_report
    print(f"report: {write_report(out, (), ReportOptions(out=out / 'report', seed=args.seed))}")
    return 0
