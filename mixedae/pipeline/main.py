"""``mixedae pipeline``: pretraining → conversion → transfers → report, as resumable stages.

    mixedae pipeline --preset mixedae_base --data /imagenet/train --out work/b300 \\
        --transfers ade,coco,cls11,finetune --ade-data data/ade/ADEChallengeData2016 \\
        --coco-data data/coco --cls-root /datasets --ft-data /imagenet --gpus 8
    # the CPU smoke version on the small real data beside the repo (minutes):
    mixedae pipeline --preset mixedae_tiny --data ../shared/data/imagenet_tiny --out /tmp/p \\
        --pretrain-args "--model micro --img-size 64 --patch-size 16 --mask-patch-size 32 \\
        --batch-size 16 --max-steps 10 --num-workers 0" --mm-configs smoke \\
        --transfers ade,coco,cls11 --ade-data ../shared/data/ade_tiny \\
        --coco-data ../shared/data/coco_tiny --cls-root ../shared/data/cls_tiny \\
        --cls-datasets cifar10 --cls-args "--iters 10 --lrs 0.01 --img-size 64 --workers 0"

Stages (``OUT/<stage>/``, logs in ``OUT/logs/``, markers in ``OUT/stages/``): ``pretrain``
(``mixedae pretrain``), ``convert`` (``mixedae convert --to mm``), ``ade`` / ``coco``
(``tools/train.py`` then ``tools/test.py`` on the last checkpoint → ``test_metrics.json``),
``cls11`` (``mixedae transfer``), ``finetune`` (``mixedae finetune``), ``report``
(``mixedae report``; redrawn whenever another stage ran or failed). ``--gpus N`` (N > 1)
launches every stage with torchrun (``tools/dist_train.sh`` for mm training). A rerun skips
finished stages; a failed stage is named with its log, the independent stages still run and
the report shows what is missing.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from mixedae.pipeline import stages as S
from mixedae.pipeline.plan import TRANSFERS, build_stages, mm_config, split
from mixedae.runtime.cli import add_debug_flag, run_main
from mixedae.runtime.errors import ConfigError




def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixedae pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from mixedae.pretrain.config import PRESETS
    p.add_argument("--preset", required=True, choices=sorted(PRESETS),
                   help="pretraining preset (mixedae pretrain)")
    p.add_argument("--data", required=True, help="pretraining images (ImageFolder)")
    p.add_argument("--out", required=True, help="pipeline folder")
    p.add_argument("--transfers", default="", help="comma list of " + ", ".join(TRANSFERS))
    p.add_argument("--pretrain-args", default="", help="more `mixedae pretrain` flags (quoted)")
    p.add_argument("--mm-configs", default="production", choices=["production", "smoke"],
                   help="production configs (ViT-B/L) or tiny smoke configs (ViT-micro)")
    p.add_argument("--ade-data", help="ADEChallengeData2016 folder (ade)")
    p.add_argument("--coco-data", help="COCO folder with annotations/ (coco)")
    p.add_argument("--mm-cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra --cfg-options for tools/train.py and tools/test.py")
    p.add_argument("--cls-root", help="root of the classification datasets (cls11)")
    p.add_argument("--cls-datasets", default="all", help="datasets of cls11 (default all)")
    p.add_argument("--cls-args", default="", help="more `mixedae transfer` flags (quoted)")
    p.add_argument("--ft-data", help="ImageNet-style folder with train/ and val/ (finetune)")
    p.add_argument("--ft-args", default="", help="more `mixedae finetune` flags (quoted)")
    p.add_argument("--report-args", default="", help="more `mixedae report` flags (quoted)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs on this machine (torchrun if > 1)")
    p.add_argument("--redo", default="", help="comma list of stages to run again")
    p.add_argument("--dry-run", action="store_true", help="print the stages, run nothing")
    add_debug_flag(p)
    return p


def pretrain_config(args):
    """The exact PretrainConfig and RunOptions the pretrain stage will use (validates its flags
    now)."""
    from mixedae.pretrain import command
    pa = command.get_args_parser()

    def refuse(msg):  # argparse's own exit would print a usage block
        raise ConfigError(f"--pretrain-args {args.pretrain_args!r}: {msg}")
    pa.error = refuse
    ns = pa.parse_args(["--preset", args.preset, "--data", args.data,
                        *split("--pretrain-args", args.pretrain_args)])
    opts = command.options_from_args(ns)
    return command.config_from_args(ns), opts


def check(args, cfg) -> list[str]:
    """Every flag and path, before any work; returns the transfer list."""
    transfers = [t.strip() for t in args.transfers.split(",") if t.strip()]
    transfers = ["finetune" if t == "ft" else t for t in transfers]
    bad = [t for t in transfers if t not in TRANSFERS]
    if bad:
        raise ConfigError(f"--transfers: unknown {bad}; choose from {', '.join(TRANSFERS)}")
    need = {"ade": "--ade-data", "coco": "--coco-data", "cls11": "--cls-root",
            "finetune": "--ft-data"}
    paths = [("--data", args.data)] + [(need[t], getattr(args, need[t][2:].replace("-", "_")))
                                       for t in transfers]
    for flag, path in paths:
        if not path:
            raise ConfigError(f"{flag} is required for the chosen transfers")
        if not Path(path).is_dir():
            raise ConfigError(f"{flag} {path}: no such directory")
    for t in ("ade", "coco"):
        if t in transfers:
            mm_config(args, cfg, t)
    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus} must be >= 1")
    if not args.dry_run:
        _check_machine(args, transfers)
    return transfers


def _check_machine(args, transfers) -> None:
    if args.gpus > 1:
        import torch
        if torch.cuda.device_count() < args.gpus:
            raise ConfigError(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA "
                              f"device(s) visible")
    if {"ade", "coco"} & set(transfers):
        probe = "import mmcv.ops, mmseg, mmdet"  # in a child: this process stays mm-free
        r = subprocess.run([S.python(), "-c", probe], capture_output=True, text=True)
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise ConfigError(f"--transfers ade/coco need mmcv with compiled ops, mmseg and "
                              f"mmdet ({last}); run tools/setup_env.sh")


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    for flag in ("out", "data", "ade_data", "coco_data", "cls_root", "ft_data"):
        if getattr(args, flag):  # the stages run in OUT: every path absolute
            setattr(args, flag, str(Path(getattr(args, flag)).resolve()))
    out = Path(args.out)
    cfg, pre_opts = pretrain_config(args)
    transfers = check(args, cfg)
    stages = build_stages(args, cfg, transfers, out)
    redo = {s.strip() for s in args.redo.split(",") if s.strip()}
    unknown = redo - {s.name for s in stages}
    if unknown:
        raise ConfigError(f"--redo: no stage {sorted(unknown)} in this pipeline "
                          f"({', '.join(s.name for s in stages)})")
    runner = S.Runner(out, redo)
    runner.check(stages)
    if args.dry_run:
        dry_run(args, cfg, pre_opts, runner, stages)
        return 0
    return run_all(runner, stages, out)


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae pipeline", _main, argv)


def dry_run(args, cfg, pre_opts, runner, stages) -> None:
    """Each stage's command line, and for pretraining an estimated time (estimate.py)."""
    from mixedae.pipeline.estimate import pretrain_estimate
    from mixedae.pretrain.data import list_images
    device = pre_opts.device or ("cuda" if args.gpus > 1 or _cuda() else "cpu")
    try:
        num_images = len(list_images(args.data))
    except ConfigError:
        num_images = None
    for s in stages:
        print(f"[{runner.state(s)}] {s.name}: " + " && ".join(
            shlex.join(map(str, step())) for step in s.steps))
        if s.name == "pretrain":
            print("    " + pretrain_estimate(cfg, num_images, pre_opts.max_steps, device,
                                             args.gpus))
        elif s.name in TRANSFERS:
            print("    estimate: not modelled (see the transfer's own iterations / epochs)")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def run_all(runner, stages, out: Path) -> int:
    for i, s in enumerate(stages, 1):
        runner.position = f"{i}/{len(stages)}"
        runner.run(s)
    report = out / "report" / "report.html"
    if runner.failed:
        print("[pipeline] failed: " + "; ".join(f"{n} (log: {p})" for n, p in
                                                runner.failed.items()))
        print(f"[pipeline] report (partial): {report}" if report.is_file() else "")
        return 1
    print(f"[pipeline] all stages done; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
