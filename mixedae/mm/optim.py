"""Layer-wise lr decay for mmseg / mmdet: ``MixedAELayerDecayOptimizerConstructor``.

Registered in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``, so mmseg and mmdet configs (any
default scope) use it unchanged::

    optim_wrapper = dict(
        type='AmpOptimWrapper',
        optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.999), weight_decay=0.05),
        constructor='MixedAELayerDecayOptimizerConstructor',
        paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65,
                           custom_keys={'decode_head': dict(lr_mult=1.0)}))

The layer id and the no-weight-decay rule are the project's one rule in
:mod:`mixedae.runtime.layer_decay` (``get_layer_id``, ``is_no_weight_decay``); this class only turns
them into param groups: lr = base_lr · decay^(num_layers+1-id) · lr_mult and weight decay =
0 for norms/biases/tokens/embeddings/relative tables, else base_wd · decay_mult, where
lr_mult/decay_mult come from the longest ``custom_keys`` entry contained in the name
(default 1).
"""
from __future__ import annotations

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from mixedae.runtime.layer_decay import get_layer_id, is_no_weight_decay

_KNOWN = {"num_layers", "layer_decay_rate", "custom_keys", "backbone_prefix", "decay_type"}


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class MixedAELayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        cfg = self.paramwise_cfg
        for key in ("num_layers", "layer_decay_rate"):
            if key not in cfg:
                raise ValueError(f"MixedAELayerDecayOptimizerConstructor: paramwise_cfg.{key} "
                                 f"is required")
        unknown = sorted(set(cfg) - _KNOWN)
        if unknown:
            raise ValueError(f"MixedAELayerDecayOptimizerConstructor: unknown paramwise_cfg "
                             f"key(s) {unknown}; known: {sorted(_KNOWN)}")
        if cfg.get("decay_type", "layer_wise") != "layer_wise":
            raise ValueError(f"MixedAELayerDecayOptimizerConstructor: decay_type "
                             f"{cfg['decay_type']!r} not supported (only 'layer_wise')")
        if self.base_lr is None or self.base_wd is None:
            raise ValueError("MixedAELayerDecayOptimizerConstructor: optimizer lr and "
                             "weight_decay must be set")

    def add_params(self, params: list, module: nn.Module, **kwargs) -> None:
        cfg = self.paramwise_cfg
        num_layers = int(cfg["num_layers"])
        decay = float(cfg["layer_decay_rate"])
        prefix = cfg.get("backbone_prefix", "backbone.")
        custom = cfg.get("custom_keys", {}) or {}
        custom_order = sorted(custom, key=lambda k: (-len(k), k))
        groups: dict[tuple, dict] = {}
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            lid = get_layer_id(name, num_layers, prefix)
            no_wd = is_no_weight_decay(name, p)
            ck = next((k for k in custom_order if k in name), None)
            lr_mult = float(custom[ck].get("lr_mult", 1.0)) if ck else 1.0
            decay_mult = float(custom[ck].get("decay_mult", 1.0)) if ck else 1.0
            key = (lid, no_wd, ck)
            if key not in groups:
                scale = decay ** (num_layers + 1 - lid)
                groups[key] = dict(
                    params=[], param_names=[], layer_id=lid, lr_scale=scale,
                    lr=self.base_lr * scale * lr_mult,
                    weight_decay=0.0 if no_wd else self.base_wd * decay_mult)
            groups[key]["params"].append(p)
            groups[key]["param_names"].append(name)
        ordered = [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], str(k[2])))]
        params.extend(ordered)
        print_log(f"layer decay {decay} over {num_layers} layers: {len(ordered)} param groups, "
                  f"lr scale {decay ** (num_layers + 1):.3g} (patch embed) .. 1 (heads)",
                  logger="current")
