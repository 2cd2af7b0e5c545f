"""Homologous contrastive loss (Eq. 7).

On encoder patch features after the final LayerNorm, through a linear projector to 128-d:
cosine similarities / τ between all patches of one mixed sample; for an anchor patch l every
homologous patch l⁺ ≠ l is a positive taken separately (supervised-contrastive style, Khosla et
al.), and the denominator runs over all l' ≠ l (self excluded):

    ℓ_l = − 1/|P(l)| Σ_{l⁺∈P(l)} log( exp(cos(z_l, z_l⁺)/τ) / Σ_{l'≠l} exp(cos(z_l, z_l')/τ) )

The sum of Eq. (7) is normalised as in SupCon: mean over the positives of an anchor, then mean
over anchors (and samples), so λ = 0.1 weighs a per-patch quantity like the pixel loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def homologous_contrastive_loss(feats: torch.Tensor, src: torch.Tensor,
                                tau: float = 0.25) -> torch.Tensor:
    """feats (N, L, d) projected patch features, src (N, L) source ids → scalar loss."""
    z = F.normalize(feats.float(), dim=-1)
    sim = z @ z.transpose(1, 2) / tau
    L = sim.shape[-1]
    eye = torch.eye(L, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - sim.logsumexp(dim=-1, keepdim=True)
    pos = (src[:, :, None] == src[:, None, :]) & ~eye
    n_pos = pos.sum(-1)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(-1) / n_pos.clamp(min=1)
    valid = n_pos > 0
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1)
