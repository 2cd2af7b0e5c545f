"""Homologous attention, Eq. (6):  A = softmax(TopK(q kᵀ / √D_h)), and its one dispatcher.

Each patch query keeps only its K largest attention logits (K = rL by default) and renormalises
over them, so it attends to the patches it recognises as homologous (same source image).

``homologous_attention`` computes Eq. (6) as ``HomologousContext.impl`` says; every impl gives
the same values and gradients (up to ties at the K-th logit):

* ``sdpa`` (default, any device): the TopK selection is a hard, non-differentiable choice, so
  it is made once without autograd on fp32 logits (bf16 logits tie at the K-th value in ~11% of
  rows), turned into an additive 0/−inf bias with exactly K open entries per query row (indices
  from ``torch.topk`` scattered into it, so ties never select more than K), and the attention
  then runs through ``F.scaled_dot_product_attention`` with that bias. The gradient of the
  unselected logits is zero, as in the explicit reference, and the L×L probability matrix is
  never stored for backward;
* ``explicit``: the same bias on a materialised softmax (fp32 under autocast);
* ``triton`` / ``flex`` / ``fused`` (CUDA, or the CPU under ``TRITON_INTERPRET=1``): the
  selection in a Triton kernel (``triton_select``: fixed tie rule, fp32 ranking) feeding SDPA
  (a bias) or FlexAttention (a keep mask), or selection, softmax and ·V fused in one kernel
  (``triton_fused``).

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

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


IMPLS = ("sdpa", "explicit", "triton", "flex", "fused")  # how Eq. (6) is computed (docstring)
TRITON_IMPLS = ("triton", "flex", "fused")  # Triton kernels: CUDA, or the CPU interpreted
CLS_MODES = ("always_visible", "topk")  # prefix (cls) handling (see module docstring)


@dataclass
class HomologousContext:
    """What a homologous-attention layer needs besides q, k, v (built once per forward from the
    model's arguments, so a run's config.json records every choice).

    k: number of keys each query keeps (TopK threshold K).
    src: (B, L) long, source-image index of every patch of each mixed sample (or None); only
        used to measure the TopK sampling accuracy.
    num_prefix_tokens: leading tokens (cls) that are not patches.
    impl: how Eq. (6) is computed, one of ``IMPLS`` (module docstring).
    cls_mode: "always_visible" (cls a global query and a key visible to all, K patch keys per
        patch query) or "topk" (literal Eq. 6: every row keeps its K best among all keys).
    accuracies: TopK accuracy of each homologous layer is appended here (0-dim tensors, no sync).
    """

    k: int
    src: torch.Tensor | None = None
    num_prefix_tokens: int = 1
    impl: str = "sdpa"
    cls_mode: str = "always_visible"
    accuracies: list = field(default_factory=list)

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"homologous attention impl={self.impl!r}; choose from {IMPLS}")
        if self.cls_mode not in CLS_MODES:
            raise ValueError(f"cls_mode={self.cls_mode!r}; choose from {CLS_MODES}")

    def attn_bias(self, q: torch.Tensor, k: torch.Tensor):
        """The (B, H, N, N) 0/−inf bias and selected indices of Eq. 6 for q, k under this
        context's choices (``topk_attn_bias``; the Triton impls select the same K keys up to
        ties)."""
        return topk_attn_bias(q, k, self.k, self.num_prefix_tokens, self.cls_mode)


@torch.no_grad()
def topk_attn_bias(q: torch.Tensor, k: torch.Tensor, topk: int, num_prefix_tokens: int = 1,
                   cls_mode: str = "always_visible"):
    """Additive (B, H, N, N) attention bias in q's dtype: 0 where a query may attend, −inf
    elsewhere. ``always_visible``: a patch query's ``topk`` best patch keys plus the prefix keys;
    prefix queries everywhere. ``topk``: every query's ``topk`` best keys among all keys. Keys
    are ranked on fp32 logits q kᵀ (autocast off; 1/√d does not change the ranking).

    Also returns the (B, H, L, topk) indices of the keys selected by the patch queries, in patch
    coordinates (a selected prefix key is negative). The bias is allocated with its last
    dimension padded to a multiple of 16 and sliced back, so CUDA's memory-efficient SDPA kernel
    accepts it without a copy.
    """
    p = num_prefix_tokens
    B, H, N, _ = q.shape
    bias = q.new_full((B, H, N, -(-N // 16) * 16), float("-inf"))[..., :N]
    if cls_mode == "topk":
        idx = _fp32_logits(q, k).topk(topk, dim=-1, sorted=False).indices
        bias.scatter_(-1, idx, 0.0)
        return bias, idx[:, :, p:] - p
    idx = _fp32_logits(q[:, :, p:], k[:, :, p:]).topk(topk, dim=-1, sorted=False).indices
    bias[:, :, p:, p:].scatter_(-1, idx, 0.0)
    bias[:, :, :p, :] = 0.0  # prefix queries: global
    bias[:, :, :, :p] = 0.0  # prefix keys: always visible
    return bias, idx


def _fp32_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q kᵀ for ranking keys, in fp32 whatever the autocast dtype (fp64 stays fp64)."""
    if q.dtype == torch.float64:
        return q @ k.transpose(-2, -1)
    with torch.autocast(q.device.type, enabled=False):
        return q.float() @ k.float().transpose(-2, -1)


@torch.no_grad()
def topk_accuracy(idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Fraction of selected keys that are patches of the query's own source. idx (B,H,L,K) in
    patch coordinates (negative: a prefix key, never homologous), src (B,L)."""
    B, H, L, K = idx.shape
    key_src = src.gather(1, idx.clamp(min=0).reshape(B, -1)).view(B, H, L, K)
    return ((key_src == src[:, None, :, None]) & (idx >= 0)).float().mean()


def impl_unavailable(impl: str, device: torch.device) -> str | None:
    """None if ``impl`` can run on ``device``, else one line saying why (checked before work)."""
    if impl not in TRITON_IMPLS:
        return None
    from mixedae.model.attention.triton_select import unavailable_reason  # Triton is optional
    return unavailable_reason(device, impl)


def homologous_attention(q, k, v, ctx: HomologousContext) -> torch.Tensor:
    """Eq. (6) on (B, H, N, D) q, k, v by ``ctx.impl``; appends the TopK accuracy to
    ``ctx.accuracies`` if ``ctx.src`` is given."""
    acc = None
    if ctx.impl == "fused":  # the Triton modules are imported on use: Triton is optional
        from mixedae.model.attention.triton_fused import homologous_attention_fused
        out, acc = homologous_attention_fused(q, k, v, ctx.k, ctx.num_prefix_tokens,
                                              ctx.cls_mode, ctx.src)
    elif ctx.impl in ("triton", "flex"):
        from mixedae.model.attention.triton_select import homologous_select
        out_kind = "keep" if ctx.impl == "flex" else "bias"
        mask, acc = homologous_select(q, k, ctx.k, ctx.num_prefix_tokens, ctx.cls_mode,
                                      out_kind, ctx.src, ctx.impl)
        if ctx.impl == "flex":
            def score_mod(score, b, h, qi, ki):
                return torch.where(mask[b, h, qi, ki], score, float("-inf"))
            out = _flex_attention(q.device.type)(q, k, v, score_mod=score_mod)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        bias, idx = ctx.attn_bias(q, k)
        if ctx.src is not None:
            acc = topk_accuracy(idx, ctx.src)
        out = _explicit(q, k, v, bias) if ctx.impl == "explicit" else \
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    if acc is not None:
        ctx.accuracies.append(acc)
    return out


@functools.lru_cache(maxsize=None)
def _flex_attention(device_type: str):
    """FlexAttention, compiled on CUDA (its fused kernel), the eager reference elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" \
        else flex_attention


def _explicit(q, k, v, bias) -> torch.Tensor:
    """Materialised masked softmax (in fp32 under autocast)."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return (logits + bias.to(logits.dtype)).softmax(-1).to(v.dtype) @ v


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
