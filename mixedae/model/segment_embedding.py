"""Segment embeddings (Sec. 3.2, Appendix B).

Every patch of a mixed sample gets the sine-cosine encoding of the index of its source image
(shared by patches of the same image, different across images, Fig. 3b). The encoder adds it to
the input of *every* transformer layer (``VisionTransformer.forward_blocks(seg_embed=...)``), so
each patch knows which patches share its source. The cls token gets a zero segment embedding.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mixedae.model.pos_embed import sincos_1d


class SegmentEmbedding(nn.Module):
    def __init__(self, dim: int, num_segments: int):
        super().__init__()
        self.register_buffer("table", sincos_1d(dim, torch.arange(num_segments)), persistent=False)

    def forward(self, src: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
        """src (N, L) source index per patch → (N, prefix + L, dim) embedding."""
        seg = self.table[src]
        return torch.cat([seg.new_zeros(seg.shape[0], num_prefix_tokens, seg.shape[2]), seg], 1)
