#!/usr/bin/env python
"""Train any mmseg / mmdet config of this project with the real mmengine Runner.

    .venv/bin/python tools/train.py mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py \
        --pretrained runs/mixedae/model.safetensors --work-dir work_dirs/ade_b
    bash tools/dist_train.sh CONFIG 8 --pretrained PATH          # torchrun, multi-node via env
    bash tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR --pretrained PATH

The task (mmseg or mmdet) comes from the config's ``default_scope`` (or its model type).
``--pretrained`` takes our pretraining checkpoint (file or run dir), a converted backbone,
official MAE / timm weights or an mm checkpoint; it is converted on the fly and loaded by the
backbone's checked loader (every dropped/missing key reported, unexpected ones are errors).
When its ViT (size, patch) differs from the config's, the exact ``--cfg-options`` to use are
printed (``--match-pretrained`` applies them). Without ``--pretrained`` and with no checkpoint
in the config the run is refused unless ``--from-scratch`` asks for random initialisation.
Before training, ``<work_dir>/pretrained.json`` records which weights the run starts from (the
``mixedae.runtime.provenance`` record: path, size, sha256; null from scratch), which is what
``mixedae report`` credits the work dir's results (tools/test.py metrics too) by; a resumed
run keeps the record its first run wrote.
Not distributed or no CUDA: SyncBN becomes BN;
no CUDA: AMP is off and multi-process runs use gloo. ``--auto-scale-lr`` (as in mmdet / mmseg)
scales the lr linearly from the config's ``auto_scale_lr.base_batch_size`` (the reference
recipes' total batch, 16) to this run's total batch.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv


def parse_args(argv=None):
    from mixedae.mm.runner import add_launch_args, parse_launch_args
    ap = argparse.ArgumentParser(description="Train a detector/segmentor (mmengine Runner)")
    ap.add_argument("config", help="config file")
    ap.add_argument("--work-dir", help="where logs and checkpoints go")
    ap.add_argument("--pretrained", help="backbone weights (any supported layout)")
    ap.add_argument("--match-pretrained", action="store_true",
                    help="set the backbone (size, patch, out_indices) and the widths that follow "
                         "it from the --pretrained checkpoint instead of refusing a mismatch")
    ap.add_argument("--from-scratch", action="store_true",
                    help="train from random initialisation (without it, a run with no "
                         "--pretrained and no checkpoint in the config is refused)")
    ap.add_argument("--resume", nargs="?", const="auto", default=None,
                    help="resume: a checkpoint path, or the latest in work-dir if no path")
    ap.add_argument("--amp", action="store_true", help="force AmpOptimWrapper (GPU)")
    ap.add_argument("--auto-scale-lr", action="store_true",
                    help="scale the lr by the total batch (GPUs x train_dataloader.batch_size) "
                         "over the config's auto_scale_lr.base_batch_size (16 in this "
                         "project's configs)")
    add_launch_args(ap)
    args = parse_launch_args(ap, argv)
    if args.match_pretrained and not args.pretrained:
        ap.error("--match-pretrained needs --pretrained")
    if args.from_scratch and args.pretrained:
        ap.error("--from-scratch contradicts --pretrained; drop one of them")
    return args


def _main(argv) -> int:
    args = parse_args(argv)
    from mixedae.mm.pretrained import (match_pretrained, require_weights, resumed,
                                       start_weights, write_pretrained_record)
    from mixedae.mm.runner import (attach_pretrained, build_runner, enable_auto_scale_lr,
                                   load_config)
    cfg = load_config(args.config, args.cfg_options)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    work_dir = args.work_dir or cfg.get("work_dir") or str(
        Path("work_dirs") / Path(args.config).stem)   # where build_runner puts the run
    require_weights(cfg, args.pretrained, args.from_scratch, args.resume, work_dir)
    if args.pretrained:
        match_pretrained(cfg, args.pretrained, apply=args.match_pretrained)
        attach_pretrained(cfg, args.pretrained)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    source = start_weights(cfg)   # what the backbone (or load_from, the whole model) loads
    runner = build_runner(cfg, args.work_dir, args.launcher, args.config)
    from mmengine.dist import is_main_process
    if is_main_process() and not resumed(cfg, runner.work_dir):  # a resumed run keeps its own
        write_pretrained_record(runner.work_dir, source)
    runner.train()
    return 0


def main(argv=None) -> int:
    from mixedae.mm.runner import run_tool
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
