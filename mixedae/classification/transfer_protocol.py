"""The lr search and final run of one dataset of ``mixedae transfer`` (see that module for the
protocol). Every run is resumable (its own checkpoint) and skipped once finished."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mixedae.classification import cli_common
from mixedae.classification import datasets
from mixedae.classification import engine
from mixedae.classification.evaluation import evaluate
from mixedae.classification import results
from mixedae.classification.metrics import multilabel_bce
from mixedae.classification.specs import SPECS
from mixedae.model.vit import create_vit
from mixedae.runtime.atomic import atomic_write_text
from mixedae.runtime.weights import CHECKPOINT_NAME
from mixedae.runtime.distributed import barrier, get_world_size, init_distributed, \
    is_main_process, wrap_ddp
from mixedae.runtime.errors import ConfigError, TrainingDiverged
from mixedae.runtime.provenance import pretrained_record
from mixedae.runtime.run_logger import RunLogger, print0
from mixedae.runtime.schedules import cosine_lr
from mixedae.runtime.weights import resolve_checkpoint_path

# settings that must match for a finished run to be reused
FINGERPRINT = ("checkpoint", "model", "patch_size", "img_size", "iters", "batch_size",
               "momentum", "nesterov", "weight_decay", "warmup_iters", "drop_path", "val_frac",
               "val_split", "eval_crop_pct", "seed", "holdout", "voc_difficult")
# what runs recorded before a setting existed ran with (so their results compare as what they
# ran: rerunning an old OUT under today's defaults names the difference)
LEGACY = {"holdout": "stratified", "voc_difficult": "ignore"}
SKIP_FLAG = "--skip-unreadable-eval"


def lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def settings(args) -> dict:
    d = {k: getattr(args, k) for k in FINGERPRINT}
    d["checkpoint"] = str(resolve_checkpoint_path(args.checkpoint)) if args.checkpoint else None
    return d


def build_model(args, num_classes: int, device: torch.device) -> tuple[nn.Module, dict | None]:
    model = create_vit(args.model, patch_size=args.patch_size, img_size=args.img_size,
                       num_classes=num_classes, global_pool="avg",
                       drop_path_rate=args.drop_path, learnable_pos_embed=True)
    info = engine.load_pretrained(model, args.checkpoint) if args.checkpoint else None
    return model.to(device), info


def _reuse(args, res_path: Path, data: datasets.ClsData, phase: str, lr: float) -> dict | None:
    """The result of a finished run with the same settings (None if none); refuses others."""
    if not res_path.is_file():
        return None
    res = json.loads(res_path.read_text())
    old = res.get("settings", {})
    diff = [f"{k}: {old.get(k, LEGACY.get(k))!r} vs {v!r}" for k, v in settings(args).items()
            if old.get(k, LEGACY.get(k)) != v]
    if diff:
        raise ConfigError(f"{res_path} was produced with other settings ({'; '.join(diff)}); "
                          f"use another --output-dir")
    what = "diverged" if res.get("diverged") else f"{results.SHORT[res['metric']]} {res['score']:.2f}"
    print0(f"[transfer] {data.name} {phase} {lr_tag(lr)}: done before ({what}), skipped")
    return {**res, "skipped": True}


def finite_score(res: dict) -> bool:
    """A search run that counts for the lr choice: not diverged, a finite score."""
    return not res.get("diverged") and res.get("score") is not None and \
        math.isfinite(res["score"])


def _train(args, data, model, train_set, lr, run_dir, logger, device) -> dict:
    world = get_world_size()
    return engine.train_loop(
        model=model, train_set=train_set, batch_size=args.batch_size // world,
        optimizer=engine.build_sgd(model, lr, args.momentum, args.weight_decay, args.nesterov),
        loss_fn=multilabel_bce if data.multilabel else nn.CrossEntropyLoss(),
        total_steps=args.iters, device=device, seed=args.seed, workers=args.workers,
        lr_at=lambda s: cosine_lr(s, lr, args.iters, args.warmup_iters),
        ckpt_path=run_dir / CHECKPOINT_NAME, ckpt_every=args.ckpt_every, logger=logger,
        log_every=args.log_every, amp=not args.no_amp, stop_after=args.stop_after)


def train_and_eval(args, data: datasets.ClsData, train_idx: list[int] | None,
                   eval_idx: list[int] | None, lr: float, run_dir: Path, phase: str,
                   device: torch.device) -> dict:
    """One run: train on ``train_idx`` of the train split (all of it if None), then score on
    the ``eval_idx`` examples of the *train* split (phase 'search': the validation part) or
    on the test split (phase 'final', which also writes per-class files and the confusion
    matrix). Returns the result (also ``run_dir/result.json``); a finished run is skipped."""
    if phase not in ("search", "final") or (phase == "search") != (eval_idx is not None):
        raise ValueError("a search run scores held-out train examples; only 'final' sees test")
    eval_split = "val" if phase == "search" else "test"
    done = _reuse(args, run_dir / "result.json", data, phase, lr)
    if done is not None:
        return done
    # an unfinished run resumes from its checkpoint only under the settings it started with
    cli_common.check_settings(run_dir, {**settings(args), "lr": lr, "phase": phase})
    if args.batch_size % get_world_size():
        raise ConfigError(f"--batch-size {args.batch_size} is not divisible by "
                          f"{get_world_size()} ranks")
    pretrained = pretrained_record(args.checkpoint) if is_main_process() else None
    engine.seed_everything(args.seed)
    model, loaded = build_model(args, data.num_classes, device)
    model = wrap_ddp(model, init_distributed())
    train_set = data.dataset("train", datasets.train_transform(args.img_size), train_idx)
    eval_set = data.dataset("train" if phase == "search" else "test",
                            datasets.eval_transform(args.img_size, args.eval_crop_pct), eval_idx,
                            strict=True)  # checked before: datasets.ClsData.check_eval
    logger = RunLogger(run_dir, desc=f"{data.name} {phase} {lr_tag(lr)}", total=args.iters,
                       start_step=None, progress=not args.no_progress)
    logger.event(event="start", dataset=data.name, phase=phase, lr=lr, n_train=len(train_set),
                 eval_split=eval_split, n_eval=len(eval_set), pretrained=loaded)
    if loaded:
        logger.info(f"[transfer] {loaded['line']}")
    t0 = time.time()
    ev = None
    try:
        try:
            out = _train(args, data, model, train_set, lr, run_dir, logger, device)
        except TrainingDiverged as e:  # a search run: recorded, the grid goes on
            if phase != "search":
                raise
            out = {"diverged": str(e)}
        if "diverged" in out:
            res = {"dataset": data.name, "phase": phase, "lr": lr, "metric": data.metric,
                   "score": None, "diverged": True, "reason": out["diverged"],
                   "eval_split": eval_split, "n_train": len(train_set), "iters": args.iters,
                   "seconds": round(time.time() - t0, 2), "settings": settings(args),
                   "finished": True, "pretrained": pretrained}
            logger.event(event="diverged", lr=lr, reason=out["diverged"])
            print0(f"[transfer] {data.name} {phase} {lr_tag(lr)}: diverged "
                   f"({out['diverged']}); recorded, the search goes on")
        elif not out["finished"]:
            print0(f"[transfer] {data.name} {phase} {lr_tag(lr)}: stopped at iteration "
                   f"{out['step']} (resumable)")
            return {"finished": False, "step": out["step"]}
        else:
            ev = evaluate(model, eval_set, args.eval_batch_size, device,
                            multilabel=data.multilabel, workers=args.workers,
                            amp=not args.no_amp)
            res = {"dataset": data.name, "phase": phase, "lr": lr, "metric": data.metric,
                   "score": ev[data.metric], "eval": results.public_eval(ev), "eval_split": eval_split,
                   "n_train": len(train_set), "n_eval": len(eval_set), "iters": args.iters,
                   "resumed_from": out["resumed_from"], "seconds": round(time.time() - t0, 2),
                   "split_note": data.split_note, "settings": settings(args), "finished": True,
                   "pretrained": pretrained}
            logger.log({"event": "eval", "step": out["step"],
                        **{k: v for k, v in res.items() if k not in ("settings", "pretrained")}},
                       {f"{eval_split}/{k}": v for k, v in res["eval"].items() if k != "n"})
    finally:
        logger.close()
    _finish(args, run_dir, res, data, ev if phase == "final" else None)
    if not res.get("diverged"):
        print0(f"[transfer] {data.name} {phase} {lr_tag(lr)}: {eval_split} "
               f"{results.SHORT[data.metric]} {res['score']:.2f} ({res['seconds']:.0f}s)")
    return res


def _finish(args, run_dir: Path, res: dict, data: datasets.ClsData, ev: dict | None) -> None:
    """Per-class files (final run), result.json (atomic), then the checkpoint is removed."""
    if is_main_process():
        if ev is not None:
            results.write_per_class(run_dir, data.classes, ev, f"{data.name} test ({args.name})")
        atomic_write_text(run_dir / "result.json", json.dumps(res, indent=1))
        ck = run_dir / CHECKPOINT_NAME
        if not args.keep_checkpoints and ck.exists():
            ck.unlink()
    barrier()


def val_split(args, data: datasets.ClsData, ds_dir: Path) -> tuple[list[int], list[int], str]:
    """(train, val) indices of the lr search and how they were made: the dataset's official
    validation split (``--val-split official`` and one exists), else the ``--holdout`` hold-out
    of ``--val-frac`` (shuffled, as Ericsson et al.; or stratified). Stored in split.json and
    reused."""
    official = args.val_split == "official" and data.val_split is not None
    kind = "official" if official else \
        f"{args.holdout} hold-out {args.val_frac:g} (seed {args.seed})"
    path = ds_dir / "split.json"
    if path.is_file():
        s = json.loads(path.read_text())
        stored = s.get("kind", "")
        stored = "stratified " + stored if stored.startswith("hold-out") else stored  # legacy
        if s["n_train_total"] == len(data.train_targets) and stored == kind:
            return s["train"], s["val"], kind
        raise ConfigError(f"{path} does not match this data/settings ({stored!r} vs {kind!r}); "
                          f"use another --output-dir")
    tr, va = (list(data.val_split[0]), list(data.val_split[1])) if official else \
        datasets.holdout_split(args.holdout, data.train_targets, args.val_frac, args.seed)
    if not va:
        raise ConfigError(f"{data.name}: --val-frac {args.val_frac} leaves no validation data")
    if is_main_process():
        atomic_write_text(path, json.dumps({
            "n_train_total": len(data.train_targets), "kind": kind, "val_frac": args.val_frac,
            "seed": args.seed, "train": tr, "val": va,
            "val_images": [str(x) if not isinstance(x, np.ndarray) else f"train[{i}]"
                           for i, x in ((i, data.train_images[i]) for i in va)]}))
    barrier()
    return tr, va, kind


def run_dataset(args, data: datasets.ClsData, lrs: list[float], out_dir: Path,
                device: torch.device) -> dict | None:
    """The lr search on the validation split, then the final run; the dataset summary."""
    ds_dir = out_dir / "runs" / data.name
    tr_idx, va_idx, kind = val_split(args, data, ds_dir)
    va_idx = data.check_eval("val", va_idx, skip=args.skip_unreadable_eval, flag=SKIP_FLAG,
                             workers=args.workers)
    val_scores, diverged = {}, {}
    for lr in lrs:  # a diverging lr is recorded (its result.json) and the grid goes on
        r = train_and_eval(args, data, tr_idx, va_idx, lr, ds_dir / lr_tag(lr), "search",
                           device)
        if not r.get("finished"):
            return None
        val_scores[lr_tag(lr)] = r["score"] if finite_score(r) else None
        if not finite_score(r):
            diverged[lr_tag(lr)] = r.get("reason", f"non-finite score {r.get('score')}")
    finite = [lr for lr in lrs if val_scores[lr_tag(lr)] is not None]
    if not finite:
        raise TrainingDiverged(
            f"{data.name}: every lr of the search diverged ("
            + "; ".join(f"{k}: {v}" for k, v in diverged.items())[:600]
            + f"); try smaller --lrs (results in {ds_dir})")
    best_lr = max(finite, key=lambda lr: val_scores[lr_tag(lr)])  # first in the grid on ties
    final = train_and_eval(args, data, None, None, best_lr, ds_dir / "final", "final", device)
    if not final.get("finished"):
        return None
    if final["lr"] != best_lr:
        raise ConfigError(f"{ds_dir}/final was trained with lr {final['lr']} but the search now "
                          f"picks {best_lr}; use another --output-dir")
    summary = {"dataset": data.name, "column": SPECS[data.name].column,
               "metric": final["metric"], "val_scores": val_scores, "chosen_lr": best_lr,
               "val_split": kind, "test_score": final["score"], "test_eval": final["eval"],
               "n_train": len(data.train_targets), "n_test": len(data.test_targets),
               "split_note": data.split_note, "notes": data.notes, "source": data.source,
               "settings": settings(args), "name": args.name, "diverged": sorted(diverged),
               "eval_skipped": {k: len(v) for k, v in data.skipped.items()}}
    if "pretrained" in final:  # the weights the test score comes from (runtime.provenance)
        summary["pretrained"] = final["pretrained"]
    summary["notes"] = summary["notes"] + [
        f"{data.name} {k}: diverged in the lr search, not chosen ({v})"
        for k, v in diverged.items()]
    if is_main_process():
        atomic_write_text(ds_dir / "result.json", json.dumps(summary, indent=1))
    barrier()
    return summary
