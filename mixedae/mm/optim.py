"""Layer-wise lr decay for mmseg / mmdet: ``MixedAELayerDecayOptimizerConstructor``.

Registered in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``, so mmseg and mmdet configs (any
default scope) use it unchanged::

    optim_wrapper = dict(
        type='AmpOptimWrapper',
        optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.999), weight_decay=0.05),
        constructor='MixedAELayerDecayOptimizerConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.65,
                           custom_keys={'decode_head': dict(lr_mult=1.0)}))

The depth comes from the backbone itself (``num_layers`` / mmpretrain's ``get_layer_depth``, as
``MixedAEViT`` reports it), so a config cannot state a wrong one: ``paramwise_cfg.num_layers``
is optional and, when given, must equal the backbone's depth (else one error naming both).

The param groups are the project's one implementation,
:func:`mixedae.runtime.layer_decay.layer_decay_param_groups` (also used by ImageNet / downstream
fine-tuning), which asks the backbone for each parameter's layer (``get_layer_depth``):
lr = base_lr · decay^(num_layers+1-id) and weight decay = 0 for norms and biases (ndim 1),
else base_wd — the cls token, position embedding and relative position tables included, as in
the runs of BEiT (ADE20K) and iBOT (COCO), whose constructors' name test for them never
matches (see :mod:`mixedae.runtime.layer_decay`); exempt them with
``custom_keys={'pos_embed': dict(decay_mult=0.)}`` if wanted. This class then applies
mmengine's ``custom_keys``: the longest key contained in a name multiplies that parameter's lr
by ``lr_mult`` and its weight decay by ``decay_mult`` (default 1).
"""
from __future__ import annotations

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from mixedae.runtime.errors import ConfigError
from mixedae.runtime.layer_decay import layer_decay_param_groups

_KNOWN = {"num_layers", "layer_decay_rate", "custom_keys", "backbone_prefix", "decay_type"}
_NAME = "MixedAELayerDecayOptimizerConstructor"


def backbone_depth(model: nn.Module, prefix: str = "backbone.") -> int:
    """Number of blocks of ``model``'s backbone, from its ``get_layer_depth`` (mmpretrain's
    protocol: returns (depth of a name, number of depths = blocks + 2))."""
    path = prefix.rstrip(".")
    try:
        backbone = model.get_submodule(path) if path else model
    except AttributeError:
        raise ConfigError(f"{_NAME}: the model has no submodule {path!r} "
                          f"(paramwise_cfg.backbone_prefix={prefix!r})") from None
    if not callable(getattr(backbone, "get_layer_depth", None)):
        raise ConfigError(f"{_NAME}: backbone {type(backbone).__name__} does not report its "
                          f"depth (no get_layer_depth); layer decay needs MixedAEViT")
    return int(backbone.get_layer_depth("", "")[1]) - 2


def apply_custom_keys(groups: list[dict], custom: dict) -> list[dict]:
    """Split each group by its ``custom_keys`` entry (longest key contained in the name) and
    scale lr by ``lr_mult`` and weight decay by ``decay_mult``."""
    order = sorted(custom, key=lambda k: (-len(k), k))
    out: dict[tuple, dict] = {}
    for g in groups:
        for p, name in zip(g["params"], g["param_names"]):
            ck = next((k for k in order if k in name), None)
            key = (g["layer_id"], g["weight_decay"] == 0.0, str(ck))
            if key not in out:
                lr_mult = float(custom[ck].get("lr_mult", 1.0)) if ck else 1.0
                decay_mult = float(custom[ck].get("decay_mult", 1.0)) if ck else 1.0
                out[key] = dict(g, params=[], param_names=[], lr=g["lr"] * lr_mult,
                                weight_decay=g["weight_decay"] * decay_mult)
            out[key]["params"].append(p)
            out[key]["param_names"].append(name)
    return [out[k] for k in sorted(out)]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class MixedAELayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        cfg = self.paramwise_cfg
        if "layer_decay_rate" not in cfg:
            raise ConfigError(f"{_NAME}: paramwise_cfg.layer_decay_rate is required")
        unknown = sorted(set(cfg) - _KNOWN)
        if unknown:
            raise ConfigError(f"{_NAME}: unknown paramwise_cfg key(s) {unknown}; known: "
                              f"{sorted(_KNOWN)}")
        if cfg.get("decay_type", "layer_wise") != "layer_wise":
            raise ConfigError(f"{_NAME}: decay_type {cfg['decay_type']!r} not supported "
                              f"(only 'layer_wise')")
        if self.base_lr is None or self.base_wd is None:
            raise ConfigError(f"{_NAME}: optimizer lr and weight_decay must be set")

    def add_params(self, params: list, module: nn.Module, **kwargs) -> None:
        cfg = self.paramwise_cfg
        decay = float(cfg["layer_decay_rate"])
        prefix = cfg.get("backbone_prefix", "backbone.")
        depth = backbone_depth(module, prefix)
        stated = cfg.get("num_layers")
        if stated is not None and int(stated) != depth:
            raise ConfigError(f"{_NAME}: paramwise_cfg.num_layers={stated} but the backbone has "
                              f"{depth} blocks; remove num_layers (the backbone reports it)")
        groups = layer_decay_param_groups(module, self.base_lr, self.base_wd, decay,
                                          backbone_prefix=prefix)
        groups = apply_custom_keys(groups, cfg.get("custom_keys", {}) or {})
        params.extend(groups)
        print_log(f"layer decay {decay} over the backbone's {depth} blocks: {len(groups)} param "
                  f"groups, lr scale {decay ** (depth + 1):.3g} (patch embed) .. "
                  f"{decay:.3g} (last block) .. 1 (heads)", logger="current")
