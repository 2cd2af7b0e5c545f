"""Homologous attention, Eq. (6), fused in Triton: TopK selection, masked softmax and ·V.

All keys of a row fit in one tile (L ≤ 256 plus the prefix), so no online softmax is needed:

* forward, one program per (sample·head, query block): logits → keep mask (the selection of
  ``triton_select``: same bisection, tie rule and cls modes) → softmax over the
  kept logits (scaled by 1/√D) → P·V. Saves the row log-sum-exp and the int8 keep mask.
* backward (FlashAttention-2 style, probabilities recomputed from the saved log-sum-exp):
  one program per query block computes dQ = dS·K/√D; one program per key block loops over
  the query blocks for dV = Pᵀ·dO and dK = dSᵀ·Q/√D, where
  dS = P ⊙ (dP − rowsum(dO ⊙ O)).
  The unselected logits get zero gradient, exactly as in the reference.

Both passes are ``torch.library`` custom ops, so ``torch.compile`` treats them as opaque.
"""
from __future__ import annotations

import torch

from mixedae.model.attention.triton_select import (_ieee, block_sizes, num_warps,
                                                   padded_width, prepare, triton)

if triton is not None:
    import triton.language as tl

    from mixedae.model.attention.triton_select import _hits, _logits_keep

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _fwd_kernel(Q, Kp, V, O, LSE, KEEP, HITS, SRC, sq_b, sq_h, sq_n, sk_b, sk_h, sk_n,
                    sv_b, sv_h, sv_n, so_b, so_h, so_n, H, N, D, P, TOPK, scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    CLS_TOPK: tl.constexpr, IEEE: tl.constexpr, HAS_SRC: tl.constexpr,
                    WP: tl.constexpr):
        bh, mb = tl.program_id(0), tl.program_id(1)  # (sample·head, block of query rows)
        b, h = bh // H, bh % H
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        cols, dd = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)  # all keys, all head dims
        rm, cm, dm = rows < N, cols < N, (dd < D)[None, :]
        q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_n + dd[None, :],
                    mask=rm[:, None] & dm, other=0.0)
        k = tl.load(Kp + b * sk_b + h * sk_h + cols[:, None] * sk_n + dd[None, :],
                    mask=cm[:, None] & dm, other=0.0)
        v = tl.load(V + b * sv_b + h * sv_h + cols[:, None] * sv_n + dd[None, :],
                    mask=cm[:, None] & dm, other=0.0)
        s, keep = _logits_keep(q, k, rows, cols, N, P, TOPK, CLS_TOPK, IEEE)
        z = tl.where(keep, s * scale, float("-inf"))
        m = tl.max(z, axis=1)
        p = tl.exp(z - m[:, None])
        l = tl.sum(p, axis=1)
        o = _dot(p.to(v.dtype), v, IEEE) / l[:, None]
        tl.store(O + b * so_b + h * so_h + rows[:, None] * so_n + dd[None, :],
                 o.to(O.dtype.element_ty), mask=rm[:, None] & dm)
        tl.store(LSE + bh * N + rows, m + tl.log(l), mask=rm)
        tl.store(KEEP + bh * N * WP + rows[:, None] * WP + cols[None, :], keep.to(tl.int8),
                 mask=rm[:, None] & (cols < WP)[None, :])
        if HAS_SRC:
            tl.store(HITS + bh * tl.num_programs(1) + mb, _hits(keep, rows, cols, SRC, b, N, P))

    @triton.jit
    def _recompute(Q, DO, LSE, DELTA, KEEP, k, v, qo, rows, cols, rm, cm, dm, bh, N, WP, scale,
                   IEEE: tl.constexpr):
        """The backward of one (query rows × key columns) tile, FlashAttention-2 style: loads
        q and dO of the rows and returns them with the probabilities P (recomputed from the
        saved log-sum-exp, zero off the kept keys) and dS = P ⊙ (dO·Vᵀ − Δ)."""
        q = tl.load(Q + qo, mask=rm[:, None] & dm, other=0.0)
        do = tl.load(DO + qo, mask=rm[:, None] & dm, other=0.0)
        lse = tl.load(LSE + bh * N + rows, mask=rm, other=0.0)
        delta = tl.load(DELTA + bh * N + rows, mask=rm, other=0.0)
        keep = tl.load(KEEP + bh * N * WP + rows[:, None] * WP + cols[None, :],
                       mask=rm[:, None] & cm[None, :], other=0)
        p = tl.where(keep != 0, tl.exp(_dot(q, tl.trans(k), IEEE) * scale - lse[:, None]), 0.0)
        return q, do, p, p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])

    @triton.jit
    def _bwd_dq_kernel(Q, Kp, V, DO, LSE, DELTA, KEEP, DQ, s_b, s_h, s_n, H, N, D, scale,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       IEEE: tl.constexpr, WP: tl.constexpr):
        """q, k, v, dO and dQ share the strides ``s_*`` (made contiguous by the caller)."""
        bh, mb = tl.program_id(0), tl.program_id(1)  # (sample·head, block of query rows)
        b, h = bh // H, bh % H
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        cols, dd = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
        rm, cm, dm = rows < N, cols < N, (dd < D)[None, :]
        base = b * s_b + h * s_h
        qo = base + rows[:, None] * s_n + dd[None, :]
        ko = base + cols[:, None] * s_n + dd[None, :]
        k = tl.load(Kp + ko, mask=cm[:, None] & dm, other=0.0)
        v = tl.load(V + ko, mask=cm[:, None] & dm, other=0.0)
        _, _, _, ds = _recompute(Q, DO, LSE, DELTA, KEEP, k, v, qo, rows, cols, rm, cm, dm, bh,
                                 N, WP, scale, IEEE)
        dq = _dot(ds.to(k.dtype), k, IEEE) * scale
        tl.store(DQ + qo, dq.to(DQ.dtype.element_ty), mask=rm[:, None] & dm)

    @triton.jit
    def _bwd_dkdv_kernel(Q, Kp, V, DO, LSE, DELTA, KEEP, DK, DV, s_b, s_h, s_n, H, N, D, scale,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         IEEE: tl.constexpr, WP: tl.constexpr):
        bh, nb = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        dd = tl.arange(0, BLOCK_D)
        cm, dm = cols < N, (dd < D)[None, :]
        base = b * s_b + h * s_h
        ko = base + cols[:, None] * s_n + dd[None, :]
        k = tl.load(Kp + ko, mask=cm[:, None] & dm, other=0.0)
        v = tl.load(V + ko, mask=cm[:, None] & dm, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for start in range(0, N, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            rm = rows < N
            qo = base + rows[:, None] * s_n + dd[None, :]
            q, do, p, ds = _recompute(Q, DO, LSE, DELTA, KEEP, k, v, qo, rows, cols, rm, cm, dm,
                                      bh, N, WP, scale, IEEE)
            dv += _dot(tl.trans(p.to(do.dtype)), do, IEEE)
            dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
        tl.store(DK + ko, (dk * scale).to(DK.dtype.element_ty), mask=cm[:, None] & dm)
        tl.store(DV + ko, dv.to(DV.dtype.element_ty), mask=cm[:, None] & dm)


@torch.library.custom_op("mixedae::homologous_fused_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, prefix: int,
            cls_topk: bool, src: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, N, D = q.shape
    (BM, BN, BD), WP, ieee = block_sizes(N, D), padded_width(N), _ieee(q)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = q.new_empty((B, N, H, D))  # heads last: merging them after attention is free
    lse = q.new_empty((B, H, N), dtype=torch.float32)
    keep = q.new_empty((B, H, N, WP), dtype=torch.int8)
    grid = (B * H, triton.cdiv(N, BM))
    hits = q.new_zeros((grid[0] * grid[1],), dtype=torch.int32)
    _fwd_kernel[grid](q, k, v, o, lse, keep, hits, src if src is not None else hits,
                      *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
                      o.stride(0), o.stride(2), o.stride(1),
                      H, N, D, prefix, topk, D ** -0.5, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
                      CLS_TOPK=cls_topk, IEEE=ieee,
                      HAS_SRC=src is not None, WP=WP, num_warps=num_warps(BN))
    return o, lse, keep, hits


@_fwd_op.register_fake
def _(q, k, v, topk, prefix, cls_topk, src):
    B, H, N, D = q.shape
    BM = block_sizes(N, D)[0]
    return (q.new_empty((B, N, H, D)), q.new_empty((B, H, N), dtype=torch.float32),
            q.new_empty((B, H, N, padded_width(N)), dtype=torch.int8),
            q.new_empty((B * H * -(-N // BM),), dtype=torch.int32))


@torch.library.custom_op("mixedae::homologous_fused_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            o: torch.Tensor, lse: torch.Tensor, keep: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, N, D = q.shape
    (BM, BN, BD), WP, ieee = block_sizes(N, D), padded_width(N), _ieee(q)
    do, o = do.transpose(1, 2), o.transpose(1, 2)  # (B, N, H, D) → (B, H, N, D)
    delta = (do.float() * o.float()).sum(-1).contiguous()
    do, q, k, v = (t.contiguous() for t in (do, q, k, v))
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    common = (*q.stride()[:3], H, N, D, D ** -0.5)
    _bwd_dq_kernel[(B * H, triton.cdiv(N, BM))](
        q, k, v, do, lse, delta, keep, dq, *common, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
        IEEE=ieee, WP=WP, num_warps=num_warps(BN))
    BN2 = min(32, BN)
    _bwd_dkdv_kernel[(B * H, triton.cdiv(N, BN2))](
        q, k, v, do, lse, delta, keep, dk, dv, *common, BLOCK_M=BM, BLOCK_N=BN2, BLOCK_D=BD,
        IEEE=ieee, WP=WP, num_warps=4)
    return dq, dk, dv


@_bwd_op.register_fake
def _(do, q, k, v, o, lse, keep):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    o, lse, keep, _ = output
    ctx.save_for_backward(q, k, v, o, lse, keep)


def _backward(ctx, do, *_):
    q, k, v, o, lse, keep = ctx.saved_tensors
    return (*_bwd_op(do, q, k, v, o, lse, keep), None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def homologous_attention_fused(q, k, v, topk: int, num_prefix_tokens: int = 1,
                               cls_mode: str = "always_visible", src: torch.Tensor | None = None):
    """Eq. (6) forward and backward in Triton; returns (out (B, H, N, D), TopK accuracy or
    None). Same selection, tie rule and accuracy as ``homologous_select``."""
    B, H, N, src = prepare(q, "fused", topk, num_prefix_tokens, cls_mode, src)
    o, _, _, hits = _fwd_op(q, k, v, topk, num_prefix_tokens, cls_mode == "topk", src)
    o = o.transpose(1, 2)  # (B, H, N, D) view; a custom op may not return a view itself
    acc = None
    if src is not None:
        acc = hits.sum().float() / (B * H * (N - num_prefix_tokens) * topk)
    return o, acc
