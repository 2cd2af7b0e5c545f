"""Command-line pieces shared by ``mixedae finetune``, ``transfer``, ``linprobe`` and ``knn``:
model flags filled from the checkpoint, the data to evaluate on (ImageFolder data or the 11
datasets), worker counts bounded by the machine, and flag checks that run before any work and
fail with one line naming the flag and value."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mixedae.classification import datasets
from mixedae.classification.dataset_readers import check_layout, load_dataset
from mixedae.classification.specs import ORDER, resolve_names
from mixedae.model.vit import VIT_SIZES
from mixedae.runtime.cli import check_flags
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.weights import resolve_checkpoint_path
from mixedae.runtime.weights import checkpoint_config

DEFAULT_WORKERS = 8

def frozen_eval_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The flags that ``linprobe`` and ``knn`` share: data, output, name, model, feature."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--name", default=None, help="row label of the results (default: "
                   "checkpoint name)")
    add_model_args(p)
    p.add_argument("--feature", choices=("cls", "avg"), default="cls")
    return p


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The last flags of every frozen-encoder command: --no-amp, --no-progress, --debug."""
    from mixedae.runtime.cli import add_debug_flag
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    add_debug_flag(p)


# ---- model ------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, img_size: int = 224) -> None:
    p.add_argument("--checkpoint", default=None, help="pretrained weights: a pretraining run "
                   "directory / its model.safetensors or checkpoint.pth, an official MAE / timm "
                   "/ converted ViT; omitted: random init")
    p.add_argument("--model", default=None, choices=sorted(VIT_SIZES),
                   help="ViT size (default: from the checkpoint metadata, else base)")
    p.add_argument("--patch-size", type=int, default=None, help="default: checkpoint, else 16")
    p.add_argument("--img-size", type=int, default=img_size)


def resolve_model_args(args) -> None:
    """Check ``--checkpoint`` exists; fill --model/--patch-size from its metadata; refuse
    contradictions and an image size the patch does not divide."""
    if args.checkpoint and not resolve_checkpoint_path(args.checkpoint).is_file():
        raise ConfigError(f"--checkpoint {args.checkpoint}: no such file "
                          f"({resolve_checkpoint_path(args.checkpoint)})")
    cfg = checkpoint_config(args.checkpoint) if args.checkpoint else {}
    for key, default in (("model", "base"), ("patch_size", 16)):
        given, stored = getattr(args, key), cfg.get(key)
        if given is not None and stored is not None and given != stored:
            raise ConfigError(f"--{key.replace('_', '-')} {given} contradicts the checkpoint "
                              f"({key}={stored})")
        setattr(args, key, given if given is not None else (stored if stored is not None
                                                            else default))
    check_flags(args, {"patch_size": ">0", "img_size": ">0"})
    if args.img_size % args.patch_size:
        raise ConfigError(f"--img-size {args.img_size} is not a multiple of the patch size "
                          f"{args.patch_size}")


def run_name(args) -> str:
    """Row label of the results tables: --name, else the checkpoint's run / file name."""
    if getattr(args, "name", None):
        return args.name
    if not args.checkpoint:
        return "random-init"
    ck = resolve_checkpoint_path(args.checkpoint)
    return ck.parent.name if ck.name == "model.safetensors" else ck.stem


# ---- workers ----------------------------------------------------------------------------------
def add_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None,
                   help=f"data-loading processes per rank (default {DEFAULT_WORKERS}; never "
                   "more than this machine's CPU cores: larger values are lowered, with a note)")


def resolve_workers(args, cmd: str) -> None:
    """``args.workers = min(requested or DEFAULT_WORKERS, os.cpu_count())``, noting a cut."""
    check_flags(args, {"workers": ">=0"})
    cores = os.cpu_count() or 1
    asked = DEFAULT_WORKERS if args.workers is None else args.workers
    if asked > cores and args.workers is not None:
        print(f"[{cmd}] note: --workers {asked} lowered to {cores} (the CPU cores of this "
              f"machine)", file=sys.stderr)
    args.workers = min(asked, cores)


# ---- data -------------------------------------------------------------------------------------
def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (one of --data or --datasets)")
    g.add_argument("--data", default=None, help="ImageFolder data in ImageNet layout: "
                   "DIR/<train-folder>/<class>/* and DIR/<val-folder>/<class>/*")
    g.add_argument("--train-folder", default="train", help="'.' means DIR itself")
    g.add_argument("--val-folder", default="val", help="the evaluation folder ('.' = DIR)")
    g.add_argument("--datasets", default=None, help="the 11 transfer datasets: 'all' or a "
                   "comma list of " + ", ".join(ORDER) + " (run in the order given)")
    g.add_argument("--root", default=None, help="root of the 11 datasets (layouts: "
                   "mixedae.classification.datasets)")
    g.add_argument("--no-verify-checksums", action="store_true",
                   help="only check that CIFAR/Flowers files exist (no md5)")


def check_data_args(args) -> list[str] | None:
    """Validate the data flags before any work. Returns the dataset names (``--datasets``)
    or None (``--data``); every missing dataset is named in one error."""
    if (args.data is None) == (args.datasets is None):
        raise ConfigError("give exactly one of --data DIR (ImageFolder) or --datasets NAMES "
                          "--root ROOT")
    if args.data is not None:
        for sub in (args.train_folder, args.val_folder):
            if not (Path(args.data) / sub).is_dir():
                raise ConfigError(f"--data {args.data}: missing folder {Path(args.data) / sub} "
                                  f"(expected <class>/<image> inside)")
        return None
    try:
        names = resolve_names(args.datasets)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.root is None or not Path(args.root).is_dir():
        raise ConfigError(f"--root {args.root}: not a directory (needed with --datasets)")
    missing = []
    for n in names:
        try:
            check_layout(n, args.root)
        except datasets.DatasetNotFoundError as e:
            missing.append(str(e))
    if missing:
        raise ConfigError("\n".join(missing))
    return names


def parse_and_run(get_parser, check_args, run_one, tables, argv: list[str]) -> int:
    """A frozen-encoder command: parse ``argv``, check every flag before any work, then
    :func:`run_per_dataset`; prints the results table at the end, leaves the process group.
    Returns the exit code."""
    from mixedae.runtime.distributed import cleanup
    args = get_parser().parse_args(argv)
    md = run_per_dataset(args, check_args(args), run_one, tables)
    if md is not None:
        print(Path(md).read_text())
    cleanup()
    return 0


def run_per_dataset(args, names: list[str] | None, run_one, tables) -> Path | None:
    """``run_one(args, data, out_dir, device)`` for every dataset in order, after the process
    group is set up; stops after the first ``None`` (a run stopped early: its partial result
    is on disk). Rank 0 rewrites the results tables, ``tables(args, summaries, note)`` (their
    ``results.md``, None when there is nothing to show), after every data and once more on
    any other exit (Ctrl-C, an error: the tables then say where the run ended), so every exit
    leaves the tables of all data done so far; then it records the arguments in
    ``OUT/args.json``. Returns the last ``results.md`` written (rank 0)."""
    from mixedae.runtime.atomic import atomic_write_text
    from mixedae.runtime.distributed import init_distributed, is_main_process
    device, out_dir, done = init_distributed().device, Path(args.output_dir), []
    md, current = None, "loading the first data"
    try:
        for data in iter_data(args, names, args.seed):
            current = data.name
            s = run_one(args, data, out_dir, device)
            if s is not None:
                done.append(s)
            if is_main_process():
                md = tables(args, done, None)
            if s is None:
                break
            current = f"loading the data after {data.name}"
    except BaseException as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped by an error"
        if is_main_process() and out_dir.is_dir():  # not when refused before any output
            try:
                tables(args, done, f"{what} during {current}; rerun the same command to "
                                   f"continue (finished data are skipped, a started one resumes)")
            except Exception as e2:  # noqa: BLE001 (the first error is the one to report)
                print(f"note: results tables not updated ({type(e2).__name__}: {e2})",
                      file=sys.stderr)
        raise
    if is_main_process() and done:
        atomic_write_text(out_dir / "args.json", json.dumps(vars(args), indent=1))
    return md


def save_result(ds_dir: Path, data, ev: dict, name: str, **info) -> dict:
    """Rank 0 writes the dataset's result (``results.save_dataset_result``); every rank waits
    for it and gets the summary (``{}`` on the other ranks)."""
    from mixedae.classification import results
    from mixedae.runtime.distributed import barrier, is_main_process
    summary = results.save_dataset_result(ds_dir, data, ev, name, **info) if is_main_process() else {}
    barrier()
    return summary


def iter_data(args, names: list[str] | None, seed: int = 0):
    """The ClsData to evaluate on, one at a time (loaded lazily, in the order given); each
    test set checked image by image first (never altered: refused naming unreadable files)."""
    if names is None:
        data = [datasets.folder_data(args.data, args.train_folder, args.val_folder, source="data-dir")]
    else:
        data = (load_dataset(n, args.root, verify_checksums=not args.no_verify_checksums,
                               seed=seed) for n in names)
    for d in data:
        d.check_eval("test", workers=args.workers)
        yield d


# ---- per-dataset output directories -----------------------------------------------------------
def check_settings(ds_dir: Path, settings: dict) -> None:
    """Record ``settings`` in ``ds_dir/settings.json`` (rank 0), or refuse a directory that
    holds a run made with other settings (so a resumed or skipped run is the same run)."""
    import json
    from mixedae.runtime.atomic import atomic_write_text
    from mixedae.runtime.distributed import barrier, is_main_process
    path = Path(ds_dir) / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} vs {v!r}" for k, v in settings.items()
                if old.get(k) != v]
        if diff:
            raise ConfigError(f"{path} was made with other settings ({'; '.join(diff)}); use "
                              f"another --output-dir")
    elif is_main_process():
        atomic_write_text(path, json.dumps(settings, indent=1))
    barrier()
