"""``mixedae pretrain``: the command line of the pretraining engine (:mod:`.engine`).

    mixedae pretrain --preset mixedae_base --data /imagenet/train --output-dir runs/mixedae_base
    torchrun --standalone --nproc_per_node 8 -m mixedae.cli pretrain --preset ... (see
    mixedae/runtime/distributed.py for multi-node flags)

Every configuration problem is reported as one line (exit code 2) before any training work;
failures while training (I/O, a full disk, diverged training, a hung rank) as one line with
exit code 1 (:mod:`mixedae.runtime.cli`; ``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing

from mixedae.pretrain.config import PRESETS, PretrainConfig, get_preset
from mixedae.pretrain.data import build_pretrain_dataset
from mixedae.pretrain.engine import RunOptions, pretrain
from mixedae.runtime import checkpoint as ckpt
from mixedae.runtime.cli import add_debug_flag, check_flags, check_writable_dir, run_main
from mixedae.runtime.distributed import cleanup, parse_device
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.precision import AMP, amp_dtype
from mixedae.runtime.run_logger import setup_logging


_OVERRIDES = ("model", "batch_size", "epochs", "warmup_epochs", "blr", "lr", "accum_iter",
              "mixing", "mix_ratio", "attention", "img_size", "patch_size", "mask_patch_size",
              "decode")  # flags of config fields, parsed as the field's type


def _field_type(name: str) -> type:
    """The type of ``PretrainConfig.<name>`` (``float | None`` → float)."""
    hint = typing.get_type_hints(PretrainConfig)[name]
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


_HELP = {"decode": "input pipeline: 'cpu' (PIL in the loader workers, default) or 'gpu' "
                  "(workers read bytes; batched JPEG decode + augmentation on the run's device)"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("mixedae pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mixedae_base", choices=sorted(PRESETS))
    for name in _OVERRIDES:
        p.add_argument("--" + name.replace("_", "-"), type=_field_type(name), default=None,
                       help=_HELP.get(name, f"override config.{name}"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any PretrainConfig field (JSON value), repeatable")
    p.add_argument("--data", required=True, help="ImageFolder-style image folder")
    p.add_argument("--output-dir", default=None, help="default runs/<preset>")
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (with a checkpoint) after this many seconds of training")
    p.add_argument("--resume", default="auto", help="'auto', a checkpoint path, or 'none'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--amp", default="bf16", choices=AMP)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--probe-every", type=int, default=0,
                   help="source-identity probe at step 0 and every N steps (0: off)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--max-bad-steps", type=int, default=0,
                   help="skip up to N optimizer steps with non-finite gradients (default 0: "
                        "stop at the first, keeping the last good checkpoint)")
    add_debug_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return get_preset(args.preset, **overrides)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    check_flags(args, {"save_every": ">=1", "log_every": ">=1", "max_steps": ">=1",
                       "num_workers": ">=0", "time_limit": ">0", "seed": ">=0",
                       "max_bad_steps": ">=0", "probe_every": ">=0"})
    return RunOptions(
        output_dir=args.output_dir or f"runs/{args.preset}", num_workers=args.num_workers,
        save_every=args.save_every, max_steps=args.max_steps, time_limit=args.time_limit,
        resume=None if args.resume in ("none", "") else args.resume, seed=args.seed,
        device=args.device, amp=args.amp, compile=args.compile, log_every=args.log_every,
        progress=not args.no_progress, max_bad_steps=args.max_bad_steps,
        probe_every=args.probe_every)


def _main(argv: list[str]) -> int:
    args = get_args_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", 1))
    setup_logging(int(os.environ.get("RANK", 0)))
    try:  # every configuration problem surfaces here, before any training work
        cfg = config_from_args(args)
        opts = options_from_args(args)
        cfg.micro_batch_size(world)
        amp_dtype(opts.amp, parse_device(opts.device))
        ckpt.resolve_resume(opts.resume, opts.output_dir)
        check_writable_dir(opts.output_dir)
        dataset = build_pretrain_dataset(args.data, cfg.img_size, cfg.crop_scale)
        pretrain(cfg, dataset, opts)
    finally:
        cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae pretrain", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
