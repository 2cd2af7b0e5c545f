"""Layer-wise learning-rate decay (BEiT/MAE fine-tuning), the project's one grouping rule.

Used unchanged by ImageNet/downstream fine-tuning, linear probing and the OpenMMLab optimizer
constructor. The layer of each parameter is the ViT's own answer,
``VisionTransformer.get_layer_depth(name, prefix)`` (mmpretrain's protocol: 0 = patch
embedding, cls token, position embedding; i + 1 = block i; num_layers + 1 = everything else:
final norm, fc_norm, head, adapters, necks, decode heads); then

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
"""
from __future__ import annotations

import torch.nn as nn


def is_no_weight_decay(name: str, param: nn.Parameter, extra: set[str] = frozenset()) -> bool:
    """Norm weights and all biases (ndim 1), and the names in ``extra`` (with or without a
    ``backbone.`` prefix)."""
    bare = name[len("backbone."):] if name.startswith("backbone.") else name
    return param.ndim <= 1 or name.endswith(".bias") or bare in extra or name in extra


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float,
                             layer_decay: float, backbone_prefix: str = "",
                             no_weight_decay: set[str] = frozenset()):
    """torch.optim param groups of ``model`` with ``lr`` already scaled per layer (and
    ``lr_scale``, ``layer_id`` kept). The layers are those the ViT at ``backbone_prefix``
    (``model`` itself when empty) reports with ``get_layer_depth``; ``no_weight_decay``: names
    exempt from weight decay besides 1-D parameters (see the module docstring)."""
    vit = model.get_submodule(backbone_prefix.rstrip(".")) if backbone_prefix else model
    if not callable(getattr(vit, "get_layer_depth", None)):
        raise ValueError(f"{type(vit).__name__} does not report its layer depth "
                         f"(no get_layer_depth); layer decay needs the project's ViT")
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, num_depths = vit.get_layer_depth(name, backbone_prefix)
        nd = is_no_weight_decay(name, p, no_weight_decay)
        key = f"layer_{lid}_{'no_decay' if nd else 'decay'}"
        if key not in groups:
            scale = layer_decay ** (num_depths - 1 - lid)
            groups[key] = dict(params=[], param_names=[], lr=lr * scale, lr_scale=scale,
                               weight_decay=0.0 if nd else weight_decay, layer_id=lid)
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())
