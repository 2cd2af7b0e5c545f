"""Homologous attention, Eq. (6):  A = softmax(TopK(q kᵀ / √D_h)).

Each patch query keeps only its K largest attention logits (K = rL by default) and renormalises
over them, so it attends to the patches it recognises as homologous (same source image).

How it is computed (fast path). The TopK selection is a hard, non-differentiable choice, so it
is made once without autograd on fp32 logits (``HomologousContext.select_fp32``: bf16 logits tie
at the K-th value in ~11% of rows), turned into an additive 0/−inf bias with exactly K
open entries per query row (indices from ``torch.topk`` scattered into it, so ties never select
more than K), and the attention itself then runs through ``F.scaled_dot_product_attention`` with
that bias. Forward values and gradients equal the explicit ``softmax(TopK(·))`` reference below
(the gradient of the unselected logits is zero in both), while the L×L probability matrix is
never stored for backward.

Prefix (cls) token, our documented choice: as a *query* it attends globally (it belongs to no
single source); as a *key* it is always visible to every patch in addition to the K selected
patch keys, which are chosen among patch keys only. ``topk_accuracy`` is measured on patch
queries: the fraction of the K selected keys whose source equals the query's (Fig. 6).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


IMPLS = ("sdpa", "explicit", "triton", "flex", "fused")  # how Eq. (6) is computed (docstring)
TRITON_IMPLS = ("triton", "flex", "fused")  # homologous_attention_triton: CUDA or interpreter
SELECTS = ("topk", "sort")       # how the K best keys of a row are found


@dataclass
class HomologousContext:
    """What a homologous-attention layer needs besides q, k, v (built once per forward from the
    pretraining config, so a run's config.json records every choice).

    k: number of patch keys each patch query keeps (TopK threshold K).
    src: (B, L) long, source-image index of every patch of each mixed sample (or None); only
        used to measure the TopK sampling accuracy.
    num_prefix_tokens: leading tokens (cls) that are not patches.
    impl: "sdpa" (TopK bias + fused SDPA kernel) or "explicit" (materialised masked softmax);
        both give the same values and gradients. "triton" (fused Triton selection → bias →
        SDPA), "flex" (Triton selection → FlexAttention) and "fused" (selection, softmax and ·V
        in one Triton kernel) need CUDA tensors (``homologous_attention_triton``); they
        rank on fp32 logits with a fixed tie rule and ignore ``select``.
    select: "topk" (``torch.topk``) or "sort" (a full per-row sort) to find the K best keys.
    select_fp32: rank keys on fp32 logits even under bf16/fp16 autocast (in bf16 ~11 % of the
        query rows of a ViT-B layer tie at the K-th logit, making the selection arbitrary).
    accuracies: TopK accuracy of each homologous layer is appended here (0-dim tensors, no sync).
    """

    k: int
    src: torch.Tensor | None = None
    num_prefix_tokens: int = 1
    impl: str = "sdpa"
    select: str = "topk"
    select_fp32: bool = True
    accuracies: list = field(default_factory=list)

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"homologous attention impl={self.impl!r}; choose from {IMPLS}")
        if self.select not in SELECTS:
            raise ValueError(f"TopK select={self.select!r}; choose from {SELECTS}")


@torch.no_grad()
def topk_attn_bias(q: torch.Tensor, k: torch.Tensor, topk: int, num_prefix_tokens: int = 1,
                   select: str = "topk", select_fp32: bool = True):
    """Additive (B, H, N, N) attention bias in q's dtype: 0 where a query may attend (its
    ``topk`` best patch keys, plus prefix keys; prefix queries everywhere), −inf elsewhere.

    Also returns the (B, H, L, topk) indices of the selected patch keys (patch coordinates).
    The bias is allocated with its last dimension padded to a multiple of 16 and sliced back,
    so CUDA's memory-efficient SDPA kernel accepts it without a copy.
    """
    p = num_prefix_tokens
    logits = selection_logits(q[:, :, p:], k[:, :, p:], select_fp32)  # 1/√d: same ranking
    idx = select_topk(logits, topk, select)
    B, H, N, _ = q.shape
    bias = q.new_full((B, H, N, -(-N // 16) * 16), float("-inf"))[..., :N]
    bias[:, :, p:, p:].scatter_(-1, idx, 0.0)
    bias[:, :, :p, :] = 0.0  # prefix queries: global
    bias[:, :, :, :p] = 0.0  # prefix keys: always visible
    return bias, idx


@torch.no_grad()
def topk_accuracy(idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Fraction of selected keys from the query's own source. idx (B,H,L,K), src (B,L)."""
    B, H, L, K = idx.shape
    key_src = src.gather(1, idx.reshape(B, -1)).view(B, H, L, K)
    return (key_src == src[:, None, :, None]).float().mean()


def selection_logits(q: torch.Tensor, k: torch.Tensor, fp32: bool = True) -> torch.Tensor:
    """q kᵀ for ranking keys: fp32 (autocast off) if ``fp32``, else the compute dtype."""
    if fp32 and q.dtype != torch.float64:
        with torch.autocast(q.device.type, enabled=False):
            return q.float() @ k.float().transpose(-2, -1)
    return q @ k.transpose(-2, -1)


def select_topk(logits: torch.Tensor, k: int, select: str = "topk") -> torch.Tensor:
    """Indices of the k largest entries of every row (last dim), in no particular order."""
    if select == "sort":
        return logits.sort(dim=-1, descending=True).indices[..., :k]
    return logits.topk(k, dim=-1, sorted=False).indices


def impl_unavailable(impl: str, device: torch.device) -> str | None:
    """None if ``impl`` can run on ``device``, else one line saying why (checked before work)."""
    if impl not in TRITON_IMPLS:
        return None
    from mixedae.model.homologous_attention_triton import unavailable_reason
    return unavailable_reason(device, impl)


def homologous_attention(q, k, v, ctx: HomologousContext, dropout_p: float = 0.0) -> torch.Tensor:
    """Eq. (6); appends the TopK accuracy to ``ctx`` if it has ``src``."""
    if ctx.impl in TRITON_IMPLS:  # imported on use: Triton is optional
        from mixedae.model.homologous_attention_triton import homologous_attention_triton
        return homologous_attention_triton(q, k, v, ctx, dropout_p)
    if ctx.impl == "explicit":
        return _homologous_attention_explicit(q, k, v, ctx, dropout_p)
    bias, idx = topk_attn_bias(q, k, ctx.k, ctx.num_prefix_tokens, ctx.select, ctx.select_fp32)
    if ctx.src is not None:
        ctx.accuracies.append(topk_accuracy(idx, ctx.src))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def _homologous_attention_explicit(q, k, v, ctx: HomologousContext, dropout_p: float = 0.0):
    p = ctx.num_prefix_tokens
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # softmax in fp32 under autocast
    with torch.no_grad():
        idx = select_topk(selection_logits(q[:, :, p:], k[:, :, p:], ctx.select_fp32), ctx.k,
                          ctx.select)
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[:, :, p:, p:].scatter_(-1, idx, True)
        keep[:, :, :p] = True
        keep[:, :, :, :p] = True
        if ctx.src is not None:
            ctx.accuracies.append(topk_accuracy(idx, ctx.src))
    probs = logits.masked_fill(~keep, float("-inf")).softmax(-1).to(v.dtype)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


def homologous_attention_reference(q, k, v, topk: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Slow, literal Eq. (6) for tests: logits → keep TopK per patch row → softmax → ·v."""
    p = num_prefix_tokens
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    patch = logits[:, :, p:, p:]
    kth = patch.topk(topk, dim=-1).values[..., -1:]
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[:, :, p:, p:] = patch >= kth
    probs = logits.masked_fill(~keep, float("-inf")).softmax(-1)
    return probs @ v
