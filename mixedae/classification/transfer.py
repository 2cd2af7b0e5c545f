"""``mixedae transfer``: the 11-dataset downstream classification benchmark (Table 2).

Protocol (Appendix B "Downstream classification", following [39, 61]):

* model: the pretrained ViT with a fresh linear head on the mean of the patch tokens after
  ``fc_norm`` (exactly the fine-tuning classifier of ``mixedae finetune``), drop path 0.1;
  the whole model is fine-tuned;
* optimisation: SGD, momentum 0.9, weight decay 0, batch size 64 (global), 5,000 iterations
  (``--iters``), cosine learning-rate schedule per iteration (no warm-up by default), fp32 on
  CPU / bf16 autocast on CUDA;
* augmentation: train RandomResizedCrop(224, scale (0.08, 1), bicubic) + horizontal flip;
  test resize the short side to 256 (= 224/0.875) + center crop 224; ImageNet mean/std;
* learning rate: grid {1e-3, 3e-3, 1e-2, 3e-2} (``--lrs``). For each lr the model is trained
  on 80% of the training split and scored on the held-out 20% (``--val-frac``; stratified per
  class with ``--seed``; a plain random split for multi-label VOC). The lr with the best
  validation score (first in the grid on ties) is then used to retrain on the *full*
  training split, and only that model is evaluated on the test split. The test split is
  never looked at during the search;
* metric: top-1 accuracy; VOC2007 mAP with the 11-point interpolated AP of the VOC2007 devkit
  (the standard AP, equal to ``sklearn.metrics.average_precision_score``, is stored beside it).

The splits of every dataset are documented in :mod:`mixedae.classification.datasets`.

Outputs in ``--output-dir OUT``::

    OUT/results.md, OUT/results.csv     Table 2 column order + average (all datasets in OUT)
    OUT/runs/<dataset>/split.json       the train/val indices of the lr search
    OUT/runs/<dataset>/lr<lr>/          search runs: log.jsonl, result.json (val score)
    OUT/runs/<dataset>/final/           retrain with the chosen lr: log.jsonl, result.json
    OUT/runs/<dataset>/result.json      dataset summary (val scores, chosen lr, test score)

A finished run (``result.json`` present) is skipped when the command is rerun, so an
interrupted sweep resumes per dataset and lr; an unfinished run resumes from its own
``checkpoint.pth`` (written every ``--ckpt-every`` iterations, removed when the run finishes
unless ``--keep-checkpoints``). Rerunning into an OUT made with other settings is refused.

Examples::

    mixedae transfer --datasets all --root /data/transfer --checkpoint work/mixedae_b1600 \\
        --output-dir work/transfer_b1600
    torchrun --nproc_per_node 4 -m mixedae.cli transfer --datasets cifar10,pets --root ...
    # the small real data beside the repo, a micro ViT from scratch, a few seconds:
    mixedae transfer --datasets cifar10 --root ../shared/data/cls_tiny --model micro \\
        --patch-size 8 --img-size 32 --iters 100 --output-dir /tmp/tr
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mixedae.classification import datasets as D
from mixedae.classification import engine as E
from mixedae.classification.metrics import multilabel_bce
from mixedae.model.vit import VIT_SIZES, create_vit
from mixedae.runtime.checkpoint import CHECKPOINT_NAME, atomic_write_text
from mixedae.runtime.distributed import (barrier, cleanup, get_world_size, init_distributed,
                                         is_main_process, wrap_ddp)
from mixedae.runtime.cli import add_debug_flag, check_flags, check_writable_dir, run_main
from mixedae.runtime.errors import ConfigError as UsageError
from mixedae.runtime.images import require_readable
from mixedae.runtime.run_logger import RunLogger, print0
from mixedae.runtime.schedules import cosine_lr
from mixedae.runtime.weights import checkpoint_config, resolve_checkpoint_path

DEFAULT_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
# settings that must match for a finished run to be reused
_FINGERPRINT = ("checkpoint", "model", "patch_size", "img_size", "iters", "batch_size",
                "momentum", "weight_decay", "warmup_iters", "drop_path", "val_frac", "seed")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixedae transfer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="all", help="'all' or a comma list of: "
                   + ", ".join(D.ORDER))
    p.add_argument("--root", required=True, help="root holding the datasets (see "
                   "mixedae.classification.datasets for each layout)")
    p.add_argument("--checkpoint", default=None, help="pretraining checkpoint (model.safetensors "
                   "or its run directory) or plain ViT state dict; omitted: random init")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--name", default=None, help="row label in the results table "
                   "(default: checkpoint name)")
    p.add_argument("--model", default=None, choices=sorted(VIT_SIZES),
                   help="ViT size (default: from the checkpoint metadata, else base)")
    p.add_argument("--patch-size", type=int, default=None, help="default: checkpoint, else 16")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--iters", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lrs", default=",".join(f"{x:g}" for x in DEFAULT_LRS))
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-iters", type=int, default=0)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--val-frac", type=float, default=0.2,
                   help="fraction of train held out to choose the lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    p.add_argument("--no-verify-checksums", action="store_true",
                   help="only check that CIFAR/Flowers files exist (no md5)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop every run after this many iterations, leaving it resumable")
    add_debug_flag(p)
    return p


FLAG_RULES = {  # checked before any work (mixedae.runtime.cli.check_flags)
    "img_size": ">=1", "patch_size": ">=1", "iters": ">=1", "batch_size": ">=1",
    "eval_batch_size": ">=1", "momentum": "[0,1)", "weight_decay": ">=0", "warmup_iters": ">=0",
    "drop_path": "[0,1)", "val_frac": "(0,1)", "seed": ">=0", "workers": ">=0",
    "ckpt_every": ">=0", "log_every": ">=1", "stop_after": ">=1"}


def parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"--lrs must be a comma list of numbers, got {text!r}") from e
    if not lrs or any(x <= 0 for x in lrs):
        raise ValueError(f"--lrs must be positive numbers, got {text!r}")
    return lrs


def lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def resolve_model_args(args) -> None:
    """Fill --model/--patch-size from the checkpoint metadata; refuse contradictions."""
    cfg = checkpoint_config(args.checkpoint) if args.checkpoint else {}
    for key, attr, default in (("model", "model", "base"), ("patch_size", "patch_size", 16)):
        given, stored = getattr(args, attr), cfg.get(key)
        if given is not None and stored is not None and given != stored:
            raise ValueError(f"--{attr.replace('_', '-')} {given} contradicts the checkpoint "
                             f"({key}={stored})")
        setattr(args, attr, given if given is not None else (stored if stored is not None
                                                             else default))


def settings(args) -> dict:
    d = {k: getattr(args, k) for k in _FINGERPRINT}
    d["checkpoint"] = str(resolve_checkpoint_path(args.checkpoint)) if args.checkpoint else None
    return d


def build_model(args, num_classes: int, device: torch.device) -> tuple[nn.Module, dict | None]:
    model = create_vit(args.model, patch_size=args.patch_size, img_size=args.img_size,
                       num_classes=num_classes, global_pool="avg",
                       drop_path_rate=args.drop_path, learnable_pos_embed=True)
    info = E.load_pretrained(model, args.checkpoint) if args.checkpoint else None
    return model.to(device), info


def _reuse(args, res_path: Path, data: D.ClsData, phase: str, lr: float) -> dict | None:
    """The result of a finished run with the same settings (None if none); refuses others."""
    if not res_path.is_file():
        return None
    res = json.loads(res_path.read_text())
    old = res.get("settings", {})
    diff = [f"{k}: {old.get(k)!r} vs {v!r}" for k, v in settings(args).items() if old.get(k) != v]
    if diff:
        raise UsageError(f"{res_path} was produced with other settings ({'; '.join(diff)}); "
                         f"use another --output-dir")
    print0(f"[transfer] {data.name} {phase} {lr_tag(lr)}: done before "
           f"({res['metric']} {res['score']:.2f}), skipped")
    return {**res, "skipped": True}


def train_and_eval(args, data: D.ClsData, train_idx: list[int] | None,
                   eval_idx: list[int] | None, lr: float, run_dir: Path, phase: str,
                   device: torch.device) -> dict:
    """One run: train on ``train_idx`` of the train split (all of it if None), then score on
    the ``eval_idx`` examples of the *train* split (phase 'search': the held-out val part) or
    on the test split (phase 'final'). Returns the result dict (also written to
    ``run_dir/result.json``); a run whose result.json exists is skipped."""
    if phase not in ("search", "final") or (phase == "search") != (eval_idx is not None):
        raise ValueError("a search run scores held-out train examples; only 'final' sees test")
    eval_split = "val" if phase == "search" else "test"
    res_path = run_dir / "result.json"
    done = _reuse(args, res_path, data, phase, lr)
    if done is not None:
        return done
    world = get_world_size()
    if args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by {world} ranks")
    E.seed_everything(args.seed)
    model, loaded = build_model(args, data.num_classes, device)
    model = wrap_ddp(model, init_distributed())
    train_set = data.dataset("train", D.train_transform(args.img_size), train_idx)
    eval_set = data.dataset("train" if phase == "search" else "test",
                            D.eval_transform(args.img_size), eval_idx)
    logger = RunLogger(run_dir, desc=f"{data.name} {phase} {lr_tag(lr)}", total=args.iters,
                       start_step=None, progress=not args.no_progress)
    logger.event(event="start", dataset=data.name, phase=phase, lr=lr, n_train=len(train_set),
                 eval_split=eval_split, n_eval=len(eval_set), pretrained=loaded)
    t0 = time.time()
    try:
        out = E.train_loop(
            model=model, optimizer=E.build_sgd(model, lr, args.momentum, args.weight_decay),
            train_set=train_set, loss_fn=multilabel_bce if data.multilabel
            else nn.CrossEntropyLoss(), batch_size=args.batch_size // world,
            total_steps=args.iters, device=device, seed=args.seed, workers=args.workers,
            lr_at=lambda s: cosine_lr(s, lr, args.iters, args.warmup_iters),
            ckpt_path=run_dir / CHECKPOINT_NAME, ckpt_every=args.ckpt_every, logger=logger,
            log_every=args.log_every, amp=not args.no_amp, stop_after=args.stop_after)
        if not out["finished"]:
            print0(f"[transfer] {data.name} {phase} {lr_tag(lr)}: stopped at iteration "
                   f"{out['step']} (resumable)")
            return {"finished": False, "step": out["step"]}
        ev = E.evaluate(model, eval_set, args.eval_batch_size, device,
                        multilabel=data.multilabel, workers=args.workers, amp=not args.no_amp)
        metric = "map11" if data.multilabel else "top1"
        res = {"dataset": data.name, "phase": phase, "lr": lr, "metric": metric,
               "score": ev[metric], "eval": ev, "eval_split": eval_split,
               "n_train": len(train_set), "n_eval": len(eval_set), "iters": args.iters,
               "resumed_from": out["resumed_from"], "seconds": round(time.time() - t0, 2),
               "split_note": data.split_note, "settings": settings(args), "finished": True}
        logger.log({"event": "eval", "step": out["step"],
                    **{k: v for k, v in res.items() if k != "settings"}},
                   {f"{eval_split}/{metric}": res["score"]})
    finally:
        logger.close()
    _finish(args, run_dir, res)
    print0(f"[transfer] {data.name} {phase} {lr_tag(lr)}: {eval_split} {metric} "
           f"{res['score']:.2f} ({res['seconds']:.0f}s)")
    return res


def _finish(args, run_dir: Path, res: dict) -> None:
    """result.json (atomic), then the run's checkpoint is no longer needed."""
    if is_main_process():
        atomic_write_text(run_dir / "result.json", json.dumps(res, indent=1))
        ck = run_dir / CHECKPOINT_NAME
        if not args.keep_checkpoints and ck.exists():
            ck.unlink()
    barrier()


def val_split(args, data: D.ClsData, ds_dir: Path) -> tuple[list[int], list[int]]:
    """Stratified train/val indices for the lr search, stored in split.json (reused)."""
    path = ds_dir / "split.json"
    if path.is_file():
        s = json.loads(path.read_text())
        if s["n_train_total"] == len(data.train_targets) and s["val_frac"] == args.val_frac \
                and s["seed"] == args.seed:
            return s["train"], s["val"]
        raise UsageError(f"{path} does not match this data/settings; use another "
                           f"--output-dir")
    tr, va = E.stratified_split(data.train_targets, args.val_frac, args.seed)
    if not va:
        raise UsageError(f"{data.name}: --val-frac {args.val_frac} leaves no validation data")
    if is_main_process():
        atomic_write_text(path, json.dumps({
            "n_train_total": len(data.train_targets), "val_frac": args.val_frac,
            "seed": args.seed, "train": tr, "val": va,
            "val_images": [str(x) if not isinstance(x, np.ndarray) else f"train[{i}]"
                           for i, x in ((i, data.train_images[i]) for i in va)]}))
    barrier()
    return tr, va


def run_dataset(args, data: D.ClsData, lrs: list[float], out_dir: Path,
                device: torch.device) -> dict | None:
    ds_dir = out_dir / "runs" / data.name
    tr_idx, va_idx = val_split(args, data, ds_dir)
    val_scores = {}
    for lr in lrs:
        r = train_and_eval(args, data, tr_idx, va_idx, lr, ds_dir / lr_tag(lr), "search",
                           device)
        if not r.get("finished"):
            return None
        val_scores[lr_tag(lr)] = r["score"]
    best_lr = lrs[int(np.argmax([val_scores[lr_tag(lr)] for lr in lrs]))]
    final = train_and_eval(args, data, None, None, best_lr, ds_dir / "final", "final", device)
    if not final.get("finished"):
        return None
    if final["lr"] != best_lr:
        raise UsageError(f"{ds_dir}/final was trained with lr {final['lr']} but the search now "
                         f"picks {best_lr}; use another --output-dir")
    summary = {"dataset": data.name, "column": D.SPECS[data.name].column,
               "metric": final["metric"], "val_scores": val_scores, "chosen_lr": best_lr,
               "test_score": final["score"], "test_eval": final["eval"],
               "n_train": len(data.train_targets), "n_test": len(data.test_targets),
               "split_note": data.split_note, "notes": data.notes, "source": data.source,
               "settings": settings(args), "name": args.name}
    if is_main_process():
        atomic_write_text(ds_dir / "result.json", json.dumps(summary, indent=1))
    barrier()
    return summary


def write_tables(out_dir: Path, name: str) -> tuple[Path, Path]:
    """results.csv / results.md from every OUT/runs/<dataset>/result.json."""
    res = {}
    for n in D.ORDER:
        p = out_dir / "runs" / n / "result.json"
        if p.is_file():
            res[n] = json.loads(p.read_text())
    cols = [D.SPECS[n].column for n in D.ORDER]
    scores = [res[n]["test_score"] if n in res else None for n in D.ORDER]
    have = [s for s in scores if s is not None]
    avg = float(np.mean(have)) if have else None
    header = ["Method"] + cols + ["Avg."]
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(header)
    w.writerow([name] + ["" if s is None else f"{s:.4f}" for s in scores]
               + ["" if avg is None else f"{avg:.4f}"])
    atomic_write_text(out_dir / "results.csv", rows.getvalue())
    fmt = lambda s: "–" if s is None else f"{s:.1f}"  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             "| " + " | ".join([name] + [fmt(s) for s in scores] + [fmt(avg)]) + " |", ""]
    lines.append("Top-1 accuracy (%); VOC: mAP (%), 11-point interpolated (VOC2007 devkit). "
                 f"Avg. over {len(have)}/{len(D.ORDER)} datasets"
                 + ("." if len(have) == len(D.ORDER) else " (incomplete: not comparable to "
                    "the paper's average)."))
    lines += ["", "| dataset | chosen lr | " + " | ".join(f"val {lr_tag(x)}" for x in
                                                         _all_lrs(res)) + " | test | split |",
              "|" + "---|" * (4 + len(_all_lrs(res)))]
    for n, r in res.items():
        vs = [r["val_scores"].get(lr_tag(x)) for x in _all_lrs(res)]
        extra = f" (standard AP mAP {r['test_eval']['map']:.1f})" if r["metric"] == "map11" else ""
        lines.append(f"| {n} | {r['chosen_lr']:g} | " + " | ".join(fmt(v) for v in vs)
                     + f" | {r['test_score']:.1f}{extra} | {r['split_note']} |")
    notes = [x for r in res.values() for x in r.get("notes", [])]
    lines += [""] + [f"Note: {x}" for x in notes]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    return out_dir / "results.csv", out_dir / "results.md"


def _all_lrs(res: dict) -> list[float]:
    lrs = set()
    for r in res.values():
        lrs |= {float(k[2:]) for k in r["val_scores"]}
    return sorted(lrs)


def _run_all(args, names: list[str], lrs: list[float], out_dir: Path,
             device: torch.device) -> list[dict]:
    done = []
    for n in names:
        data = D.load_dataset(n, args.root, verify_checksums=not args.no_verify_checksums,
                              seed=args.seed)
        for split in ("train", "test"):  # an all-unreadable split is refused before training
            require_readable(getattr(data, f"{split}_images"), f"{n}/{split}")
        print0(f"[transfer] {n}: {len(data.train_targets)} train / "
                 f"{len(data.test_targets)} test, {data.num_classes} classes "
                 f"({data.split_note})")
        s = run_dataset(args, data, lrs, out_dir, device)
        if s is None:
            print0("[transfer] stopped early (--stop-after); rerun the same command to resume")
            break
        done.append(s)
        if is_main_process():
            write_tables(out_dir, args.name)
    return done


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae transfer", _main, argv)


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    try:
        names = D.resolve_names(args.datasets)
        lrs = parse_lrs(args.lrs)
        if args.checkpoint:
            ck = resolve_checkpoint_path(args.checkpoint)
            if not ck.is_file():
                raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file ({ck})")
        resolve_model_args(args)
        if args.iters <= 0 or args.batch_size <= 0:
            raise ValueError("--iters and --batch-size must be positive")
        if not 0 < args.val_frac < 1:
            raise ValueError(f"--val-frac must be in (0, 1), got {args.val_frac}")
        if not Path(args.root).is_dir():
            raise D.DatasetNotFoundError(f"--root {args.root} is not a directory")
        missing = []
        for n in names:  # fail fast, before any training, naming every missing dataset
            try:
                D.check_layout(n, args.root)
            except D.DatasetNotFoundError as e:
                missing.append(str(e))
        if missing:
            raise D.DatasetNotFoundError("\n".join(missing))
        check_flags(args, FLAG_RULES)
        if args.img_size % args.patch_size:
            raise ValueError(f"--img-size {args.img_size} is not a multiple of --patch-size "
                             f"{args.patch_size}")
        check_writable_dir(args.output_dir)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    if not args.name:
        ck = resolve_checkpoint_path(args.checkpoint) if args.checkpoint else None
        args.name = ("random-init" if ck is None else
                     ck.parent.name if ck.name == "model.safetensors" else ck.stem)
    device = init_distributed().device
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        atomic_write_text(out_dir / "args.json", json.dumps(vars(args), indent=1))
    done = _run_all(args, names, lrs, out_dir, device)
    if is_main_process() and done:
        csv_path, md_path = write_tables(out_dir, args.name)
        print(md_path.read_text())
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
