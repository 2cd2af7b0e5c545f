#!/usr/bin/env python
"""Evaluate a trained mmseg / mmdet checkpoint with the real mmengine Runner.

    python tools/test.py CONFIG work_dirs/ade_b/iter_160000.pth [--work-dir DIR]
        [--cfg-options test_dataloader.dataset.data_root=...]

The checkpoint must cover the whole model (checked before the run; mmengine itself would
load it non-strictly). Metrics are those of the config's ``test_evaluator``.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    from mixedae.mm.runner import add_launch_args, parse_launch_args
    ap = argparse.ArgumentParser(description="Test a detector/segmentor (mmengine Runner)")
    ap.add_argument("config")
    ap.add_argument("checkpoint")
    ap.add_argument("--work-dir")
    ap.add_argument("--out", help="write the metrics as JSON here")
    add_launch_args(ap)
    return parse_launch_args(ap, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mixedae.mm.runner import build_runner, check_full_checkpoint, load_config
    cfg = load_config(args.config, args.cfg_options)
    bb = cfg.model.get("backbone", {})
    bb.pop("pretrained", None)   # weights come from the checkpoint
    bb["init_cfg"] = None
    if cfg.model.get("pretrained") is not None:
        cfg.model["pretrained"] = None
    cfg.load_from = args.checkpoint
    cfg.resume = False
    runner = build_runner(cfg, args.work_dir, args.launcher, args.config)
    check_full_checkpoint(runner.model, args.checkpoint)
    metrics = runner.test()
    if args.out:
        Path(args.out).write_text(json.dumps({k: float(v) for k, v in metrics.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
