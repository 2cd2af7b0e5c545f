#!/usr/bin/env python
"""Evaluate a trained mmseg / mmdet checkpoint with the real mmengine Runner.

    .venv/bin/python tools/test.py CONFIG work_dirs/ade_b/iter_160000.pth [--work-dir DIR]
        [--metrics-out metrics.json] [--out preds.pkl | --out pred_pngs/] [--show-dir vis/]
        [--tta] [--cfg-options test_dataloader.dataset.data_root=...]
    bash tools/dist_test.sh CONFIG CHECKPOINT 8 [options]

The config is first made to build the model the checkpoint holds (what ``--match-pretrained``
or ``--cfg-options`` changed at training time: mixedae/mm/pretrained.py ``match_checkpoint``),
and the checkpoint must then cover the whole model (checked before the run; mmengine itself
would load it non-strictly). Without ``--work-dir`` the run's files go to
``<the config's work_dir, else work_dirs/<config name>>/test``, never over a training run's own
files there. Metrics are those of the config's ``test_evaluator``; ``--out`` writes
the predictions as mmseg / mmdet do (see mixedae/mm/testing.py); an evaluator that yields no
metrics is an error (exit code 2).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv


def parse_args(argv=None):
    from mixedae.mm.runner import add_launch_args, parse_launch_args
    ap = argparse.ArgumentParser(description="Test a detector/segmentor (mmengine Runner)")
    ap.add_argument("config")
    ap.add_argument("checkpoint")
    ap.add_argument("--work-dir")
    ap.add_argument("--out", help="predictions: mmdet a .pkl; mmseg a folder of label PNGs "
                                  "(or a .pkl)")
    ap.add_argument("--metrics-out", help="write the metrics as JSON here")
    ap.add_argument("--show-dir", help="save painted predictions per image under this folder")
    ap.add_argument("--show", action="store_true", help="show predictions in a window")
    ap.add_argument("--wait-time", type=float, default=2.0, help="seconds per shown image")
    ap.add_argument("--tta", action="store_true",
                    help="test-time augmentation (mmseg: the config's tta_pipeline/tta_model)")
    add_launch_args(ap)
    return parse_launch_args(ap, argv)


def _main(argv) -> int:
    args = parse_args(argv)
    from mixedae.mm.pretrained import match_checkpoint
    from mixedae.mm.runner import build_runner, check_full_checkpoint, detect_task, load_config
    from mixedae.mm.testing import check_metrics, configure_test, write_metrics
    if not Path(args.checkpoint).is_file():
        from mixedae.runtime.errors import CheckpointError
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}")
    cfg = load_config(args.config, args.cfg_options)
    match_checkpoint(cfg, args.checkpoint)
    work_dir = args.work_dir or str(Path(cfg.get("work_dir") or Path("work_dirs") /
                                         Path(args.config).stem) / "test")
    configure_test(cfg, detect_task(cfg), out=args.out, show_dir=args.show_dir,
                   show=args.show, wait_time=args.wait_time, tta=args.tta)
    net = cfg.model.get("module", cfg.model)   # the network inside a TTA model
    bb = net.get("backbone", {})
    bb.pop("pretrained", None)   # weights come from the checkpoint
    bb["init_cfg"] = None
    if net.get("pretrained") is not None:
        net["pretrained"] = None
    cfg.load_from = args.checkpoint
    cfg.resume = False
    runner = build_runner(cfg, work_dir, args.launcher, args.config)
    check_full_checkpoint(runner.model, args.checkpoint)
    metrics = check_metrics(runner.test(), cfg)
    from mmengine.dist import is_main_process
    if args.metrics_out and is_main_process():
        write_metrics(metrics, args.metrics_out)
    return 0


def main(argv=None) -> int:
    from mixedae.mm.runner import run_tool
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
