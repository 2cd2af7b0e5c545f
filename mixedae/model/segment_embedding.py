"""Segment embeddings (Sec. 3.2, Appendix B).

Every patch of a mixed sample gets the sine-cosine encoding of the index of its source image
(shared by patches of the same image, different across images, Fig. 3b); the cls token gets a
zero segment embedding. The paper adds it "to the input of each Transformer layer following
[40]" (Swin, whose per-layer position information is a bias inside attention), which admits
several readings; ``mode`` (config ``seg_embed_mode``) picks one:

* ``residual``: added to the residual stream before *every* block
  (``forward_blocks(seg_embed=...)``); after block n the stream holds n+1 copies of the code, so
  a linear probe reads each patch's source off the features before any training.
* ``attention``: added to every block's normalised attention input used for the queries and
  keys only (``forward_blocks(qk_embed=...)``, as DETR adds positions); it never enters the
  residual stream or the values, so it can steer *which* patches are attended but is not copied
  into the features directly.
* ``input``: added once to the tokens entering the first block (BERT's segment embedding).
* ``none``: no segment embedding (Tab. 7c ablation).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mixedae.model.pos_embed import sincos_1d

MODES = ("residual", "attention", "input", "none")


class SegmentEmbedding(nn.Module):
    def __init__(self, dim: int, num_segments: int, mode: str = "residual"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"segment embedding mode={mode!r}; choose from {MODES}")
        self.mode = mode
        self.register_buffer("table", sincos_1d(dim, torch.arange(num_segments)), persistent=False)

    def forward(self, src: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
        """src (N, L) source index per patch → (N, prefix + L, dim) embedding."""
        seg = self.table[src]
        return torch.cat([seg.new_zeros(seg.shape[0], num_prefix_tokens, seg.shape[2]), seg], 1)

    def inject(self, x: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Apply the mode to tokens x (N, prefix + L, dim): returns the tokens for the first block
        and the keyword arguments for ``VisionTransformer.forward_blocks``."""
        if self.mode == "none":
            return x, {}
        seg = self(src, x.shape[1] - src.shape[1]).to(x.dtype)
        if self.mode == "input":
            return x + seg, {}
        return x, {"seg_embed" if self.mode == "residual" else "qk_embed": seg}
