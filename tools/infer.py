#!/usr/bin/env python
"""Predict one image with a trained mmseg / mmdet checkpoint and save the overlay.

    .venv/bin/python tools/infer.py CONFIG CHECKPOINT IMAGE --out overlay.png
        [--device cpu|cuda:0] [--score-thr 0.3] [--opacity 0.5] [--cfg-options ...]

Uses the OpenMMLab inference APIs (mmseg ``init_model`` / ``inference_model``, mmdet
``init_detector`` / ``inference_detector``) on the config's test pipeline; prints a one-line
summary (segmentation: the largest predicted classes and their pixel share; detection: the
number of detections above ``--score-thr`` and their classes).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv


def _main(argv) -> int:
    from mmengine.config import DictAction
    ap = argparse.ArgumentParser(description="Single-image inference (mmseg / mmdet APIs)")
    ap.add_argument("config")
    ap.add_argument("checkpoint")
    ap.add_argument("image")
    ap.add_argument("--out", required=True, help="overlay image to write (.png / .jpg)")
    ap.add_argument("--device", default=None, help="default: cuda:0 if available, else cpu")
    ap.add_argument("--score-thr", type=float, default=0.3, help="detection score threshold")
    ap.add_argument("--opacity", type=float, default=0.5, help="segmentation overlay opacity")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    import torch

    from mixedae.mm.inference import infer
    from mixedae.mm.runner import load_config
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config, args.cfg_options)
    summary = infer(cfg, args.checkpoint, args.image, args.out, device=device,
                    score_thr=args.score_thr, opacity=args.opacity)
    print(f"wrote {args.out}: {json.dumps(summary)}")
    return 0


def main(argv=None) -> int:
    from mixedae.mm.runner import run_tool
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
