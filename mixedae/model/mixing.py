"""Mixing and unmixing (Sec. 3.1, Eq. 1–3).

A batch of B images is split into B·r groups of g = 1/r consecutive images (image i of group j
is batch index j·g + i). Each mixed sample of a group takes every patch position from one of the
group's images, chosen by a mixing mask M (Eq. 1). M is drawn at mask-patch granularity (32×32
px by default, Appendix B): the blocks of a random permutation are dealt to the g sources in turn,
so every source gets ⌊n/g⌋ or ⌈n/g⌉ of the n blocks — exactly rL patches each (Eq. 2) whenever g
divides n (e.g. 16 px blocks at 224), at most one block apart otherwise (32 px blocks: 13/12/12/12).
Which source(s) receive the n mod g extra blocks is drawn uniformly per mask (a random relabelling
of the sources), so no batch position systematically has fewer hidden patches.

* compose mode: one mixed sample per group (encoder batch B·r);
* full mode: g independent mixed samples per group (encoder batch B).

Unmixing (Eq. 3) puts every encoded token back into the sequence of its own source image and a
[MASK] token everywhere else, giving g decoder sequences per mixed sample.
"""
from __future__ import annotations

import torch


def mixing_masks(num_groups: int, num_mix: int, group_size: int, grid_hw: tuple[int, int],
                 block: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random symmetric mixing masks M: (num_groups, num_mix, L) long in [0, group_size).

    ``block`` is the mask-patch size in patches (mask_patch_size // patch_size); ``generator``
    (default: the global RNG) draws the permutations."""
    gh, gw = grid_hw
    bh, bw = gh // block, gw // block
    rand = lambda *shape: torch.rand(*shape, device=device, generator=generator)
    perm = rand(num_groups, num_mix, bh * bw).argsort(-1)
    relabel = rand(num_groups, num_mix, group_size).argsort(-1)
    src = relabel.gather(-1, perm % group_size).view(num_groups, num_mix, bh, 1, bw, 1)
    return src.expand(-1, -1, -1, block, -1, block).reshape(num_groups, num_mix, gh * gw)


def mix_images(imgs: torch.Tensor, src: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Eq. (1) in pixel space: (B, C, H, W) images + masks (G, M, L) → (G·M, C, H, W)."""
    B, C, H, W = imgs.shape
    G, M, L = src.shape
    g = B // G
    pix = src.view(G, M, H // patch_size, 1, W // patch_size, 1)
    pix = pix.expand(-1, -1, -1, patch_size, -1, patch_size).reshape(G, M, 1, 1, H, W)
    groups = imgs.view(G, 1, g, C, H, W).expand(G, M, g, C, H, W)
    return groups.gather(2, pix.expand(G, M, 1, C, H, W)).view(G * M, C, H, W)


def unmix_tokens(tokens: torch.Tensor, src: torch.Tensor, mask_token: torch.Tensor,
                 group_size: int) -> torch.Tensor:
    """Eq. (3): (G·M, L, D) mixed-sample tokens → (G·M·g, L, D) per-source sequences with
    [MASK] where the source did not contribute. Sequence (j, m, i) belongs to image j·g + i."""
    G, M, L = src.shape
    D = tokens.shape[-1]
    own = source_onehot(src, group_size)  # (G, M, g, L)
    z = torch.where(own[..., None], tokens.view(G, M, 1, L, D), mask_token.view(1, 1, 1, 1, D))
    return z.reshape(G * M * group_size, L, D)


def source_onehot(src: torch.Tensor, group_size: int) -> torch.Tensor:
    """(G, M, L) → (G, M, g, L) bool: does patch l of mixed sample (j, m) come from source i."""
    ids = torch.arange(group_size, device=src.device).view(1, 1, group_size, 1)
    return src.unsqueeze(2) == ids
