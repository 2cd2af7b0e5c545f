"""Shared logic of tools/train.py and tools/test.py: load a config, find its task (mmseg or
mmdet), adapt it to the machine (SyncBN → BN and AMP off when not distributed / no GPU),
attach pretrained backbone weights, build the real mmengine ``Runner``."""
from __future__ import annotations

import os
import os.path as osp
from typing import Any

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from mixedae import convert as cv
from mixedae.mm import compat

compat.apply()

TASKS = ("mmseg", "mmdet")
__all__ = ["TASKS", "DictAction", "load_config", "detect_task", "adapt_to_machine",
           "attach_pretrained", "build_runner", "check_full_checkpoint"]


def add_launch_args(ap) -> None:
    """Arguments shared by tools/train.py and tools/test.py (overrides and launcher)."""
    ap.add_argument("--cfg-options", nargs="+", action=DictAction,
                    help="override config entries, e.g. train_cfg.max_iters=100")
    ap.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0)


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
    import mmdet.models  # noqa: F401  (fills the registries)
    import mmseg.models  # noqa: F401
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
    """Non-distributed: SyncBN → BN. No CUDA: AmpOptimWrapper → OptimWrapper. Returns notes."""
    notes = []
    if not distributed:
        count = [0]

        def sync_to_bn(d):
            if d.get("type") in ("SyncBN", "MMSyncBN"):
                d["type"] = "BN"
                count[0] += 1
        _walk(cfg._cfg_dict, sync_to_bn)
        if count[0]:
            notes.append(f"not distributed: {count[0]} SyncBN norm_cfg(s) -> BN")
    if not torch.cuda.is_available():
        ow = cfg.get("optim_wrapper")
        if ow is not None and ow.get("type") == "AmpOptimWrapper":
            ow["type"] = "OptimWrapper"
            for k in ("loss_scale", "dtype", "use_fsdp"):
                ow.pop(k, None)
            notes.append("no CUDA: AmpOptimWrapper -> OptimWrapper (fp32)")
        env = cfg.get("env_cfg")
        if env is not None and env.get("dist_cfg", {}).get("backend") == "nccl":
            env["dist_cfg"]["backend"] = "gloo"
    for n in notes:
        print_log(n, logger="current")
    return notes


def _backbone_cfg(cfg: Config) -> ConfigDict:
    bb = cfg.get("model", {}).get("backbone")
    if bb is None:
        raise ValueError("config has no model.backbone")
    return bb


def attach_pretrained(cfg: Config, path: str) -> dict:
    """Validate ``path`` (any supported layout, converted in memory) and make the backbone
    load it through its checked loader. Returns the conversion report."""
    path = osp.abspath(path)
    sd, _ = cv.load_checkpoint_file(path)
    source, kept, dropped = cv.extract_vit(sd)
    _, more = cv.to_target(kept, "mm")
    print_log(f"--pretrained {path}: {source} layout, {len(kept)} ViT tensors; "
              f"{cv.summarize(dropped + more)}", logger="current")
    bb = _backbone_cfg(cfg)
    if bb.get("type") != "MixedAEViT":
        raise ValueError(f"--pretrained needs model.backbone.type='MixedAEViT', got {bb.get('type')!r}")
    bb.pop("pretrained", None)
    bb["init_cfg"] = dict(type="Pretrained", checkpoint=path)
    if cfg.model.get("pretrained") is not None:
        cfg.model["pretrained"] = None
    return dict(source=source, dropped=dropped + more)


def build_runner(cfg: Config, work_dir: str | None = None, launcher: str = "none",
                 config_path: str | None = None) -> Runner:
    task = detect_task(cfg)
    cfg.default_scope = task
    if task == "mmseg":
        from mmseg.utils import register_all_modules
    else:
        from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    import mixedae.mm  # noqa: F401  (registers MixedAEViT / the constructor)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        name = osp.splitext(osp.basename(config_path or "run"))[0]
        cfg.work_dir = osp.join("./work_dirs", name)
    adapt_to_machine(cfg, distributed=launcher != "none")
    if "runner_type" in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def check_full_checkpoint(model: torch.nn.Module, path: str) -> None:
    """mmengine's ``load_from`` loads non-strictly; for evaluation we insist that the
    checkpoint covers the whole model (one error naming the keys otherwise)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if hasattr(model, "module"):
        model = model.module
    cv.match_state_dict(model.state_dict(), sd, what=path)


def is_distributed_env() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
