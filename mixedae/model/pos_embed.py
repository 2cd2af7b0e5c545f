"""Fixed sine-cosine embeddings (Vaswani et al.; MAE's 2-D layout).

``sincos_1d`` encodes integer positions; ``sincos_2d`` builds the MAE/timm-compatible 2-D grid
embedding (first half of the channels encodes the column index, second half the row index,
exactly as MAE's ``get_2d_sincos_pos_embed``) so that official MAE checkpoints line up.
``resize_pos_embed`` is the project's one resize of an absolute position embedding (model
inputs of other sizes, checkpoints from other grids).
"""
from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed


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


def resize_pos_embed(pos: torch.Tensor, old_grid, new_grid, num_prefix_tokens: int = 1):
    """Bicubic (align_corners=False, no antialias: as MAE/BEiT/mmseg) resize of the patch part
    of a (1, prefix+h·w, D) absolute position embedding; prefix tokens are kept. This is
    ``timm.layers.resample_abs_pos_embed(..., antialias=False)`` plus a shape check."""
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if old_grid == new_grid:
        return pos
    if pos.shape[1] - num_prefix_tokens != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {pos.shape[1] - num_prefix_tokens} patch tokens, not "
                         f"a {old_grid[0]}x{old_grid[1]} grid")
    out = resample_abs_pos_embed(pos.float(), new_size=list(new_grid), old_size=list(old_grid),
                                 num_prefix_tokens=num_prefix_tokens, interpolation="bicubic",
                                 antialias=False)
    return out.to(pos.dtype)
