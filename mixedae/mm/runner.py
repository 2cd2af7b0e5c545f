"""Shared logic of tools/train.py, test.py and infer.py: load a config, find its task (mmseg or
mmdet), adapt it to the machine (SyncBN → BN when not distributed or without CUDA; no CUDA: AMP
off, gloo process group and a CPU DDP wrapper), check the feature strides, attach pretrained
backbone weights, build the real mmengine ``Runner``; one error line instead of a traceback."""
from __future__ import annotations

import importlib
import logging
import os
import os.path as osp
import sys
from typing import Any, Callable

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from mixedae.mm import compat, preflight
from mixedae.mm.distributed import init_cpu_process_group, slurm_master_port
from mixedae.runtime.errors import ConfigError, MixedAEError
from mixedae.runtime.weights import (extract_vit, match_state_dict, read_key_names, summarize,
                                     to_target)

compat.apply()

TASKS = ("mmseg", "mmdet")
__all__ = ["TASKS", "load_config", "detect_task", "register_task",
           "adapt_to_machine", "attach_pretrained", "enable_auto_scale_lr", "build_runner",
           "check_full_checkpoint", "guarded"]

# expected failures (bad config, flag, file): one line, no traceback unless --debug
_EXPECTED = (MixedAEError, ValueError, FileNotFoundError, KeyError, TypeError, AssertionError,
             ImportError)


def guarded(main: Callable[[list | None], int], argv: list | None = None) -> int:
    """Run a tool's ``main``; an expected failure becomes ``error: <one line>`` on stderr and
    exit code 2 (the traceback only with ``--debug``)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        rc = main(argv)
    except _EXPECTED as e:
        if "--debug" in args:
            raise
        text = str(e).strip() or type(e).__name__
        print(f"error: {text.splitlines()[0]}", file=sys.stderr)
        return 2
    _end_process_group()
    return rc


def _end_process_group() -> None:
    """Destroy the process group of a finished distributed run: a gloo group left to the
    interpreter's exit can abort a rank ("terminate called without an active exception",
    seen in CI on tools/dist_train.sh) after its work succeeded."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def add_launch_args(ap) -> None:
    """Arguments shared by tools/train.py and tools/test.py (overrides and launcher)."""
    ap.add_argument("--cfg-options", nargs="+", action=DictAction,
                    help="override config entries, e.g. train_cfg.max_iters=100")
    ap.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")


def parse_launch_args(ap, argv=None):
    args = ap.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    if not osp.isfile(path):
        raise FileNotFoundError(f"config not found: {path}")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def detect_task(cfg: Config) -> str:
    """'mmseg' or 'mmdet' from ``default_scope``, else from the model type's registry."""
    scope = cfg.get("default_scope")
    if scope in TASKS:
        return scope
    if scope is not None:
        raise ValueError(f"default_scope {scope!r} is neither mmseg nor mmdet")
    mtype = cfg.get("model", {}).get("type")
    if mtype is None:
        raise ValueError("config has neither default_scope nor model.type")
    importlib.import_module("mmdet.models")  # fills the registries
    importlib.import_module("mmseg.models")
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    found = [t for t, reg in (("mmseg", SEG), ("mmdet", DET)) if mtype in reg.module_dict]
    if len(found) != 1:
        raise ValueError(f"cannot tell the task of model type {mtype!r} "
                         f"(found in {found or 'no registry'}); set default_scope")
    return found[0]


def _walk(obj: Any, fn) -> Any:
    if isinstance(obj, (dict, ConfigDict)):
        fn(obj)
        for v in obj.values():
            _walk(v, fn)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, fn)
    return obj


def adapt_to_machine(cfg: Config, distributed: bool) -> list[str]:
    """Not distributed, or no CUDA (SyncBN has no CPU kernel): SyncBN → BN. No CUDA:
    AmpOptimWrapper → OptimWrapper, nccl → gloo and, distributed, the CPU DDP wrapper.
    Returns notes."""
    notes, cuda = [], torch.cuda.is_available()
    if not distributed or not cuda:
        count = [0]

        def sync_to_bn(d):
            if d.get("type") in ("SyncBN", "MMSyncBN"):
                d["type"] = "BN"
                count[0] += 1
        _walk(cfg._cfg_dict, sync_to_bn)
        if count[0]:
            why = "not distributed" if not distributed else "no CUDA (SyncBN is GPU-only)"
            notes.append(f"{why}: {count[0]} SyncBN norm_cfg(s) -> BN")
    if not cuda:
        ow = cfg.get("optim_wrapper")
        if ow is not None and ow.get("type") == "AmpOptimWrapper":
            ow["type"] = "OptimWrapper"
            for k in ("loss_scale", "dtype", "use_fsdp"):
                ow.pop(k, None)
            notes.append("no CUDA: AmpOptimWrapper -> OptimWrapper (fp32)")
        env = cfg.get("env_cfg")
        if env is not None and env.get("dist_cfg", {}).get("backend") == "nccl":
            env["dist_cfg"]["backend"] = "gloo"
        wrapper = cfg.get("model_wrapper_cfg") or {}
        if distributed and wrapper.get("type", "MMDistributedDataParallel") == \
                "MMDistributedDataParallel":
            cfg.model_wrapper_cfg = dict(
                wrapper, type="CPUDistributedDataParallel", broadcast_buffers=False,
                find_unused_parameters=cfg.get("find_unused_parameters", False))
            notes.append("no CUDA: gloo process group, DDP without device_ids")
    for n in notes:
        print_log(n, logger="current")
    return notes


def _backbone_cfg(cfg: Config) -> ConfigDict:
    bb = cfg.get("model", {}).get("backbone")
    if bb is None:
        raise ValueError("config has no model.backbone")
    return bb


def attach_pretrained(cfg: Config, path: str) -> dict:
    """Check the layout of ``path`` from its key names (a safetensors header; the tensors are
    read once, by the backbone's checked loader) and make the backbone load it. Returns the
    conversion report."""
    path = osp.abspath(path)
    source, kept, dropped = extract_vit(read_key_names(path))
    _, more = to_target(kept, "mm")
    print_log(f"--pretrained {path}: {source} layout, {len(kept)} ViT tensors; "
              f"{summarize(dropped + more)}", logger="current")
    bb = _backbone_cfg(cfg)
    if bb.get("type") != "MixedAEViT":
        raise ValueError(f"--pretrained needs model.backbone.type='MixedAEViT', got {bb.get('type')!r}")
    bb.pop("pretrained", None)
    bb["init_cfg"] = dict(type="Pretrained", checkpoint=path)
    if cfg.model.get("pretrained") is not None:
        cfg.model["pretrained"] = None
    return dict(source=source, dropped=dropped + more)


def enable_auto_scale_lr(cfg: Config) -> None:
    """``--auto-scale-lr`` (mmdet / mmseg): switch on the config's ``auto_scale_lr``; mmengine's
    ``Runner.train`` then multiplies every parameter group's lr by (world size x
    ``train_dataloader.batch_size``) / ``base_batch_size`` before the schedulers are built
    (the linear scaling rule). A config without ``auto_scale_lr.base_batch_size`` is refused."""
    asl = cfg.get("auto_scale_lr")
    base = asl.get("base_batch_size") if isinstance(asl, dict) else None
    if isinstance(base, bool) or not isinstance(base, int) or base < 1:
        raise ConfigError(f"--auto-scale-lr needs auto_scale_lr.base_batch_size (the total "
                          f"batch the config's lr is set for) as a positive integer, got "
                          f"{base!r}; e.g. --cfg-options auto_scale_lr.base_batch_size=16")
    asl["enable"] = True


def register_task(cfg: Config) -> str:
    """Fill the registries of the config's task (mmseg or mmdet) and this project's modules;
    sets and returns ``default_scope``."""
    task = detect_task(cfg)
    cfg.default_scope = task
    if task == "mmseg":
        from mmseg.utils import register_all_modules
    else:
        from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    importlib.import_module("mixedae.mm")  # registers MixedAEViT / the constructor
    return task


def build_runner(cfg: Config, work_dir: str | None = None, launcher: str = "none",
                 config_path: str | None = None) -> Runner:
    register_task(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        name = osp.splitext(osp.basename(config_path or "run"))[0]
        cfg.work_dir = osp.join("./work_dirs", name)
    adapt_to_machine(cfg, distributed=launcher != "none")
    preflight.check_strides(cfg)
    if launcher == "slurm":   # before mmengine's slurm launcher would default it to 29500
        port = slurm_master_port()
        print_log(f"slurm: MASTER_PORT={port}", logger="current")
    init_cpu_process_group(launcher)
    if "runner_type" in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    warning = preflight.cpu_warning(runner.model)
    if warning:
        print_log(warning, logger="current", level=logging.WARNING)
    return runner


def check_full_checkpoint(model: torch.nn.Module, path: str) -> None:
    """mmengine's ``load_from`` loads non-strictly; for evaluation we insist that the
    checkpoint covers the whole model (one error naming the keys otherwise)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    while hasattr(model, "module"):   # DDP and/or a TTA model around the network
        model = model.module
    match_state_dict(model.state_dict(), sd, what=path)


def is_distributed_env() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
