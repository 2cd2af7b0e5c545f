"""``mixedae transfer``: the 11-dataset downstream classification benchmark (Table 2).

Protocol (Appendix B "Downstream classification", following Ericsson et al. [20] and [39, 61];
what the paper fixes is marked *paper*, the rest follows Ericsson et al.'s code):

* model: the pretrained ViT with a fresh linear head on the mean of the patch tokens after
  ``fc_norm`` (exactly the fine-tuning classifier of ``mixedae finetune``), drop path 0.1;
  the whole model is fine-tuned (*paper*);
* optimisation: SGD (*paper*) with Nesterov momentum 0.9 (``--no-nesterov`` for plain
  momentum), weight decay 0 (*paper*), batch size 64 (global), 5,000 iterations (*paper*,
  ``--iters``), cosine learning-rate schedule per iteration (*paper*; no warm-up by default),
  fp32 on CPU / bf16 autocast on CUDA;
* augmentation: train RandomResizedCrop(224, scale (0.08, 1), bicubic) + horizontal flip;
  test Resize 224 (short side, bicubic) → CenterCrop 224 (``--eval-crop-pct 1``; 0.875 gives
  the ImageNet-style Resize 256 → crop 224 of earlier versions); ImageNet mean/std;
* learning rate: grid {1e-3, 3e-3, 1e-2, 3e-2} (*paper*, ``--lrs``). Each lr is trained on the
  training part and scored on the validation part of the training data: the dataset's official
  validation split where it has one (Aircraft, DTD, Flowers, VOC2007), otherwise a 20 %
  hold-out (``--val-frac``, ``--seed``): the training indices shuffled by numpy with seed 0,
  the first 20 % to val, as Ericsson et al.'s ``get_train_valid_loader`` (``--holdout
  shuffled``; ``--holdout stratified``: 20 % of each class); ``--val-split holdout`` uses the
  hold-out everywhere. The lr with the best validation score (first in the grid on ties) is retrained
  on the *full* training data (train+val), and only that model is evaluated on the test split,
  which the search never sees;
* metric (*Ericsson et al.*): mean per-class accuracy for Aircraft, Caltech-101, Flowers, Pets;
  VOC2007 11-point mAP (devkit semantics) for VOC, where a class with only "difficult"
  objects in an image is a negative, as in their code (``--voc-difficult ignore``: left out of
  loss and AP); top-1 accuracy for the rest. Every metric
  (top-1, top-5, mean per-class; standard-AP mAP for VOC) is stored for every dataset.

The splits of every dataset are documented in :mod:`mixedae.classification.datasets`.

Outputs in ``--output-dir OUT``::

    OUT/results.md, OUT/results.csv     Table 2 (protocol metric per column, named), every
                                        metric per dataset, lr search; all datasets in OUT
    OUT/results.png                     the scores beside the paper's MixedAE ViT-B row
    OUT/runs/<dataset>/split.json       the train/val indices of the lr search
    OUT/runs/<dataset>/lr<lr>/          search runs: log.jsonl, tb/, result.json (val score)
    OUT/runs/<dataset>/final/           retrain with the chosen lr: log.jsonl, tb/, result.json,
                                        per_class.csv, confusion.csv + confusion.png (VOC:
                                        per_class_ap.png)
    OUT/runs/<dataset>/result.json      dataset summary (val scores, chosen lr, test metrics)

Every result.json above records ``pretrained``: the :mod:`mixedae.runtime.provenance` record
of the ``--checkpoint`` file its run started from (null without one; the summary: its final
run's).

A diverging lr of the search is recorded (``diverged`` in its result.json and in the runs
table) and the lr is chosen among the finite scores; only all of them diverging stops the
dataset. Test and lr-search validation images are never altered: a set with unreadable images
is refused naming them, or ``--skip-unreadable-eval`` evaluates without them (their count in
the dataset's result.json, their names in results.md).

A finished run (``result.json`` present) is skipped when the command is rerun, so an
interrupted sweep resumes per dataset and lr; an unfinished run resumes from its own
``checkpoint.pth`` (written every ``--ckpt-every`` iterations, removed when the run finishes
unless ``--keep-checkpoints``), only under the settings it started with. Rerunning into an
OUT made with other settings is refused.
Datasets run in the order of ``--datasets``. ``--seeds 0,1,2`` runs the whole protocol once
per seed into ``OUT/seed<S>/`` (the layout above in each) and writes ``OUT/results.md`` /
``results.csv`` with the mean ± std of each dataset's test score over the seeds.

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
import json
import sys
from pathlib import Path

from mixedae.classification import cli_common
from mixedae.classification import datasets
from mixedae.classification import results
from mixedae.classification.dataset_readers import VOC_DIFFICULT, load_dataset
from mixedae.classification.specs import ORDER, SPECS
from mixedae.classification.transfer_protocol import SKIP_FLAG, run_dataset
from mixedae.runtime.atomic import atomic_write_text
from mixedae.runtime.distributed import cleanup, init_distributed, is_main_process
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.run_logger import print0
from mixedae.runtime.cli import add_debug_flag, check_flags, check_writable_dir, run_main
from mixedae.runtime.images import require_readable

DEFAULT_LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixedae transfer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="all", help="'all' or a comma list of: "
                   + ", ".join(ORDER) + " (run in the order given)")
    p.add_argument("--root", required=True, help="root holding the datasets (see "
                   "mixedae.classification.datasets for each layout)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--name", default=None, help="row label in the results table "
                   "(default: checkpoint name)")
    cli_common.add_model_args(p)
    p.add_argument("--iters", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lrs", default=",".join(f"{x:g}" for x in DEFAULT_LRS))
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum (the protocol's); --no-nesterov: plain momentum")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-iters", type=int, default=0)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--eval-crop-pct", type=float, default=1.0, help="test resize = img-size / "
                   "this, then center crop: 1.0 = the protocol's Resize 224 → crop 224; 0.875 "
                   "= Resize 256 → crop 224")
    p.add_argument("--val-split", choices=("official", "holdout"), default="official",
                   help="lr-search validation data: the dataset's own val split where it has "
                   "one (aircraft, dtd, flowers102, voc2007), else the hold-out; 'holdout': "
                   "the --val-frac hold-out for every dataset")
    p.add_argument("--val-frac", type=float, default=0.2,
                   help="fraction of train held out to choose the lr (datasets without val)")
    p.add_argument("--holdout", choices=datasets.HOLDOUTS, default="shuffled",
                   help="the hold-out: 'shuffled' (Ericsson et al.: numpy shuffle, first "
                   "--val-frac to val) or 'stratified' (--val-frac of each class)")
    p.add_argument("--voc-difficult", choices=VOC_DIFFICULT, default="negative",
                   help="VOC2007 classes present only as difficult objects: 'negative' "
                   "(Ericsson et al.) or 'ignore' (out of loss and AP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None,
                   help="comma list, e.g. 0,1,2: the whole protocol once per seed (as --seed "
                   "S) into OUT/seed<S>/, and OUT/results.md with mean ± std per dataset")
    cli_common.add_workers_arg(p)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    p.add_argument("--no-verify-checksums", action="store_true",
                   help="only check that CIFAR/Flowers files exist (no md5)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--skip-unreadable-eval", action="store_true",
                   help="evaluate without the unreadable images of a test / lr-search "
                   "validation set (their count and names go into result.json and "
                   "results.md); default: refuse the set, naming them")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop every run after this many iterations, leaving it resumable")
    add_debug_flag(p)
    return p


def parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--lrs must be a comma list of numbers, got {text!r}") from None
    if not lrs or any(not x > 0 or x == float("inf") for x in lrs):
        raise ConfigError(f"--lrs must be positive numbers, got {text!r}")
    return lrs


def parse_seeds(args) -> list[int] | None:
    """``--seeds`` → the seeds (None without it); refuses a bad list and a --seed beside it."""
    if args.seeds is None:
        return None
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be a comma list of integers, got "
                          f"{args.seeds!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {args.seeds!r}: give distinct integers >= 0")
    if args.seed != 0:
        raise ConfigError("give --seed or --seeds, not both")
    return seeds


def check_args(args) -> tuple[list[str], list[float]]:
    """Every flag, before any work: (dataset names, lrs) or ConfigError."""
    check_flags(args, {"iters": ">0", "batch_size": ">0", "eval_batch_size": ">0",
                         "momentum": "[0,1)", "weight_decay": ">=0", "warmup_iters": ">=0",
                         "drop_path": "[0,1)", "eval_crop_pct": "(0,1]", "val_frac": "(0,1)",
                         "seed": ">=0", "ckpt_every": ">=0", "log_every": ">0",
                         "stop_after": ">0"})
    if args.warmup_iters >= args.iters:
        raise ConfigError(f"--warmup-iters {args.warmup_iters} must be < --iters {args.iters}")
    if args.nesterov and args.momentum == 0:
        raise ConfigError("--nesterov needs --momentum > 0 (or pass --no-nesterov)")
    lrs = parse_lrs(args.lrs)
    args.seed_list = parse_seeds(args)
    cli_common.resolve_model_args(args)
    cli_common.resolve_workers(args, "transfer")
    args.name = cli_common.run_name(args)
    args.data = None  # the 11 datasets only
    names = cli_common.check_data_args(args)
    return names, lrs


def _run_all(args, names: list[str], lrs: list[float], out_dir: Path, device) -> list[dict]:
    done = []
    for n in names:
        data = load_dataset(n, args.root, verify_checksums=not args.no_verify_checksums,
                              seed=args.seed, voc_difficult=args.voc_difficult)
        # training data: all-unreadable refused; the test set: every image, never altered
        require_readable(data.train_images, f"{n}/train")
        data.check_eval("test", skip=args.skip_unreadable_eval, flag=SKIP_FLAG,
                        workers=args.workers)
        print0(f"[transfer] {n}: {len(data.train_targets)} train / "
               f"{len(data.test_targets)} test, {data.num_classes} classes "
               f"({data.split_note}); metric: {results.SHORT[data.metric]}")
        s = run_dataset(args, data, lrs, out_dir, device)
        if s is None:
            print0("[transfer] stopped early (--stop-after); rerun the same command to resume")
            break
        done.append(s)
        if is_main_process():
            write_outputs(out_dir, args.name)
    return done


def write_outputs(out_dir: Path, name: str) -> Path:
    """results.md / .csv / .png from every OUT/runs/<dataset>/result.json."""
    res = results.collect(out_dir / "runs" / n / "result.json" for n in ORDER)
    _, md = results.write_tables(out_dir, name, res, "Classification transfer (Table 2 protocol)",
                           paper_row=True)
    results.plot_vs_paper(out_dir, name, res)
    return md


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae transfer", _main, argv)


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    names, lrs = check_args(args)  # every flag, before any work
    check_writable_dir(args.output_dir)
    device = init_distributed().device
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        atomic_write_text(out_dir / "args.json", json.dumps(vars(args), indent=1))
    if args.seed_list is None:
        done = _run_all(args, names, lrs, out_dir, device)
        if is_main_process() and done:
            print(write_outputs(out_dir, args.name).read_text())
    else:
        for seed in args.seed_list:
            args.seed = seed
            print0(f"[transfer] seed {seed} ({args.seed_list.index(seed) + 1}/"
                   f"{len(args.seed_list)}) into {out_dir / f'seed{seed}'}")
            if len(_run_all(args, names, lrs, out_dir / f"seed{seed}", device)) < len(names):
                break  # stopped early (--stop-after): resumable
        if is_main_process():
            print(write_seed_table(out_dir, args.name, args.seed_list).read_text())
    cleanup()
    return 0


def write_seed_table(out_dir: Path, name: str, seeds: list[int]) -> Path:
    """OUT/results.md + results.csv: per dataset the mean ± sample std (ddof 1) of the test
    score over the seeds that finished it (n given), from OUT/seed<S>/runs/*/result.json."""
    import numpy as np
    per = {s: results.collect(out_dir / f"seed{s}" / "runs" / n / "result.json" for n in ORDER)
           for s in seeds}
    cols = [n for n in ORDER if any(n in r for r in per.values())]
    stats = {}
    for n in cols:
        v = [per[s][n]["test_score"] for s in seeds if n in per[s]]
        stats[n] = (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None, len(v))
    full = [s for s in seeds if all(n in per[s] for n in cols)]
    avgs = [float(np.mean([per[s][n]["test_score"] for n in cols])) for s in full]

    def cell(m, sd, k):
        return f"{m:.1f} ± {sd:.1f}" + ("" if k == len(seeds) else f" (n={k})") \
            if sd is not None else f"{m:.1f} (n={k})"
    head = ["Method"] + [SPECS[n].column for n in cols] + ["Avg."]
    avg = cell(float(np.mean(avgs)), float(np.std(avgs, ddof=1)) if len(avgs) > 1 else None,
               len(avgs)) if avgs else "–"
    row = [name] + [cell(*stats[n]) for n in cols] + [avg]
    lines = [f"# Classification transfer (Table 2 protocol), seeds {', '.join(map(str, seeds))}:"
             f" {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| metric | " + " | ".join(results.SHORT[SPECS[n].metric] for n in cols) + " | |",
             "| " + " | ".join(row) + " |", "",
             f"Mean ± sample standard deviation (ddof 1) of the protocol metric over "
             f"{len(seeds)} seeds (n = seeds finished, where fewer); Avg.: over the seeds that "
             f"finished every column. Each seed's own tables: seed<S>/results.md.", ""]
    csv_lines = ["dataset,metric,mean,std,n," + ",".join(f"seed{s}" for s in seeds)]
    for n in cols:
        m, sd, k = stats[n]
        csv_lines.append(f"{n},{SPECS[n].metric},{m:.4f},{'' if sd is None else f'{sd:.4f}'},"
                         f"{k}," + ",".join(f"{per[s][n]['test_score']:.4f}" if n in per[s]
                                           else "" for s in seeds))
    atomic_write_text(out_dir / "results.csv", "\n".join(csv_lines) + "\n")
    atomic_write_text(out_dir / "results.md", "\n".join(lines))
    return out_dir / "results.md"


if __name__ == "__main__":
    sys.exit(main())
