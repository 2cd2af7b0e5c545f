"""``mixedae report``: one page for a pretraining run and every transfer result found.

    mixedae report RUN_DIR [TRANSFER_DIRS...] --out report/ [--baseline MAE_RUN_DIR]
        [--images DIR] [--num-images 8] [--query-patch I]

Writes ``report.html`` (self-contained: PNGs embedded), ``report.md`` and the PNGs into
``--out`` (default ``RUN_DIR/report``): pretraining curves, TopK sampling accuracy per layer
(Fig. 6a/6b), reconstructions of mixed samples, [CLS] attention maps (Fig. 5/7) and a patch's
homologous-attention neighbourhood (beside the ``--baseline`` run's when given), and the
ADE20K / COCO / fine-tuning / 11-dataset results found in TRANSFER_DIRS (mmengine work dirs of
tools/train.py, ``mixedae finetune`` / ``mixedae transfer`` outputs, or a ``mixedae pipeline``
folder) beside the paper's numbers for the same ViT size. Parts that do not exist yet are shown
as missing, so it works on a run in progress.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixedae.report.collect import is_run_dir
from mixedae.runtime.cli import add_debug_flag, run_main
from mixedae.runtime.errors import ConfigError


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixedae report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="pretraining run folder (mixedae pretrain / demo output)")
    p.add_argument("transfer_dirs", nargs="*", help="folders holding transfer results")
    p.add_argument("--out", default=None, help="report folder (default RUN_DIR/report)")
    p.add_argument("--baseline", default=None, help="a second pretraining run shown beside it")
    p.add_argument("--images", default=None, help="image folder for the attention maps "
                   "(default: the photos shipped with scikit-image / scikit-learn)")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--query-patch", type=int, default=None,
                   help="row-major patch index of the neighbourhood query (default: centre)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixing masks shown")
    p.add_argument("--name", default=None, help="name of the run in the report (default: "
                   "its folder name)")
    add_debug_flag(p)
    return p


def check_args(args) -> None:
    """Every bad path or value, before any work."""
    for flag, path in (("RUN_DIR", args.run_dir), ("--baseline", args.baseline)):
        if path is None:
            continue
        if not Path(path).is_dir():
            raise ConfigError(f"{flag} {path}: no such directory")
        if not is_run_dir(Path(path)):
            raise ConfigError(f"{flag} {path}: not a pretraining run (no log.jsonl, config.json "
                              f"or model.safetensors)")
    for d in args.transfer_dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"transfer folder {d}: no such directory")
    if args.images is not None and not Path(args.images).is_dir():
        raise ConfigError(f"--images {args.images}: no such directory")
    if args.num_images < 1:
        raise ConfigError(f"--num-images {args.num_images} must be >= 1")
    if args.query_patch is not None and args.query_patch < 0:
        raise ConfigError(f"--query-patch {args.query_patch} must be >= 0")


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    check_args(args)
    from mixedae.report.build import ReportOptions, write_report
    out = Path(args.out) if args.out else Path(args.run_dir) / "report"
    opts = ReportOptions(out=out, baseline=args.baseline and Path(args.baseline),
                         images=args.images and Path(args.images), num_images=args.num_images,
                         query=args.query_patch, seed=args.seed, name=args.name)
    path = write_report(args.run_dir, args.transfer_dirs, opts)
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae report", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
