"""``mixedae finetune``: end-to-end ImageNet fine-tuning (§4.2, Appendix B, Table 5).

The classifier is ``create_vit(size, global_pool='avg')``: mean of the patch tokens after the
last block → ``fc_norm`` LayerNorm → linear head (trunc-normal std 2e-5), as in MAE. All
parameters are trained with layer-wise lr decay (:mod:`mixedae.runtime.layer_decay`, the project's
one rule). Defaults are the paper's recipe (Table 5):

==================  =================================================================
optimizer           AdamW, β = (0.9, 0.999), weight decay 0.05 (none on norms, biases,
                    cls token, position embedding)
base lr             5e-4 (B) / 1e-3 (L);  lr = blr × batch / 256
batch size          1024 (B) / 512 (L)  (global: ranks × per-rank batch × ``--accum-iter``)
schedule            5 warm-up epochs, then cosine to ``--min-lr`` 1e-6, set every iteration
epochs              100 (B) / 50 (L)
layer decay         0.65 (B) / 0.75 (L) (``--layer-decay``; MAE's FINETUNE.md recipes);
                    the paper's protocol sweeps {0.65, 0.7, 0.75} (App. B):
                    ``--layer-decay-sweep paper`` runs the three in turn into
                    OUT/ld0.65, OUT/ld0.7, OUT/ld0.75 and writes OUT/sweep.json
augmentation        timm ``create_transform``: RandomResizedCrop (bicubic), flip,
                    RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25 (pixel)
mixup / cutmix      timm ``Mixup``: mixup α 0.8, cutmix α 1.0, switch prob 0.5,
                    label smoothing 0.1 → ``SoftTargetCrossEntropy``
drop path           0.1 (B) / 0.2 (L) (MAE's ViT-L recipe; Table 5 lists one value, 0.1)
evaluation          resize the short side to img_size/0.875 (256 for 224), center crop,
                    top-1 / top-5 every epoch (``--eval-every``)
EMA                 optional (``--model-ema``, timm ``ModelEmaV3``), evaluated too
==================  =================================================================

Data: ``--data DIR`` with ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (ImageFolder;
``--val-folder`` to name the evaluation folder differently). Multi-GPU with torchrun (env://,
NCCL on GPU, gloo on CPU); bf16 autocast on CUDA. Checkpoints (model, optimizer, EMA, step,
every RNG) are written atomically to OUT/checkpoint.pth at each epoch end (and every
``--save-every-steps``); ``--resume auto`` continues from it, ``--resume PATH`` from a file,
which is first proven a fine-tuning checkpoint of this run (kind, settings, every key and
shape) and never copied over another OUT/checkpoint.pth. An unreadable training image is
replaced and named; the val folder is never altered (refused naming its unreadable files, or
``--skip-unreadable-eval``: evaluated without them, the count in result.json).
OUT/result.json (best and last top-1, ``finished``; ``pretrained``: the
:mod:`mixedae.runtime.provenance` record of the ``--checkpoint`` file, null without one) is
rewritten after every evaluation, at ``--max-steps`` (the model evaluated as it is) and on
Ctrl-C, so every exit leaves one.

``--eval --resume CKPT`` (MAE's convention; ``--resume auto``: OUT/checkpoint.pth) evaluates a
fine-tuning checkpoint and trains nothing: the classifier of the given ``--model`` /
``--patch-size`` / ``--img-size`` loads ``CKPT['model']`` strictly (a mismatch names the keys;
a checkpoint whose stored flags differ is refused naming them), the EMA weights too when the
checkpoint has them; every metric goes to OUT/eval/ (``result.json``, ``per_class.csv``,
``confusion.csv/png``); the checkpoint and the run's files are not touched.

Examples::

    torchrun --nproc_per_node 8 -m mixedae.cli finetune --data /data/imagenet \\
        --checkpoint work/mixedae_b1600/model.safetensors --model base --accum-iter 1 \\
        --output-dir work/ft_b1600 --resume auto
    mixedae finetune ... --layer-decay-sweep paper       # the paper's sweep 0.65,0.7,0.75
    mixedae finetune --data /data/imagenet --model base --output-dir work/ft_b1600 \\
        --eval --resume work/ft_b1600/checkpoint.pth                 # evaluate only
    # a 2-step smoke run on the small real data beside the repo:
    mixedae finetune --data ../shared/data/cls_tiny/cifar10 --val-folder test --model micro \\
        --patch-size 8 --img-size 32 --batch-size 16 --max-steps 2 --output-dir /tmp/ft
"""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from mixedae.classification import cli_common
from mixedae.classification import engine
from mixedae.classification import evaluation
from mixedae.classification.augment import build_loss, build_mixup, build_transforms
from mixedae.model.vit import create_vit
from mixedae.runtime.atomic import atomic_write, atomic_write_text
from mixedae.runtime.checkpoint import load_checkpoint
from mixedae.runtime.weights import CHECKPOINT_NAME
from mixedae.runtime.cli import add_debug_flag, check_flags, check_writable_dir, run_main
from mixedae.runtime.distributed import (barrier, cleanup, init_distributed, is_main_process,
                                         unwrap, wrap_ddp)
from mixedae.runtime.errors import CheckpointError, ConfigError
from mixedae.runtime.layer_decay import layer_decay_param_groups
from mixedae.runtime.provenance import pretrained_record
from mixedae.runtime.run_logger import RunLogger
from mixedae.runtime.weights import match_state_dict
from mixedae.runtime.schedules import cosine_lr

# size → the recipe per model size: blr, epochs, batch and drop path of Table 5; layer decay of
# MAE's FINETUNE.md scripts (github.com/facebookresearch/mae: ViT-B --layer_decay 0.65, ViT-L
# 0.75), since the paper gives no single value (it sweeps {0.65, 0.7, 0.75}). Table 5 sizes
# lr, batch and epochs (B)/(L) but lists ONE drop path, 0.1: its literal reading holds for
# ViT-L too, where MAE's ViT-L script uses 0.2 (`--drop-path 0.2` gives MAE's value; a move of
# this default needs a like-for-like fine-tuning outcome, not a reading). Sizes the paper does
# not use (micro, tiny, small) follow ViT-B.
RECIPE_KEYS = ("blr", "epochs", "batch_size", "layer_decay", "drop_path")
RECIPE = {"base": (5e-4, 100, 1024, 0.65, 0.1), "large": (1e-3, 50, 512, 0.75, 0.1)}
RECIPE_DEFAULT = RECIPE["base"]
# App. B: "we sweep the decay ratio in {0.65, 0.7, 0.75} following [38, 63]"
PAPER_LAYER_DECAY_SWEEP = (0.65, 0.7, 0.75)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixedae finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/ and val/ (ImageFolder)")
    p.add_argument("--val-folder", default="val")
    p.add_argument("--output-dir", required=True)
    cli_common.add_model_args(p)
    p.add_argument("--epochs", type=int, default=None, help="100 (B) / 50 (L)")
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--batch-size", type=int, default=None, help="global; 1024 (B) / 512 (L)")
    p.add_argument("--accum-iter", type=int, default=1)
    p.add_argument("--blr", type=float, default=None, help="5e-4 (B) / 1e-3 (L)")
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=None,
                   help="0.65 (B) / 0.75 (L), MAE's recipes; the paper sweeps 0.65,0.7,0.75 "
                   "(--layer-decay-sweep paper)")
    p.add_argument("--layer-decay-sweep", default=None,
                   help="'paper' (= 0.65,0.7,0.75, App. B: the paper's protocol) or a comma "
                   "list: one run per value into OUT/ld<v>, the best in OUT/sweep.json")
    p.add_argument("--drop-path", type=float, default=None, help="0.1 (Table 5, B and L; MAE's ViT-L script uses 0.2)")
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--mixup-prob", type=float, default=1.0)
    p.add_argument("--mixup-switch-prob", type=float, default=0.5)
    p.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy "
                   "('none' to disable)")
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--remode", default="pixel")
    p.add_argument("--recount", type=int, default=1)
    p.add_argument("--model-ema", action="store_true")
    p.add_argument("--model-ema-decay", type=float, default=0.9999)
    cli_common.add_workers_arg(p)
    p.add_argument("--skip-unreadable-eval", action="store_true",
                   help="evaluate without the unreadable images of the val folder (count in "
                   "result.json); default: refuse it, naming them")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=1, help="epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default="", help="'auto' (OUT/checkpoint.pth if present) or a path")
    p.add_argument("--eval", action="store_true", help="evaluate the --resume checkpoint "
                   "only (MAE's --eval): OUT/eval/, nothing trained")
    p.add_argument("--save-every-steps", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this global step (smoke tests); resumable")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_debug_flag(p)
    return p


def fill_defaults(args) -> None:
    """Model flags from the checkpoint (:func:`cli_common.resolve_model_args`), then the
    Table 5 recipe of that size for every recipe flag left unset."""
    cli_common.resolve_model_args(args)
    given = {k: getattr(args, k) for k in RECIPE_KEYS if getattr(args, k) is not None}
    for k, v in zip(RECIPE_KEYS, RECIPE.get(args.model, RECIPE_DEFAULT)):
        setattr(args, k, given.get(k, v))
    args.recipe_given = ",".join(given)  # the recipe values set on the command line
    args.abs_lr = args.lr if args.lr is not None else args.blr * args.batch_size / 256


def recipe_line(args) -> str:
    """The run's first log line: the per-size recipe in force, flags that changed it named."""
    given = set(filter(None, getattr(args, "recipe_given", "").split(",")))
    kept = set(filter(None, getattr(args, "recipe_resumed", "").split(",")))
    src = "ViT-L recipe" if args.model == "large" else (
        "ViT-B recipe" + ("" if args.model == "base" else f", used for {args.model}"))
    vals = ", ".join(f"{k.replace('_', ' ')} {getattr(args, k):g}"
                     + (" (given)" if k in given else " (the resumed run's)" if k in kept
                        else "") for k in RECIPE_KEYS)
    return (f"[finetune] recipe for {args.model} ({src}: Table 5 + MAE FINETUNE.md): {vals}; "
            f"lr {args.abs_lr:.3g}")


FLAG_RULES = {"epochs": ">0", "warmup_epochs": ">=0", "batch_size": ">0", "accum_iter": ">0",
              "blr": ">0", "lr": ">0", "min_lr": ">=0", "weight_decay": ">=0",
              "layer_decay": "(0,1]", "drop_path": "[0,1)", "clip_grad": ">0",
              "smoothing": "[0,1)", "mixup": ">=0", "cutmix": ">=0", "mixup_prob": "[0,1]",
              "mixup_switch_prob": "[0,1]", "reprob": "[0,1]", "recount": ">0",
              "model_ema_decay": "(0,1)", "eval_batch_size": ">0", "eval_every": ">0",
              "seed": ">=0", "save_every_steps": ">=0", "max_steps": ">0", "log_every": ">0"}


def check_args(args) -> list[float] | None:
    """Every flag before any work (ConfigError naming it); returns the layer-decay sweep."""
    fill_defaults(args)
    check_flags(args, FLAG_RULES)
    if args.warmup_epochs >= args.epochs:
        raise ConfigError(f"--warmup-epochs {args.warmup_epochs} must be < --epochs "
                          f"{args.epochs}")
    if args.remode not in ("const", "rand", "pixel"):
        raise ConfigError(f"--remode {args.remode!r}: choose const, rand or pixel")
    try:  # timm parses the policy string when the transform is built
        build_transforms(args)
    except (AssertionError, ValueError, KeyError) as e:
        raise ConfigError(f"--aa {args.aa!r}: {e or 'not a timm auto-augment policy'}") from None
    cli_common.resolve_workers(args, "finetune")
    if not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data}: no such directory")
    if not args.layer_decay_sweep:
        return None
    if args.layer_decay_sweep.strip().lower() == "paper":
        return list(PAPER_LAYER_DECAY_SWEEP)
    try:
        sweep = [float(x) for x in args.layer_decay_sweep.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layer-decay-sweep {args.layer_decay_sweep!r}: not a comma list "
                          f"of numbers") from None
    if not sweep or not all(0 < x <= 1 for x in sweep):
        raise ConfigError(f"--layer-decay-sweep {args.layer_decay_sweep!r}: values must be in "
                          f"(0, 1]")
    return sweep


def build_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float):
    """The classifier's AdamW groups: :func:`mixedae.runtime.layer_decay.layer_decay_param_groups`
    with the layers the ViT reports and the model's own no-weight-decay names."""
    m = unwrap(model)
    return layer_decay_param_groups(m, lr, weight_decay, layer_decay,
                                    backbone_prefix="", no_weight_decay=m.no_weight_decay())


def image_folders(args):
    from mixedae.runtime.images import ReadableImageFolder
    root = Path(args.data)
    for sub in ("train", args.val_folder):
        d = root / sub
        if not d.is_dir():
            raise ConfigError(f"--data {root}: missing folder {d} (expected {root}/train/"
                               f"<class>/* and {root}/{args.val_folder}/<class>/*)")
    train_tf, eval_tf = build_transforms(args)
    tr = ReadableImageFolder(root / "train", transform=train_tf)
    va = ReadableImageFolder(root / args.val_folder, transform=eval_tf,  # never altered
                             eval_flag="--skip-unreadable-eval",
                             skip_unreadable=args.skip_unreadable_eval, workers=args.workers)
    if va.classes != tr.classes:
        raise ConfigError(f"{root}/{args.val_folder} classes differ from {root}/train "
                          f"({len(va.classes)} vs {len(tr.classes)})")
    return tr, va


# settings of a fine-tuning run that a resumed run must share (the checkpoint's ``args``)
RESUME_FINGERPRINT = ("model", "patch_size", "img_size", "batch_size", "accum_iter", "epochs",
                      "warmup_epochs", "blr", "lr", "min_lr", "weight_decay", "layer_decay",
                      "drop_path", "seed")


def _resume_source(args, out_dir: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses, before anything in OUT is
    touched, a missing ``--resume PATH`` and an existing OUT/checkpoint.pth without
    ``--resume``."""
    ckpt = out_dir / CHECKPOINT_NAME
    if args.resume == "auto":
        return ckpt if ckpt.is_file() else None
    if not args.resume:
        if ckpt.exists():
            raise ConfigError(f"{ckpt} exists: pass --resume auto to continue it, or use "
                             f"another --output-dir")
        return None
    src = Path(args.resume)
    src = src / CHECKPOINT_NAME if src.is_dir() else src
    if not src.is_file():
        raise ConfigError(f"--resume {args.resume}: no such file")
    return src


def _check_resume(args, src: Path) -> dict:
    """Prove ``src`` a fine-tuning checkpoint of this run before it is used (first part: its
    kind and settings; :func:`_check_resume_model` checks its tensors). Recipe values not
    given on the command line are taken from it, so a run keeps the recipe it started with;
    other differences are refused, naming them. One CheckpointError line; returns the
    checkpoint (tensors memory-mapped)."""
    ck = load_checkpoint(src, mmap=True)  # kind: a resumable checkpoint of this project
    if not isinstance(ck.get("args"), dict) or "config" in ck:
        kind = "a pretraining checkpoint" if "config" in ck else "not a fine-tuning checkpoint"
        raise CheckpointError(f"--resume {src}: {kind} (no fine-tuning 'args'); to start "
                              f"fine-tuning from pretrained weights pass it as --checkpoint")
    old, given = ck["args"], set(filter(None, args.recipe_given.split(",")))
    diff, kept = [], []
    for k in RESUME_FINGERPRINT:
        if k not in old or old[k] == getattr(args, k):
            continue
        if k in RECIPE_KEYS and k not in given:
            setattr(args, k, old[k])  # e.g. a run started under an earlier default
            kept.append(k)
        else:
            diff.append(f"{k}: checkpoint {old[k]!r} vs now {getattr(args, k)!r}")
    if diff:
        raise CheckpointError(f"--resume {src} was made with other settings "
                              f"({len(diff)}: {'; '.join(diff[:5])}"
                              f"{' ...' if len(diff) > 5 else ''}); use another --output-dir")
    args.abs_lr = args.lr if args.lr is not None else args.blr * args.batch_size / 256
    args.recipe_resumed = ",".join(kept)
    return ck


def _check_resume_model(src: Path, ck: dict, model: nn.Module) -> None:
    """The checkpoint's model tensors against the classifier built: every key and shape."""
    sd = unwrap(model).state_dict()
    try:
        match_state_dict(sd, ck["model"], what=f"--resume {src}")
    except CheckpointError as e:
        raise CheckpointError(f"{e} ({_mismatch_count(sd, ck['model'])} keys differ)") from None


def _mismatch_count(model_sd, sd) -> int:
    return len(set(model_sd) ^ set(sd)) + sum(
        1 for k in set(model_sd) & set(sd) if tuple(model_sd[k].shape) != tuple(sd[k].shape))


def _prepare_resume(src: Path | None, out_dir: Path) -> Path:
    """OUT/checkpoint.pth, seeded (an atomic byte copy, after :func:`_check_resume`) from a
    ``--resume PATH`` outside OUT; an existing OUT/checkpoint.pth with other bytes is refused
    (never overwritten)."""
    ckpt = out_dir / CHECKPOINT_NAME
    if src is None or src.resolve() == ckpt.resolve():
        return ckpt
    if ckpt.exists() and not filecmp.cmp(src, ckpt, shallow=False):
        raise ConfigError(f"--resume {src}: {ckpt} exists and holds another checkpoint (never "
                          f"overwritten): --resume auto continues it, or use another "
                          f"--output-dir")
    if is_main_process() and not ckpt.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(ckpt, lambda tmp: shutil.copyfile(src, tmp))
    barrier()
    return ckpt


def _build(args, train_set, device):
    """Classifier (with pretrained weights), EMA, AdamW with layer decay."""
    model = create_vit(args.model, patch_size=args.patch_size, img_size=args.img_size,
                       num_classes=len(train_set.classes), global_pool="avg",
                       drop_path_rate=args.drop_path, learnable_pos_embed=True)
    loaded = engine.load_pretrained(model, args.checkpoint) if args.checkpoint else None
    model.to(device)
    ema = None
    if args.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=args.model_ema_decay)
    groups = build_param_groups(model, args.abs_lr, args.weight_decay, args.layer_decay)
    for g in groups:
        g.pop("param_names", None)
    optimizer = torch.optim.AdamW(groups, lr=args.abs_lr, betas=(0.9, 0.999))
    return model, ema, optimizer, loaded


def _evaluator(args, model, ema, val_set, device, total, logger, best: dict, last: dict,
               out_dir: Path, pretrained: dict | None):
    """``on_epoch_end``: evaluate (model and EMA), track the best top-1 in ``best``."""
    def evaluate(epoch: int, step: int, force: bool = False) -> None:
        if not force and (epoch + 1) % args.eval_every and step < total:
            return
        kw = dict(workers=args.workers, amp=not args.no_amp)
        ev = evaluation.evaluate(model, val_set, args.eval_batch_size, device, **kw)
        rec = {"event": "eval", "epoch": epoch, "step": step,
               **{k: ev[k] for k in ("top1", "top5", "mean_per_class", "loss")}}
        if ema is not None:
            ee = evaluation.evaluate(ema.module, val_set, args.eval_batch_size, device, **kw)
            rec.update(ema_top1=ee["top1"], ema_top5=ee["top5"])
        best["top1"] = max(best.get("top1", -1.0), rec["top1"])
        last.clear()
        last.update(rec)
        logger.log(rec, {f"eval/{k}": v for k, v in rec.items()
                          if k in ("top1", "top5", "mean_per_class", "loss", "ema_top1",
                                  "ema_top5")})
        logger.info(f"[finetune] epoch {epoch} step {step}: top-1 {rec['top1']:.2f} "
                    f"top-5 {rec['top5']:.2f} (best {best['top1']:.2f})")
        write_result(out_dir, step=step, finished=False, best_top1=best["top1"], last=rec,
                     layer_decay=args.layer_decay,  # a later kill still leaves this one
                     pretrained=pretrained)
    return evaluate


def write_result(out_dir: Path, **result) -> dict:
    """OUT/result.json (rank 0, atomic): the run's summary as of now."""
    if is_main_process():
        atomic_write_text(Path(out_dir) / "result.json", json.dumps(result, indent=1))
    return result


def _pretrained(args, resume_ck: dict | None) -> dict | None:
    """The record of the weights this run started from (rank 0; None elsewhere, and for a run
    from random initialisation): a resumed run's own (stored in its checkpoint, whatever
    ``--checkpoint`` says now: the resumed weights replace them), else ``--checkpoint``'s."""
    if not is_main_process():
        return None
    if resume_ck is not None and "pretrained" in resume_ck:
        return resume_ck["pretrained"]
    return pretrained_record(args.checkpoint)


def run(args, out_dir: Path) -> dict:
    """One fine-tuning run into ``out_dir``; returns the final metrics."""
    info = init_distributed()
    world, device = info.world_size, info.device
    engine.seed_everything(args.seed + info.rank)
    train_set, val_set = image_folders(args)
    src = _resume_source(args, out_dir)
    resume_ck = _check_resume(args, src) if src is not None else None
    per_rank, rem = divmod(args.batch_size, world * args.accum_iter)
    if rem or per_rank == 0:
        raise ConfigError(f"--batch-size {args.batch_size} is not divisible by {world} rank(s) "
                          f"× --accum-iter {args.accum_iter}")
    mixup = build_mixup(args, len(train_set.classes))
    if mixup is not None and per_rank % 2:
        raise ConfigError(f"mixup/cutmix need an even per-rank batch, got {per_rank}")
    spe = engine.steps_per_epoch(len(train_set), per_rank, args.accum_iter)  # the engine's count
    total, warmup = args.epochs * spe, int(round(args.warmup_epochs * spe))
    pretrained = _pretrained(args, resume_ck)  # before training: every result.json has it
    model, ema, optimizer, loaded = _build(args, train_set, device)
    if resume_ck is not None:
        _check_resume_model(src, resume_ck, model)
        del resume_ck
    ckpt = _prepare_resume(src, out_dir)
    model = wrap_ddp(model, info)
    logger = RunLogger(out_dir, desc=f"finetune ld{args.layer_decay:g}", total=total,
                       start_step=None, progress=not args.no_progress)
    logger.event(event="start", args=vars(args), world=world, per_rank_batch=per_rank,
                 steps_per_epoch=spe, total_steps=total, pretrained=loaded,
                 n_train=len(train_set), n_val=len(val_set))
    logger.info(recipe_line(args))
    if loaded:
        logger.info(f"[finetune] {loaded['line']}")
    logger.info(f"[finetune] {args.model}/{args.patch_size} {len(train_set)} train / "
                f"{len(val_set)} val, {len(train_set.classes)} classes; lr {args.abs_lr:.3g}, "
                f"layer decay {args.layer_decay}, {total} steps"
                + (f" (this run stops at step {args.max_steps}: --max-steps)"
                   if args.max_steps and args.max_steps < total else ""))
    best, last = {"top1": -1.0}, {}
    evaluate = _evaluator(args, model, ema, val_set, device, total, logger, best, last,
                          out_dir, pretrained)
    t0 = time.time()
    try:
        out = engine.train_loop(
            model=model, optimizer=optimizer, train_set=train_set,
            loss_fn=build_loss(args, mixup), batch_size=per_rank, total_steps=total,
            accum_iter=args.accum_iter, device=device, seed=args.seed, workers=args.workers,
            lr_at=lambda s: cosine_lr(s, args.abs_lr, total, warmup, args.min_lr),
            ckpt_path=ckpt, ckpt_every=args.save_every_steps, logger=logger,
            log_every=args.log_every, mixup_fn=mixup, ema=ema, clip_grad=args.clip_grad,
            amp=not args.no_amp, stop_after=args.max_steps, on_epoch_end=evaluate, state=best,
            extra_state={"args": {k: v for k, v in vars(args).items()
                                  if isinstance(v, (int, float, str, bool, type(None)))},
                         "pretrained": pretrained})
        if not last:  # stopped early, or resumed after the end: report the model as it is
            evaluate((out["step"] - 1) // spe, out["step"], force=True)
    except KeyboardInterrupt:  # the summary of the last evaluation, marked interrupted
        if last:
            write_result(out_dir, step=last["step"], finished=False, interrupted=True,
                         best_top1=best["top1"], last=last, layer_decay=args.layer_decay,
                         pretrained=pretrained)
        raise
    finally:
        logger.close()
    return write_result(out_dir, step=out["step"], finished=out["finished"],
                        resumed_from=out["resumed_from"], best_top1=best["top1"], last=last,
                        layer_decay=args.layer_decay, seconds=round(time.time() - t0, 2),
                        val_skipped=len(val_set.skipped),
                        val_skipped_files=val_set.skipped[:20], pretrained=pretrained)


def _eval_checkpoint(args, out_dir: Path) -> Path:
    """The checkpoint of ``--eval`` (usage errors before any work)."""
    if not args.resume:
        raise ConfigError("--eval evaluates a checkpoint: give --resume CKPT (or --resume auto "
                          "for OUT/checkpoint.pth)")
    if args.layer_decay_sweep:
        raise ConfigError("--eval takes one checkpoint: drop --layer-decay-sweep")
    path = out_dir / CHECKPOINT_NAME if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise ConfigError(f"--resume {args.resume}: no such file ({path})")
    return path


def evaluate_only(args, out_dir: Path, path: Path) -> dict:
    """``--eval``: every metric of the checkpoint's classifier (and its EMA) → OUT/eval/."""
    from mixedae.classification.results import write_per_class
    from mixedae.runtime.checkpoint import load_model_state
    from mixedae.runtime.errors import CheckpointError
    info = init_distributed()
    ck = load_checkpoint(path, required=("model",))
    stored = ck.get("args") if isinstance(ck.get("args"), dict) else {}
    diff = [f"--{k.replace('_', '-')} {stored[k]} (given {getattr(args, k)})"
            for k in ("model", "patch_size", "img_size") if k in stored
            and stored[k] != getattr(args, k)]
    if diff:
        raise CheckpointError(f"{path} was trained with {', '.join(diff)}: pass the same flags")
    train_set, val_set = image_folders(args)
    nets = {"model": ck["model"]}
    if isinstance(ck.get("ema"), dict):  # timm ModelEmaV3 keeps the classifier as "module."
        nets["ema"] = {k.removeprefix("module."): v for k, v in ck["ema"].items()}
    out, kw = {}, dict(workers=args.workers, amp=not args.no_amp)
    for name, state in nets.items():
        model = create_vit(args.model, patch_size=args.patch_size, img_size=args.img_size,
                           num_classes=len(train_set.classes), global_pool="avg",
                           learnable_pos_embed=True)
        load_model_state(model, state, source=f"{path} ({name})")  # strict, keys named
        out[name] = evaluation.evaluate(model.to(info.device), val_set, args.eval_batch_size,
                               info.device, **kw)
    ev, res = out["model"], {"eval_only": True, "checkpoint": str(path), "step": ck.get("step"),
                             "n_val": len(val_set)}
    if "pretrained" in ck:  # the weights its fine-tuning started from (runtime.provenance)
        res["pretrained"] = ck["pretrained"]
    res.update({k: ev[k] for k in ("top1", "top5", "mean_per_class", "loss")})
    if "ema" in out:
        res.update({f"ema_{k}": out["ema"][k] for k in ("top1", "top5", "mean_per_class")})
    if is_main_process():
        write_per_class(out_dir / "eval", val_set.classes, ev, f"{path.name} "
                          f"({args.val_folder})")
        write_result(out_dir / "eval", **res)
        print(f"[finetune] eval {path} (step {res['step']}): top-1 {res['top1']:.2f} "
              f"top-5 {res['top5']:.2f} on {len(val_set)} {args.val_folder} images"
              + (f"; EMA top-1 {res['ema_top1']:.2f}" if "ema" in out else ""), flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae finetune", _main, argv)


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    sweep = check_args(args)  # every flag, before any work
    check_writable_dir(args.output_dir)
    if args.eval:
        evaluate_only(args, Path(args.output_dir), _eval_checkpoint(args, Path(args.output_dir)))
        cleanup()
        return 0
    return _run_all(args, Path(args.output_dir), sweep)


def _run_all(args, out: Path, sweep: list[float] | None) -> int:
    if not sweep:
        run(args, out)
    else:
        results = {}
        for ld in sweep:
            args.layer_decay = ld
            results[f"{ld:g}"] = run(args, out / f"ld{ld:g}")
        done = {k: v for k, v in results.items() if v["finished"]}
        best = max(done, key=lambda k: done[k]["best_top1"]) if done else None
        if is_main_process():
            atomic_write_text(out / "sweep.json", json.dumps(
                {"results": results, "best_layer_decay": best}, indent=1))
            print(f"[finetune] layer-decay sweep: best {best} "
                  + ", ".join(f"{k}: {v['best_top1']:.2f}" for k, v in results.items()))
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
