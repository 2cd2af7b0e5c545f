"""Fixed sine-cosine embeddings (Vaswani et al.; MAE's 2-D layout).

``sincos_1d`` encodes integer positions; ``sincos_2d`` builds the MAE/timm-compatible 2-D grid
embedding (first half of the channels encodes the column index, second half the row index,
exactly as MAE's ``get_2d_sincos_pos_embed``) so that official MAE checkpoints line up.
"""
from __future__ import annotations

import torch


def sincos_1d(dim: int, pos: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """[sin(pos·ω), cos(pos·ω)] with ω_i = 1/temperature^(2i/dim); returns (*pos.shape, dim)."""
    if dim % 2:
        raise ValueError(f"sine-cosine embedding dim must be even, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.to(torch.float64)[..., None] * omega.to(pos.device)
    return torch.cat([out.sin(), out.cos()], dim=-1).float()


def sincos_2d(dim: int, grid_h: int, grid_w: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """(num_prefix + grid_h·grid_w, dim) 2-D embedding, zero rows for prefix (cls) tokens."""
    if dim % 4:
        raise ValueError(f"2-D sine-cosine embedding dim must be divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, xs.flatten()), sincos_1d(dim // 2, ys.flatten())], dim=1)
    return torch.cat([torch.zeros(num_prefix_tokens, dim), emb], dim=0)
