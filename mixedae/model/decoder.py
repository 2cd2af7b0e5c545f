"""MAE-style lightweight decoder predicting (normalized) pixels of every patch (Eq. 3–4).

Default 8 blocks × 512 (MAE); the light 2 × 256 variant is the MixedAE-Full* of Table 1.
Input tokens are first projected (``embed``), then [MASK] tokens fill hidden positions
(``mask_token``), a fixed 2-D sin-cos position embedding is added, and global self-attention
blocks run (SDPA).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from mixedae.model.pos_embed import sincos_2d
from mixedae.model.vit import Block, init_weights_xavier


class MAEDecoder(nn.Module):
    def __init__(self, grid_hw: tuple[int, int], embed_dim: int, decoder_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, patch_size: int = 16, in_chans: int = 3,
                 mlp_ratio: float = 4.0):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos_embed = nn.Parameter(sincos_2d(decoder_dim, *grid_hw, 1)[None], requires_grad=False)
        self.blocks = nn.ModuleList([Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True,
                                           norm_layer=norm_layer) for _ in range(depth)])
        self.norm = norm_layer(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_size ** 2 * in_chans)
        self.apply(init_weights_xavier)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """cls (B, 1, Dd), tokens (B, L, Dd) already embedded and unmixed → (B, L, p²·C)."""
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]
