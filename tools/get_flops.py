#!/usr/bin/env python
"""FLOPs and parameter count of a config's network (mmseg / mmdet ``analysis_tools/get_flops.py``).

    .venv/bin/python tools/get_flops.py mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py
    .venv/bin/python tools/get_flops.py CONFIG --shape 800 1344 [--show-table] [--cfg-options ...]

Builds the model from the config (random weights), feeds one random H x W picture through its
data preprocessor and counts with mmengine.analysis (see mixedae/mm/complexity.py for what is
counted). ``--shape H W`` (or one side for a square) defaults to the config's crop size
(segmentation) or test resize scale (detection).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv


def _main(argv) -> int:
    from mmengine.config import DictAction
    ap = argparse.ArgumentParser(description="FLOPs and parameters of a detector / segmentor")
    ap.add_argument("config")
    ap.add_argument("--shape", type=int, nargs="+", metavar="H W",
                    help="input size H W (one value: square); default from the config")
    ap.add_argument("--show-table", action="store_true",
                    help="also print mmengine's per-module FLOPs / parameter table")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) not in (1, 2) or min(args.shape) < 1:
            ap.error(f"--shape takes H W (or one side) as positive integers, got {args.shape}")
        args.shape = tuple(args.shape) * (3 - len(args.shape))
    from mixedae.mm.complexity import format_report, model_complexity
    from mixedae.mm.runner import load_config
    cfg = load_config(args.config, args.cfg_options)
    print(format_report(model_complexity(cfg, args.shape, show_table=args.show_table)))
    return 0


def main(argv=None) -> int:
    from mixedae.mm.runner import run_tool
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
