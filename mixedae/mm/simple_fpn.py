"""``SimpleFPN``: ViTDet's simple feature pyramid as an mmdet neck (Li, Mao, Girshick, He,
"Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022, Sec. 3 and
Fig. 2c), the usual alternative to the BEiT/iBOT 4-scale adapter + FPN for plain ViTs.

Only the LAST backbone feature map (stride = patch size) is used. It is resampled to
``out_strides`` (default 4/8/16/32): ×4 = ConvTranspose2d(C → C/2) → LayerNorm → GELU →
ConvTranspose2d(C/2 → C/4); ×2 = ConvTranspose2d(C → C/2); ×1 = identity; ×1/2 (×1/4) =
max-pool; then each level gets a 1×1 and a 3×3 conv (``out_channels``, no bias) each followed
by a channel LayerNorm; levels beyond 4 (``num_outs``, P6 for the RPN) are stride-2
subsamplings of the last (ViTDet's ``LastLevelMaxPool``). Convs use Caffe2 Xavier init as in
ViTDet. The backbone runs with ``with_adapter=False`` and ``out_indices=(depth-1,)``; its layer
decay is unchanged and the neck, like every head, is at lr scale 1.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule, caffe2_xavier_init
from timm.layers import LayerNorm2d

from mixedae.mm.backbone import DEFAULT_OUT_STRIDES, adapter_factors
from mixedae.runtime.errors import ConfigError


def _resample(dim: int, factor: float) -> tuple[list[nn.Module], int]:
    if factor == 4:
        return [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)], dim // 4
    if factor == 2:
        return [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
    if factor == 1:
        return [], dim
    k = int(round(1 / factor))
    return [nn.MaxPool2d(kernel_size=k, stride=k)], dim


class SimpleFPN(BaseModule):
    """Args: in_channels (ViT width), out_channels (256), in_stride (the backbone's patch
    size), out_strides of the 4 main levels, num_outs (5: + P6 for the RPN)."""

    def __init__(self, in_channels: int = 768, out_channels: int = 256, in_stride: int = 16,
                 out_strides: Sequence[int] = DEFAULT_OUT_STRIDES, num_outs: int = 5,
                 init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        factors = adapter_factors(int(in_stride), out_strides, what="SimpleFPN")
        if num_outs < len(factors):
            raise ConfigError(f"SimpleFPN: num_outs={num_outs} < {len(factors)} levels")
        self.in_stride, self.out_strides, self.num_outs = int(in_stride), tuple(out_strides), num_outs
        self.stages = nn.ModuleList()
        for f in factors:
            layers, dim = _resample(int(in_channels), f)
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                       LayerNorm2d(out_channels)]
            self.stages.append(nn.Sequential(*layers))

    def init_weights(self) -> None:
        super().init_weights()
        if self.init_cfg is None:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    caffe2_xavier_init(m)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x = inputs[-1]
        outs = [stage(x) for stage in self.stages]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
