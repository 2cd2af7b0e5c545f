"""``mixedae linprobe``: linear probing of a frozen pretrained ViT, MAE's recipe.

==================  =================================================================
feature             ``--feature cls`` (default, MAE's): the cls token after the pretrained
                    final norm; ``avg``: mean of the patch tokens → fresh (unit) LayerNorm
head                BatchNorm1d without affine (eps 1e-6) → Linear (trunc-normal std 0.01,
                    zero bias); only the head trains, the backbone is frozen
optimizer           LARS (``timm.optim.Lars``: momentum 0.9, trust coefficient 1e-3, layer
                    adaptation on the weight, plain momentum on the bias, as MAE's LARS),
                    weight decay 0
base lr             0.1;  lr = blr × batch / 256 (6.4 at batch 16384)
batch size          16384 (global: ranks × per-rank batch × ``--accum-iter``)
schedule            10 warm-up epochs, then cosine to 0, set every iteration; 90 epochs
augmentation        RandomResizedCrop (bicubic) + flip; evaluation Resize 256 → crop 224
==================  =================================================================

Data: ``--data DIR`` (ImageFolder, ImageNet layout: DIR/train, DIR/val) or ``--datasets NAMES
--root ROOT`` (the 11 transfer datasets: train split → test split; multi-label VOC trains with
a masked binary cross-entropy). The batch of the recipe is larger than most of the 11 datasets:
lower ``--batch-size`` for them (the lr follows through blr). Per data ``OUT/<name>/``:
``log.jsonl``, ``tb/``, ``checkpoint.pth`` (atomic; a rerun resumes from it, ``--max-steps``
stops early and resumably), then ``result.json`` (every metric), ``per_class.csv``,
``confusion.csv/png``; ``OUT/results.md`` / ``.csv`` over all data, rewritten after every data
and on every exit. A run stopped by ``--max-steps`` is evaluated as it is and written with
``finished: false`` (marked † in the tables); a rerun resumes it. A finished data is skipped
when rerun; other settings in the same OUT are refused. Every ``result.json`` records
``pretrained``: the :mod:`mixedae.runtime.provenance` record of the ``--checkpoint`` file
(null without one).

Examples::

    torchrun --nproc_per_node 8 -m mixedae.cli linprobe --data /data/imagenet \\
        --checkpoint work/mixedae_b1600 --output-dir work/lin_b1600
    mixedae linprobe --datasets cifar10,pets --root /data/transfer --batch-size 1024 ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch.nn as nn

from mixedae.classification import cli_common
from mixedae.classification import datasets
from mixedae.classification import engine
from mixedae.classification.evaluation import evaluate
from mixedae.classification import results
from mixedae.classification.metrics import multilabel_bce
from mixedae.model.vit import create_vit
from mixedae.runtime.cli import check_flags, run_main
from mixedae.runtime.weights import CHECKPOINT_NAME
from mixedae.runtime.distributed import (get_world_size, init_distributed, is_main_process,
                                         unwrap, wrap_ddp)
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.provenance import pretrained_record
from mixedae.runtime.run_logger import RunLogger, print0
from mixedae.runtime.schedules import cosine_lr

SETTINGS = ("checkpoint", "model", "patch_size", "img_size", "feature", "epochs",
            "warmup_epochs", "batch_size", "accum_iter", "blr", "lr", "min_lr", "weight_decay",
            "eval_crop_pct", "seed")


def get_parser() -> argparse.ArgumentParser:
    p = cli_common.frozen_eval_parser("mixedae linprobe", __doc__)
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--warmup-epochs", type=float, default=10)
    p.add_argument("--batch-size", type=int, default=16384, help="global")
    p.add_argument("--accum-iter", type=int, default=1)
    p.add_argument("--blr", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=10, help="epochs (and at the end)")
    p.add_argument("--eval-crop-pct", type=float, default=0.875)
    p.add_argument("--seed", type=int, default=0)
    cli_common.add_workers_arg(p)
    p.add_argument("--save-every-steps", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step, "
                   "resumably (smoke tests)")
    p.add_argument("--log-every", type=int, default=20)
    cli_common.add_run_flags(p)
    return p


def check_args(args) -> list[str] | None:
    check_flags(args, {"epochs": ">0", "warmup_epochs": ">=0", "batch_size": ">0",
                         "accum_iter": ">0", "blr": ">0", "lr": ">0", "min_lr": ">=0",
                         "weight_decay": ">=0", "eval_batch_size": ">0", "eval_every": ">0",
                         "eval_crop_pct": "(0,1]", "seed": ">=0", "save_every_steps": ">=0",
                         "max_steps": ">0", "log_every": ">0"})
    if args.warmup_epochs >= args.epochs:
        raise ConfigError(f"--warmup-epochs {args.warmup_epochs} must be < --epochs "
                          f"{args.epochs}")
    cli_common.resolve_model_args(args)
    cli_common.resolve_workers(args, "linprobe")
    args.name = cli_common.run_name(args)
    args.abs_lr = args.lr if args.lr is not None else args.blr * args.batch_size / 256
    return cli_common.check_data_args(args)


def build_probe(args, num_classes: int) -> tuple[nn.Module, dict | None]:
    """The frozen ViT with MAE's probe head: BatchNorm1d (no affine) → Linear."""
    model = create_vit(args.model, patch_size=args.patch_size, img_size=args.img_size,
                       num_classes=num_classes,
                       global_pool="token" if args.feature == "cls" else "avg")
    loaded = engine.load_pretrained(model, args.checkpoint) if args.checkpoint else None
    nn.init.trunc_normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(model.embed_dim, affine=False, eps=1e-6),
                               model.head)
    for p in model.parameters():
        p.requires_grad = False
    for p in model.head.parameters():
        p.requires_grad = True
    return model, loaded


def build_lars(head: nn.Module, lr: float, weight_decay: float = 0.0):
    """timm's LARS set up as MAE's: trust-ratio adaptation (and weight decay) on weight
    matrices only, plain momentum 0.9 on biases / 1-d parameters (``eps`` 0, so the trust
    ratio is exactly 1e-3·‖w‖/‖g‖ at weight decay 0)."""
    from timm.optim import Lars
    mats = [p for p in head.parameters() if p.requires_grad and p.ndim > 1]
    vecs = [p for p in head.parameters() if p.requires_grad and p.ndim <= 1]
    return Lars([{"params": mats, "weight_decay": weight_decay, "always_adapt": True},
                 {"params": vecs, "weight_decay": 0.0, "always_adapt": False}],
                lr=lr, momentum=0.9, trust_coeff=0.001, eps=0.0)


def settings(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS}


def _epoch_eval(args, model, test_set, data, device, total, logger):
    def on_epoch_end(epoch: int, step: int) -> None:
        if (epoch + 1) % args.eval_every or step >= total:  # the final one comes after
            return
        ev = evaluate(model, test_set, args.eval_batch_size, device, data.multilabel,
                        args.workers, not args.no_amp)
        logger.log({"event": "eval", "epoch": epoch, "step": step, **results.public_eval(ev)},
                   {f"test/{k}": v for k, v in results.public_eval(ev).items() if k != "n"})
        logger.info(f"[linprobe] {data.name} epoch {epoch}: {results.SHORT[data.metric]} "
                    f"{ev[data.metric]:.2f}")
    return on_epoch_end


def _plan(args, data: datasets.ClsData) -> dict:
    """Per-rank batch, steps per epoch, total and warm-up steps (refusing what cannot run)."""
    world = get_world_size()
    per_rank, rem = divmod(args.batch_size, world * args.accum_iter)
    if rem or not per_rank:
        raise ConfigError(f"--batch-size {args.batch_size} is not divisible by {world} rank(s) "
                          f"× --accum-iter {args.accum_iter}")
    spe = engine.steps_per_epoch(len(data.train_targets), per_rank, args.accum_iter)
    return {"per_rank": per_rank, "spe": spe, "total": args.epochs * spe,
            "warmup": int(round(args.warmup_epochs * spe)), "world": world}


def _fit(args, data: datasets.ClsData, ds_dir: Path, plan: dict, device) -> tuple[dict, dict]:
    """Train the probe (resuming from ``ds_dir/checkpoint.pth``), then evaluate on test."""
    engine.seed_everything(args.seed)
    model, loaded = build_probe(args, data.num_classes)
    model = wrap_ddp(model.to(device), init_distributed())
    train_set = data.dataset("train", datasets.train_transform(args.img_size))
    test_set = data.dataset("test", datasets.eval_transform(args.img_size, args.eval_crop_pct))
    total = plan["total"]
    logger = RunLogger(ds_dir, desc=f"linprobe {data.name}", total=total, start_step=None,
                       progress=not args.no_progress)
    logger.event(event="start", settings=settings(args), pretrained=loaded, lr=args.abs_lr,
                 **plan)
    if loaded:
        logger.info(f"[linprobe] {loaded['line']}")
    logger.info(f"[linprobe] {data.name}: {len(train_set)} train / {len(test_set)} test, "
                f"{data.num_classes} classes, lr {args.abs_lr:.3g}, {total} steps")
    try:
        out = engine.train_loop(
            model=model, optimizer=build_lars(unwrap(model).head, args.abs_lr,
                                              args.weight_decay),
            train_set=train_set, batch_size=plan["per_rank"], accum_iter=args.accum_iter,
            loss_fn=multilabel_bce if data.multilabel else nn.CrossEntropyLoss(),
            total_steps=total, device=device, seed=args.seed, workers=args.workers,
            lr_at=lambda s: cosine_lr(s, args.abs_lr, total, plan["warmup"], args.min_lr),
            ckpt_path=ds_dir / CHECKPOINT_NAME, ckpt_every=args.save_every_steps,
            logger=logger, log_every=args.log_every, amp=not args.no_amp,
            stop_after=args.max_steps,
            on_epoch_end=_epoch_eval(args, model, test_set, data, device, total, logger))
        ev = evaluate(model, test_set, args.eval_batch_size, device, data.multilabel,
                        args.workers, not args.no_amp)
        logger.log({"event": "eval", "step": out["step"], "final": out["finished"],
                    **results.public_eval(ev)},
                   {f"test/{k}": v for k, v in results.public_eval(ev).items() if k != "n"})
    finally:
        logger.close()
    return ev, out


def probe_dataset(args, data: datasets.ClsData, out_dir: Path, device) -> dict | None:
    """Train and evaluate the probe on one data; its summary (None when stopped early: the
    summary of the partial probe is then written with ``finished: false``, and a rerun
    resumes it from the checkpoint)."""
    ds_dir = out_dir / data.name
    done = ds_dir / "result.json"
    if done.is_file() and json.loads(done.read_text()).get("finished", True):
        cli_common.check_settings(ds_dir, settings(args))
        print0(f"[linprobe] {data.name}: done before, skipped")
        return json.loads(done.read_text())
    plan = _plan(args, data)
    cli_common.check_settings(ds_dir, settings(args))
    pretrained = pretrained_record(args.checkpoint) if is_main_process() else None
    t0 = time.time()
    ev, out = _fit(args, data, ds_dir, plan, device)
    print0(f"[linprobe] {data.name} step {out['step']}/{plan['total']}: "
           f"{results.SHORT[data.metric]} {ev[data.metric]:.2f} ({time.time() - t0:.0f}s)")
    summary = cli_common.save_result(ds_dir, data, ev, args.name, method="linprobe",
                            feature=args.feature, lr=args.abs_lr, steps=plan["total"],
                            step=out["step"], finished=out["finished"],
                            resumed_from=out["resumed_from"], settings=settings(args),
                            pretrained=pretrained)
    if not out["finished"]:
        print0("[linprobe] stopped early (--max-steps): partial result written; rerun the "
               "same command to resume")
        return None
    return summary


def write_tables(args, done: list[dict], note: str | None) -> Path | None:
    """OUT/results.md / .csv over every data probed in OUT (partial ones marked)."""
    out_dir = Path(args.output_dir)
    res = results.collect(out_dir / d / "result.json" for d in sorted(
        p.name for p in out_dir.iterdir() if p.is_dir()))
    if not res:
        return None
    return results.write_tables(out_dir, args.name, res,
                          f"Linear probing ({args.feature} feature, MAE recipe)", note=note)[1]


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae linprobe", _main, argv)


def _main(argv: list[str]) -> int:
    return cli_common.parse_and_run(get_parser, check_args, probe_dataset, write_tables, argv)


if __name__ == "__main__":
    sys.exit(main())
