"""Checks of a dense-transfer config before any work: the feature strides the backbone (and a
``SimpleFPN`` neck) produce against the strides the heads assume, and a warning when a config
is far too large to run on CPU."""
from __future__ import annotations

import torch
from mmengine.config import Config

from mixedae.mm.backbone import DEFAULT_OUT_STRIDES, adapter_factors, default_out_indices
from mixedae.runtime.errors import ConfigError

# trainable parameters above which a CPU run is flagged (the smoke configs have ~1-2 M; ViT-B
# UperNet / Cascade Mask R-CNN over 100 M)
CPU_PARAM_LIMIT = 10e6

_HEAD_STRIDES = ("roi_head.bbox_roi_extractor.featmap_strides",
                 "roi_head.mask_roi_extractor.featmap_strides",
                 "rpn_head.anchor_generator.strides")


def _get(d, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def feature_strides(cfg: Config) -> tuple[int, ...] | None:
    """Strides of the feature maps handed to the heads (None: not a MixedAEViT model)."""
    model = cfg.get("model", {})
    bb = model.get("backbone") or {}
    if bb.get("type") != "MixedAEViT":
        return None
    patch = int(bb.get("patch_size", 16))
    neck = model.get("neck") or {}
    if neck.get("type") == "SimpleFPN":
        in_stride = int(neck.get("in_stride", 16))
        if in_stride != patch:
            raise ConfigError(f"model.neck.in_stride={in_stride} but model.backbone.patch_size="
                              f"{patch}: the simple feature pyramid would give wrong strides; "
                              f"set model.neck.in_stride={patch}")
        strides = tuple(int(s) for s in neck.get("out_strides", DEFAULT_OUT_STRIDES))
        adapter_factors(in_stride, strides, what="model.neck (SimpleFPN)")
        return strides
    if bb.get("with_adapter", True):
        strides = tuple(int(s) for s in bb.get("out_strides", DEFAULT_OUT_STRIDES))
        adapter_factors(patch, strides, what="model.backbone (MixedAEViT adapter)")
        return strides
    n = len(bb.get("out_indices") or default_out_indices(12))
    return (patch,) * n


def check_strides(cfg: Config) -> tuple[int, ...] | None:
    """Refuse a config whose heads assume other strides than the backbone produces."""
    strides = feature_strides(cfg)
    if strides is None:
        return None
    for key in _HEAD_STRIDES:
        want = _get(cfg.model, key)
        if want is None:
            continue
        want = tuple(int(s) for s in want)[:len(strides)]
        if want != strides[:len(want)]:
            raise ConfigError(
                f"model.{key}={list(want)} but the backbone (patch_size "
                f"{cfg.model.backbone.get('patch_size', 16)}) feeds feature maps of strides "
                f"{list(strides)}; make them agree (model.backbone.out_strides or the heads)")
    return strides


def cpu_warning(model: torch.nn.Module, cuda: bool | None = None) -> str | None:
    """A one-line warning when ``model`` is too large to train or test in reasonable time on
    CPU, else None."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    n = sum(p.numel() for p in model.parameters())
    if cuda or n < CPU_PARAM_LIMIT:
        return None
    return (f"warning: no CUDA and the model has {n / 1e6:.0f} M parameters: on CPU every "
            f"iteration will be very slow (seconds to minutes). To try the whole pipeline in "
            f"minutes use the tiny configs: python -m mixedae.mm.smoke {{seg|det}} DATA_ROOT "
            f"tiny.py (docs/transfer.md)")
