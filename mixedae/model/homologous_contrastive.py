"""Homologous contrastive loss (Eq. 7).

On encoder patch features after the final LayerNorm, through a linear projector to 128-d:
cosine similarities / τ between all patches of one mixed sample; for an anchor patch l every
homologous patch l⁺ ≠ l is a positive taken separately (supervised-contrastive style, Khosla et
al.), and the denominator runs over all l' ≠ l (self excluded):

    ℓ_l = − 1/|P(l)| Σ_{l⁺∈P(l)} log( exp(cos(z_l, z_l⁺)/τ) / Σ_{l'≠l} exp(cos(z_l, z_l')/τ) )

The sum of Eq. (7) is normalised as in SupCon: mean over the positives of an anchor, then mean
over anchors (and samples), so λ = 0.1 weighs a per-patch quantity like the pixel loss.

Its infimum is ln |P(l)| per anchor (all of an anchor's probability mass spread evenly over its
positives), ``homologous_contrastive_floor``: a loss at its floor means the features separate
the sources completely, whether or not homologous attention recognised them.
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


def homologous_contrastive_floor(src: torch.Tensor) -> float:
    """Infimum of ``homologous_contrastive_loss`` for source ids src (N, L): the mean over anchors
    with positives of ln |P(l)| (Jensen: −mean_p log p_p ≥ −log mean_p p_p ≥ ln |P|)."""
    same = src[:, :, None] == src[:, None, :]
    n_pos = same.sum(-1) - 1
    return n_pos[n_pos > 0].double().log().mean().item()
