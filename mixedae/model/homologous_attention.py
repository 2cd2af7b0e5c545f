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

Prefix (cls) token, ``HomologousContext.cls_mode`` (config ``homo_cls``):
* ``always_visible``: as a *query* the cls token attends globally (it belongs to no single
  source); as a *key* it is always visible to every patch in addition to the K selected patch
  keys, which are chosen among patch keys only. Every TopK layer thus keeps one path that carries
  information between sources around the selection.
* ``topk``: literal Eq. (6): every query row, cls included, keeps its K largest logits among
  *all* keys (cls key included); nothing is always visible.
``topk_accuracy`` is measured on patch queries: the fraction of the K selected keys that are
patches of the query's source (Fig. 6); a selected cls key counts as not homologous.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


IMPLS = ("sdpa", "explicit", "triton", "flex", "fused")  # how Eq. (6) is computed (docstring)
TRITON_IMPLS = ("triton", "flex", "fused")  # homologous_attention_triton: CUDA or interpreter
SELECTS = ("topk", "sort")       # how the K best keys of a row are found
CLS_MODES = ("always_visible", "topk")  # prefix (cls) handling (see module docstring)


@dataclass
class HomologousContext:
    """What a homologous-attention layer needs besides q, k, v (built once per forward from the
    pretraining config, so a run's config.json records every choice).

    k: number of keys each query keeps (TopK threshold K).
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
    cls_mode: "always_visible" (cls a global query and a key visible to all, K patch keys per
        patch query) or "topk" (literal Eq. 6: every row keeps its K best among all keys).
    accuracies: TopK accuracy of each homologous layer is appended here (0-dim tensors, no sync).
    """

    k: int
    src: torch.Tensor | None = None
    num_prefix_tokens: int = 1
    impl: str = "sdpa"
    select: str = "topk"
    select_fp32: bool = True
    cls_mode: str = "always_visible"
    accuracies: list = field(default_factory=list)

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"homologous attention impl={self.impl!r}; choose from {IMPLS}")
        if self.select not in SELECTS:
            raise ValueError(f"TopK select={self.select!r}; choose from {SELECTS}")
        if self.cls_mode not in CLS_MODES:
            raise ValueError(f"cls_mode={self.cls_mode!r}; choose from {CLS_MODES}")

    def attn_bias(self, q: torch.Tensor, k: torch.Tensor):
        """The (B, H, N, N) 0/−inf bias and selected indices of Eq. 6 for q, k under this
        context's choices (``topk_attn_bias``; the Triton impls select the same K keys up to
        ties)."""
        return topk_attn_bias(q, k, self.k, self.num_prefix_tokens, self.select,
                              self.select_fp32, self.cls_mode)


@torch.no_grad()
def topk_attn_bias(q: torch.Tensor, k: torch.Tensor, topk: int, num_prefix_tokens: int = 1,
                   select: str = "topk", select_fp32: bool = True,
                   cls_mode: str = "always_visible"):
    """Additive (B, H, N, N) attention bias in q's dtype: 0 where a query may attend, −inf
    elsewhere. ``always_visible``: a patch query's ``topk`` best patch keys plus the prefix keys;
    prefix queries everywhere. ``topk``: every query's ``topk`` best keys among all keys.

    Also returns the (B, H, L, topk) indices of the keys selected by the patch queries, in patch
    coordinates (a selected prefix key is negative). The bias is allocated with its last
    dimension padded to a multiple of 16 and sliced back, so CUDA's memory-efficient SDPA kernel
    accepts it without a copy.
    """
    p = num_prefix_tokens
    B, H, N, _ = q.shape
    bias = q.new_full((B, H, N, -(-N // 16) * 16), float("-inf"))[..., :N]
    if cls_mode == "topk":  # 1/√d: same ranking
        idx = select_topk(selection_logits(q, k, select_fp32), topk, select)
        bias.scatter_(-1, idx, 0.0)
        return bias, idx[:, :, p:] - p
    idx = select_topk(selection_logits(q[:, :, p:], k[:, :, p:], select_fp32), topk, select)
    bias[:, :, p:, p:].scatter_(-1, idx, 0.0)
    bias[:, :, :p, :] = 0.0  # prefix queries: global
    bias[:, :, :, :p] = 0.0  # prefix keys: always visible
    return bias, idx


@torch.no_grad()
def topk_accuracy(idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Fraction of selected keys that are patches of the query's own source. idx (B,H,L,K) in
    patch coordinates (negative: a prefix key, never homologous), src (B,L)."""
    B, H, L, K = idx.shape
    key_src = src.gather(1, idx.clamp(min=0).reshape(B, -1)).view(B, H, L, K)
    return ((key_src == src[:, None, :, None]) & (idx >= 0)).float().mean()


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
    bias, idx = ctx.attn_bias(q, k)
    if ctx.src is not None:
        ctx.accuracies.append(topk_accuracy(idx, ctx.src))
    if ctx.impl == "explicit":
        return _homologous_attention_explicit(q, k, v, bias, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def _homologous_attention_explicit(q, k, v, bias, dropout_p: float = 0.0) -> torch.Tensor:
    """Materialised masked softmax (in fp32 under autocast)."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    probs = (logits + bias.to(logits.dtype)).softmax(-1).to(v.dtype)
    return (F.dropout(probs, dropout_p) if dropout_p else probs) @ v


def homologous_attention_reference(q, k, v, topk: int, num_prefix_tokens: int = 1,
                                   cls_mode: str = "always_visible") -> torch.Tensor:
    """Slow, literal Eq. (6) for tests: logits → keep TopK per row → softmax → ·v. With
    ``always_visible`` only patch rows are sampled, among patch keys; prefix keys and rows stay."""
    p = num_prefix_tokens
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if cls_mode == "topk":
        keep = logits >= logits.topk(topk, dim=-1).values[..., -1:]
    else:
        patch = logits[:, :, p:, p:]
        keep = torch.ones_like(logits, dtype=torch.bool)
        keep[:, :, p:, p:] = patch >= patch.topk(topk, dim=-1).values[..., -1:]
    probs = logits.masked_fill(~keep, float("-inf")).softmax(-1)
    return probs @ v
