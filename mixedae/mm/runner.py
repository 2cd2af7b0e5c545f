"""Shared logic of tools/train.py, test.py and infer.py: load a config, find its task (mmseg or
mmdet), adapt it to the machine (SyncBN → BN when not distributed or without CUDA; no CUDA: AMP
off, gloo process group and a CPU DDP wrapper), check the feature strides, attach pretrained
backbone weights, build the real mmengine ``Runner``; one error line instead of a traceback."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import os.path as osp
from typing import Any, Callable

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from mixedae.mm import compat, preflight
from mixedae.mm.distributed import init_cpu_process_group, slurm_master_port
from mixedae.runtime.cli import first_line, run_main
from mixedae.runtime.errors import CheckpointError, ConfigError
from mixedae.runtime.torch_files import load_weights_only
from mixedae.runtime.weights import (extract_vit, match_state_dict, read_key_names, summarize,
                                     to_target)

compat.apply()

TASKS = ("mmseg", "mmdet")
__all__ = ["TASKS", "load_config", "detect_task", "register_task",
           "adapt_to_machine", "attach_pretrained", "enable_auto_scale_lr", "build_runner",
           "check_full_checkpoint", "run_tool"]

def run_tool(body: Callable[[list[str]], int | None], argv: list | None = None) -> int:
    """The ``main`` of every mm tool (tools/train.py, test.py, infer.py, get_flops.py,
    ``python -m mixedae.mm.smoke``): the one error path of every command,
    :func:`mixedae.runtime.cli.run_main` (the line starts with ``error:``, as these tools always
    printed it). While ``body`` runs, a config type no registry knows, or arguments its class
    does not take, are the config's fault (ConfigError, see :func:`_config_build_errors`); a
    finished distributed run destroys its process group."""
    def checked(args: list[str]) -> int | None:
        with _config_build_errors():
            rc = body(args)
        _end_process_group()
        return rc
    return run_main(None, checked, argv)


@contextlib.contextmanager
def _config_build_errors():
    """Every object of a run is built from the user's config by mmengine's ``Registry.build``;
    while this is active a ``type`` the (scope's) registry does not hold, or keyword arguments
    the class does not accept, raise ConfigError naming the type, instead of mmengine's
    ``KeyError`` / ``TypeError``, which a bug in a constructor raises too. Registries with a
    build function of their own (runners, schedulers) are only checked for the type."""
    from mmengine.registry import Registry
    from mmengine.registry.build_functions import build_from_cfg, build_model_from_cfg
    from mmengine.utils import ManagerMixin
    build = Registry.build

    def checked_build(self, cfg, *args, **kwargs):
        obj_type = cfg.get("type") if isinstance(cfg, dict) else None
        if isinstance(obj_type, str):
            with self.switch_scope_and_registry(cfg.get("_scope_")) as reg:
                obj_cls = reg.get(obj_type)
            if obj_cls is None:
                raise ConfigError(f"config: type {obj_type!r} is not in the "
                                  f"{reg.scope}::{reg.name} registry (a typo, or its module is "
                                  f"not imported: custom_imports)")
            if self.build_func in (build_from_cfg, build_model_from_cfg) and not (
                    inspect.isclass(obj_cls) and issubclass(obj_cls, ManagerMixin)):
                _check_arguments(obj_cls, obj_type, cfg, *args, **kwargs)
        return build(self, cfg, *args, **kwargs)

    Registry.build = checked_build
    try:
        yield
    finally:
        Registry.build = build


def _check_arguments(obj_cls, obj_type: str, cfg: dict, default_args: dict | None = None,
                     **_) -> None:
    """The arguments ``build_from_cfg`` will pass (the config's keys but ``type`` /
    ``_scope_``, then ``default_args``) fit the signature of ``obj_cls``."""
    try:
        sig = inspect.signature(obj_cls)
    except (TypeError, ValueError):   # no signature to read (a builtin): nothing to check
        return
    kw = {k: v for k, v in cfg.items() if k not in ("type", "_scope_")}
    for k, v in (default_args or {}).items():
        kw.setdefault(k, v)
    try:
        sig.bind(**kw)
    except TypeError as e:
        raise ConfigError(f"config: {obj_type}: {e}") from None


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
    """The user's config file with ``--cfg-options`` applied. Whatever reading (running) the
    file or merging the options raises is that input's fault: ConfigError naming it."""
    if not osp.isfile(path):
        raise ConfigError(f"config not found: {path}")
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # noqa: BLE001 (a config file is Python: anything it raises)
        raise ConfigError(f"config {path}: {type(e).__name__}: {first_line(e)}") from e
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"--cfg-options: {first_line(e)}") from e
    return cfg


def detect_task(cfg: Config) -> str:
    """'mmseg' or 'mmdet' from ``default_scope``, else from the model type's registry."""
    scope = cfg.get("default_scope")
    if scope in TASKS:
        return scope
    if scope is not None:
        raise ConfigError(f"default_scope {scope!r} is neither mmseg nor mmdet")
    mtype = cfg.get("model", {}).get("type")
    if mtype is None:
        raise ConfigError("config has neither default_scope nor model.type")
    importlib.import_module("mmdet.models")  # fills the registries
    importlib.import_module("mmseg.models")
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    found = [t for t, reg in (("mmseg", SEG), ("mmdet", DET)) if mtype in reg.module_dict]
    if len(found) != 1:
        raise ConfigError(f"cannot tell the task of model type {mtype!r} "
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
        raise ConfigError("config has no model.backbone")
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
        raise ConfigError(f"--pretrained needs model.backbone.type='MixedAEViT', got {bb.get('type')!r}")
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
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = load_weights_only(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    while hasattr(model, "module"):   # DDP and/or a TTA model around the network
        model = model.module
    match_state_dict(model.state_dict(), sd, what=path)


def is_distributed_env() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
