"""``mixedae experiment fig6``: the TopK sampling-accuracy analysis of Fig. 6 over the readings.

Trains a grid {MixedAE, HomoAtt-only (no HomoCon)} × ``seg_embed_mode`` × ``homo_cls`` for a
fixed number of steps on real images with the pretraining engine and its diagnostics, then
writes to ``--output-dir``:

    table.md, results.json   per run: source-identity probe accuracy at init and at the end,
                             HomoCon loss / its floor, TopK accuracy per layer averaged over
                             the last 10 % of the steps, reconstruction loss
    fig6a.png                TopK accuracy per layer (Fig. 6a)
    fig6b.png                final-layer TopK accuracy over steps, with / without HomoCon
    probe.png                source-identity probe accuracy over steps
    <run>/                   each run's config.json, log.jsonl, tb/ (checkpoints removed
                             unless --keep-checkpoints); a finished run is reused unless --redo
                             (``--report-only``: tabulate the finished runs, train nothing)

Scales (same command): ``cpu`` (ViT-tiny, 64 px, 8-px patches: the whole default grid in about
20 min on 2 idle cores), ``gpu`` (ViT-S/16 at 224 px: about 8 min on one H100), ``test``
(micro, seconds; for the tests). The images (default ``../shared/data/imagenet_tiny``) are
shrunk once; ``--probe-images`` of them are held out for the probe and never trained on.

    mixedae experiment fig6 --scale cpu --output-dir outputs/fig6
    mixedae experiment fig6 --scale gpu --device cuda --seg-modes residual,attention
    mixedae experiment fig6 --scale gpu --device cuda --dry-run   # planned runs, estimated time
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms

from mixedae.model.attention.homologous import CLS_MODES
from mixedae.model.segment_embedding import MODES as SEG_MODES
from mixedae.pretrain.config import get_preset
from mixedae.pretrain.data import PretrainImages, list_images, pretrain_transform
from mixedae.runtime.images import load_rgb
from mixedae.pretrain.engine import RunOptions, pretrain
from mixedae.runtime.run_logger import read_jsonl, setup_logging
from mixedae.pretrain.experiment_plots import plot_fig6a, plot_fig6b, plot_probe, write_table
from mixedae.runtime.cli import add_debug_flag, run_main
from mixedae.runtime.errors import ConfigError

log = logging.getLogger("mixedae.pretrain.experiment")

METHODS = {"MixedAE": dict(attention="topk", homo_con=True),
           "HomoAtt-only": dict(attention="topk", homo_con=False)}
_DEC = dict(decoder_dim=128, decoder_depth=2, decoder_heads=4)
SCALES = {  # cfg: PretrainConfig overrides; the rest: run options
    "test": dict(cfg=dict(model="micro", img_size=32, patch_size=8, mask_patch_size=16,
                          decoder_dim=32, decoder_depth=1, decoder_heads=2, homo_con_dim=16,
                          batch_size=8, lr=1e-3),
                 steps=4, probe_images=16, probes=10, shrink=48,
                 cls_modes=("always_visible", "topk"), num_workers=0, max_images=48,
                 step_s={"cpu": (0.1, "measured: 0.13-0.38 s per 4-step run on 2 busy CPU "
                                      "cores, plus ~2 s of start-up per run")}),
    "cpu": dict(cfg=dict(model="tiny", img_size=64, patch_size=8, mask_patch_size=16,
                         batch_size=32, lr=1e-3, **_DEC),
                steps=300, probe_images=64, probes=10, shrink=96,
                cls_modes=("always_visible",), num_workers=0,
                step_s={"cpu": (0.39, "measured: 117 s per 300-step run on 2 idle CPU "
                                      "threads; 6-11 min when the machine was shared")}),
    "gpu": dict(cfg=dict(model="small", img_size=224, patch_size=16, mask_patch_size=32,
                         batch_size=128, lr=1.5e-3, decoder_dim=256, decoder_depth=4,
                         decoder_heads=8),
                steps=400, probe_images=64, probes=5, shrink=256,
                cls_modes=("always_visible",), num_workers=8,
                step_s={"cuda": (1.2, "estimate, not measured: about 8 min per 400-step run "
                                      "on one H100")}),
}


def default_data() -> Path:
    root = Path(os.environ.get("MIXEDAE_DATA", Path(__file__).resolve().parents[2].parent
                               / "shared" / "data"))
    return root / "imagenet_tiny"


def grid(methods, seg_modes, cls_modes) -> list[tuple[str, dict]]:
    """[(run name, config overrides)] for every method × segment mode × cls mode."""
    return [(f"{m}_{s}_{c}", dict(METHODS[m], seg_embed_mode=s, homo_cls=c))
            for m in methods for s in seg_modes for c in cls_modes]


def load_images(root: Path, shrink: int, probe_images: int, img_size: int,
                max_images: int | None = None):
    """(train, probe) datasets of images pre-shrunk to ``shrink`` px (short side); at most
    ``max_images`` of the folder's images (evenly spaced)."""
    resize = transforms.Resize(shrink, transforms.InterpolationMode.BICUBIC)
    files = list_images(root)
    if max_images and len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]
    if len(files) < 2 * probe_images:
        raise ConfigError(f"{root} has {len(files)} images; need at least {2 * probe_images}")
    imgs = [resize(load_rgb(f)) for f in files]
    held = set(np.linspace(0, len(imgs) - 1, probe_images).round().astype(int).tolist())
    tf = pretrain_transform(img_size)
    return (PretrainImages([im for i, im in enumerate(imgs) if i not in held], tf),
            PretrainImages([imgs[i] for i in sorted(held)], tf))


def summarise(name: str, cfg, records: list[dict], wall: float) -> dict:
    """One table row from a run's log.jsonl records."""
    steps = [r for r in records if "loss" in r]
    probes = [r for r in records if "probe_acc" in r]
    last = max(r["step"] for r in steps)
    tail = [r for r in steps if r["step"] > 0.9 * last] or steps[-1:]
    mean = lambda key: float(np.mean([r[key] for r in tail]))
    acc = np.mean([r["topk_acc"] for r in tail], axis=0).tolist()
    return dict(run=name, method="MixedAE" if cfg.homo_con else "HomoAtt-only",
                seg_embed_mode=cfg.seg_embed_mode, homo_cls=cfg.homo_cls, steps=last,
                first_topk_layer=cfg.num_global_layers, chance=1 / cfg.group_size,
                probe_init=probes[0]["probe_acc"] if probes else None,
                probe_end=probes[-1]["probe_acc"] if probes else None,
                probe_chance=probes[0]["probe_chance"] if probes else None,
                homocon_ratio=mean("homocon_ratio") if cfg.homo_con else None,
                topk_acc=acc, topk_mean=float(np.mean(acc)),
                topk_late=float(np.mean(acc[len(acc) // 2:])), topk_final=acc[-1],
                recon=mean("loss_recon"), wall_s=wall,
                curve=[(r["step"], r["topk_acc"][-1]) for r in steps],
                probe_curve=[(r["step"], r["probe_acc"]) for r in probes])


def run_one(name: str, overrides: dict, scale: dict, args, train_ds, probe_ds) -> dict:
    out = Path(args.output_dir) / name
    done = out / "summary.json"
    if done.is_file() and not args.redo:
        log.info("%s: reusing %s", name, done)
        return json.loads(done.read_text())
    steps = args.steps or scale["steps"]
    spe = len(train_ds) // scale["cfg"]["batch_size"]
    epochs = steps / spe  # the cosine schedule ends exactly at the last step
    cfg = get_preset("mixedae_tiny", **{**scale["cfg"], **overrides, "epochs": epochs,
                                        "warmup_epochs": epochs / 10})
    workers = min(scale["num_workers"], os.cpu_count() or 1)
    opts = RunOptions(output_dir=str(out), num_workers=workers, save_every=10 ** 9,
                      max_steps=steps, resume=None, seed=args.seed, device=args.device,
                      amp="bf16", log_every=max(1, steps // 60), progress=not args.no_progress,
                      probe_every=max(1, steps // scale["probes"]),
                      probe_images=scale["probe_images"])
    t0 = time.perf_counter()
    pretrain(cfg, train_ds, opts, probe_dataset=probe_ds)
    records = read_jsonl(out / "log.jsonl")
    summary = summarise(name, cfg, records, time.perf_counter() - t0)
    if not args.keep_checkpoints:
        for f in ("checkpoint.pth", "model.safetensors"):
            (out / f).unlink(missing_ok=True)
    done.write_text(json.dumps(summary) + "\n")
    return summary


def dry_run(runs: list[tuple[str, dict]], scale_name: str, args) -> str:
    """The planned runs with their estimated time on the chosen device (nothing trained)."""
    scale = SCALES[scale_name]
    device = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    steps = args.steps or scale["steps"]
    per_step, basis = scale.get("step_s", {}).get(device, (None, f"no measurement of the "
                                                               f"{scale_name} scale on {device}"))
    out = Path(args.output_dir)
    lines = [f"fig6 --scale {scale_name} on {device}: {len(runs)} run(s) × {steps} steps "
             f"-> {out}"]
    todo = 0
    for name, kw in runs:
        done = (out / name / "summary.json").is_file() and not args.redo
        todo += not done
        est = "finished: reused" if done else (
            f"~{steps * per_step / 60:.1f} min" if per_step else "unknown")
        lines.append(f"  {name:<40} {kw['seg_embed_mode']:<9} {kw['homo_cls']:<15} {est}")
    total = f"~{todo * steps * per_step / 60:.0f} min" if per_step else "unknown"
    lines.append(f"total for {todo} run(s) to train: {total} ({basis})")
    return "\n".join(lines)


def _choices(text: str, allowed, flag: str) -> list[str]:
    items = [t for t in text.split(",") if t]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ConfigError(f"{flag} {text!r}: choose from {', '.join(allowed)}")
    return items


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("mixedae experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=["fig6"])
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    p.add_argument("--data", default=None, help="image folder (default ../shared/data/"
                                                "imagenet_tiny)")
    p.add_argument("--output-dir", default="outputs/fig6")
    p.add_argument("--steps", type=int, default=None, help="steps per run (scale default)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seg-modes", default=",".join(SEG_MODES))
    p.add_argument("--cls-modes", default=None, help="default: the scale's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--redo", action="store_true", help="rerun finished runs")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="no training: table and plots of the grid's finished runs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned runs and their estimated time on the chosen device; "
                        "train nothing")
    add_debug_flag(p)
    return p


def report(rows: list[dict], out: Path) -> None:
    """results.json, table.md and the three plots of the given runs."""
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    write_table(rows, out / "table.md")
    plot_fig6a(rows, out / "fig6a.png")
    plot_fig6b(rows, out / "fig6b.png")
    plot_probe(rows, out / "probe.png")
    print((out / "table.md").read_text())


def finished(out: Path, runs: list[tuple[str, dict]]) -> list[dict]:
    """Summaries of the runs of the grid that have finished in ``out`` (--report-only)."""
    rows = [json.loads((out / name / "summary.json").read_text()) for name, _ in runs
            if (out / name / "summary.json").is_file()]
    if not rows:
        raise ConfigError(f"no finished run of this grid in {out}")
    log.info("report of %d finished run(s) of %d in %s", len(rows), len(runs), out)
    return rows


def _main(argv: list[str]) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(0)
    out = Path(args.output_dir)
    scale = SCALES[args.scale]
    runs = grid(_choices(args.methods, list(METHODS), "--methods"),
                _choices(args.seg_modes, SEG_MODES, "--seg-modes"),
                _choices(args.cls_modes or ",".join(scale["cls_modes"]), CLS_MODES,
                         "--cls-modes"))
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps={args.steps} must be >= 1")
    if args.report_only:
        report(finished(out, runs), out)
        return 0
    if args.dry_run:
        get_preset("mixedae_tiny", **scale["cfg"])
        print(dry_run(runs, args.scale, args))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else default_data()
    get_preset("mixedae_tiny", **scale["cfg"])  # validates the scale before any work
    train_ds, probe_ds = load_images(data, scale["shrink"], scale["probe_images"],
                                     scale["cfg"]["img_size"], scale.get("max_images"))
    out.mkdir(parents=True, exist_ok=True)
    log.info("fig6 at %s scale: %d runs on %d training / %d probe images from %s",
             args.scale, len(runs), len(train_ds), len(probe_ds), data)
    rows = [run_one(name, kw, scale, args, train_ds, probe_ds) for name, kw in runs]
    report(rows, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae experiment", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
