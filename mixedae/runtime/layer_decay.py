"""Layer-wise learning-rate decay (BEiT/MAE fine-tuning), the project's one layer-id rule.

Used unchanged by ImageNet/downstream fine-tuning and by the OpenMMLab optimizer constructor:

* id 0: patch embedding, cls token, position embedding;
* id i+1: transformer block i;
* id num_layers+1: everything else (final norm, fc_norm, head, adapters, necks, decode heads);
* lr scale = decay ** (num_layers + 1 - id);
* no weight decay for 1-D parameters (norms, biases) and for the names the caller lists.

Which names are exempt is the reference's choice of each transfer, made by the caller:

* ImageNet / downstream fine-tuning (MAE ``util/lr_decay.param_groups_lrd`` with
  ``no_weight_decay_list=model.no_weight_decay()``, timm's {pos_embed, cls_token}): the
  classifier's own ``no_weight_decay()``;
* mmseg ADE20K (BEiT) and mmdet COCO (iBOT): none. Their
  ``LayerDecayOptimizerConstructor`` tests ``name in ('pos_embed', 'cls_token')`` on names
  that carry the ``backbone.`` prefix, so the test never holds and the cls token, the
  position embedding and the relative position tables are decayed like every other
  matrix (mmseg 1.x's ``LearningRateDecayOptimizerConstructor`` has the same test). The mm
  constructor follows what those runs did; ``custom_keys`` with ``decay_mult=0`` exempts
  a name.

Names are matched with or without a ``backbone.`` (or any other) prefix.
"""
from __future__ import annotations

import re

import torch.nn as nn

_EMBED = re.compile(r"^(patch_embed|cls_token|pos_embed|mask_token)(\.|$)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def get_layer_id(name: str, num_layers: int, backbone_prefix: str = "backbone.") -> int:
    """Layer id of a parameter name (see module docstring). Parameters outside the backbone
    (when ``backbone_prefix`` is set and the name lacks it) get ``num_layers + 1``."""
    if backbone_prefix:
        if not name.startswith(backbone_prefix):
            return num_layers + 1
        name = name[len(backbone_prefix):]
    if _EMBED.match(name):
        return 0
    m = _BLOCK.match(name)
    return int(m.group(1)) + 1 if m else num_layers + 1


def is_no_weight_decay(name: str, param: nn.Parameter, extra: set[str] = frozenset()) -> bool:
    """Norm weights and all biases (ndim 1), and the names in ``extra`` (with or without a
    ``backbone.`` prefix)."""
    bare = name[len("backbone."):] if name.startswith("backbone.") else name
    return param.ndim <= 1 or name.endswith(".bias") or bare in extra or name in extra


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float,
                             layer_decay: float, num_layers: int,
                             backbone_prefix: str = "", no_weight_decay: set[str] = frozenset()):
    """torch.optim param groups with ``lr`` already scaled per layer (and ``lr_scale`` kept);
    ``no_weight_decay``: names exempt from weight decay besides 1-D parameters (see the module
    docstring for each transfer's reference)."""
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = get_layer_id(name, num_layers, backbone_prefix)
        nd = is_no_weight_decay(name, p, no_weight_decay)
        key = f"layer_{lid}_{'no_decay' if nd else 'decay'}"
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid)
            groups[key] = dict(params=[], param_names=[], lr=lr * scale, lr_scale=scale,
                               weight_decay=0.0 if nd else weight_decay, layer_id=lid)
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())
