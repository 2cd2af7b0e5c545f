"""Fused TopK selection for homologous attention, Eq. (6), as a Triton kernel.

One program per (sample·head, block of ``BLOCK_M`` query rows) loads the query block and *all*
keys (L ≤ 256 patches plus the prefix fit in one tile), computes the fp32 logits q·kᵀ in
registers and keeps exactly K keys per row:

* **K-th largest by bisection on the bit pattern.** Each fp32 logit is mapped to an int32
  whose signed order is the float order (negative floats get their magnitude bits flipped;
  −0.0 is read as +0.0). The K-th largest key is then found bit by bit from the top in 32
  count-and-compare passes over the row (a radix select without memory traffic).
* **Tie rule (deterministic).** Every key strictly above the K-th largest value is kept; of the
  keys *equal* to it, the ones with the lowest key index are kept until the row holds exactly K.
* **Ranking precision.** Logits are accumulated in fp32 (``input_precision="ieee"`` for fp32
  inputs, so no TF32); bf16/fp16 inputs are multiplied exactly and accumulated in fp32, as the
  PyTorch selection of ``homologous.topk_attn_bias`` ranks them.
* **Prefix (cls) handling**, ``HomologousContext.cls_mode``: ``"always_visible"`` (default,
  the project's documented choice): K is chosen among patch keys, prefix keys are always
  visible, prefix queries attend globally. ``"topk"`` (literal Eq. 6): every row, prefix
  queries included, keeps its K largest among all keys, prefix keys included.

The kernel emits what the attention consumes (the dispatcher ``homologous.homologous_attention``
feeds it on): ``impl="triton"``: an additive 0/−inf bias (last dim padded to a multiple of 16
for the memory-efficient SDPA kernel) for ``F.scaled_dot_product_attention``; ``impl="flex"``:
a boolean keep mask read by a ``score_mod`` of FlexAttention. ``triton_fused`` reuses this
selection for its fused kernel.
With ``ctx.src`` the kernel also counts, per block, the selected patch keys of patch queries
that share the query's source; ``topk_accuracy`` = hits / (L·K) (a prefix key is a miss).

Devices: CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's interpreter,
for tests). Anything else raises ``ValueError`` with one line naming the impl and device
(``unavailable_reason``, which the commands check before any work): there is no silent
fallback, so the recorded ``attn_impl`` is the one that ran (use ``attn_impl="sdpa"`` on the
CPU).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: only the triton/flex/fused impls need it
    triton = None

# how the kernels were built (Triton decides when they are decorated, i.e. at this import)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(device: torch.device, impl: str = "triton",
                       interpret: bool | None = None) -> str | None:
    """None if Triton kernels can run on ``device``, else one line saying why not."""
    interpret = INTERPRET if interpret is None else interpret
    if triton is None:
        return f"attn_impl={impl!r} needs Triton, which is not installed; use attn_impl='sdpa'"
    if device.type == ("cpu" if interpret else "cuda"):
        return None
    return (f"attn_impl={impl!r} runs Triton kernels on CUDA tensors (or on the CPU only under "
            f"TRITON_INTERPRET=1), got a {device.type} tensor; use attn_impl='sdpa'")


if triton is not None:
    @triton.jit
    def _ordered_key(s):
        """fp32 → int32 with the same (signed) order; −0.0 is read as +0.0."""
        s = tl.where(s == 0.0, 0.0, s)
        b = s.to(tl.int32, bitcast=True)
        return b ^ ((b >> 31) & 0x7FFFFFFF)

    @triton.jit
    def _topk_keep(s, cand, K):
        """(BM, BN) bool: per row exactly K of ``cand`` with the largest ``s``; among values
        equal to the K-th largest the lowest column index wins."""
        sign = tl.full([], -2147483648, tl.int32)
        one = tl.full([], 1, tl.int32)
        key = tl.where(cand, _ordered_key(s), sign)
        prefix = tl.zeros([s.shape[0]], dtype=tl.int32)  # K-th largest key, unsigned order
        for i in tl.static_range(32):
            trial = prefix | (one << (31 - i))
            cnt = tl.sum((key >= (trial ^ sign)[:, None]).to(tl.int32), axis=1)
            prefix = tl.where(cnt >= K, trial, prefix)
        kth = (prefix ^ sign)[:, None]
        gt = key > kth
        eq = cand & (key == kth)
        need = K - tl.sum(gt.to(tl.int32), axis=1)
        rank = tl.cumsum(eq.to(tl.int32), axis=1)
        return gt | (eq & (rank <= need[:, None]))

    @triton.jit
    def _logits_keep(q, k, rows, cols, N, P, TOPK, CLS_TOPK: tl.constexpr, IEEE: tl.constexpr):
        """fp32 logits q·kᵀ of a (BM, D) query tile against all (BN, D) keys and the keep
        mask of Eq. (6) (see the module docstring for the prefix rule)."""
        if IEEE:
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        col_ok = (cols < N)[None, :]
        if CLS_TOPK:
            keep = _topk_keep(s, col_ok, TOPK)
        else:
            keep = _topk_keep(s, col_ok & (cols >= P)[None, :], TOPK)
            keep = keep | (col_ok & ((cols < P)[None, :] | (rows < P)[:, None]))
        return s, keep

    @triton.jit
    def _hits(keep, rows, cols, SRC, b, N, P):
        """Number of kept (patch query, patch key) pairs from the same source."""
        L = N - P
        rq = (rows >= P) & (rows < N)
        ck = (cols >= P) & (cols < N)
        sq = tl.load(SRC + b * L + rows - P, mask=rq, other=-1)
        sk = tl.load(SRC + b * L + cols - P, mask=ck, other=-2)
        hit = keep & (sq[:, None] == sk[None, :]) & rq[:, None] & ck[None, :]
        return tl.sum(tl.sum(hit.to(tl.int32), axis=1), axis=0)

    @triton.jit
    def _select_kernel(Q, Kp, OUT, HITS, SRC, sqb, sqh, sqn, sqd, skb, skh, skn, skd,
                       sob, soh, son, H, N, D, P, TOPK,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       CLS_TOPK: tl.constexpr, IEEE: tl.constexpr, OUT_BIAS: tl.constexpr,
                       HAS_SRC: tl.constexpr):
        bh, mb = tl.program_id(0), tl.program_id(1)  # (sample·head, block of query rows)
        b, h = bh // H, bh % H
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        cols, dd = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)  # all keys, all head dims
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + dd[None, :] * sqd,
                    mask=(rows < N)[:, None] & (dd < D)[None, :], other=0.0)
        k = tl.load(Kp + b * skb + h * skh + cols[:, None] * skn + dd[None, :] * skd,
                    mask=(cols < N)[:, None] & (dd < D)[None, :], other=0.0)
        _, keep = _logits_keep(q, k, rows, cols, N, P, TOPK, CLS_TOPK, IEEE)
        out = OUT + b * sob + h * soh + rows[:, None] * son + cols[None, :]
        omask = (rows < N)[:, None] & (cols < son)[None, :]  # padding columns too: −inf / 0
        if OUT_BIAS:
            val = tl.where(keep, 0.0, float("-inf")).to(OUT.dtype.element_ty)
        else:
            val = keep.to(tl.int8)
        tl.store(out, val, mask=omask)
        if HAS_SRC:
            tl.store(HITS + bh * tl.num_programs(1) + mb, _hits(keep, rows, cols, SRC, b, N, P))


def block_sizes(N: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D): all keys in one tile; tl.dot needs every dim >= 16."""
    if N > 512:
        raise ValueError(f"fused TopK holds all keys in one tile; {N} tokens exceed 512")
    BN = max(16, triton.next_power_of_2(N))
    return min(32, BN), BN, max(16, triton.next_power_of_2(D))


def padded_width(n: int) -> int:
    """Last dim of the bias / keep buffers: ``n`` rounded up to a multiple of 16 (the rows of
    an SDPA bias must be 16-aligned for CUDA's memory-efficient kernel)."""
    return -(-n // 16) * 16


def num_warps(block_n: int) -> int:
    """8 warps once a (32 × 256) fp32 logit tile is held (fewer registers per thread); the
    choice is untuned: the GPU suite times it."""
    return 8 if block_n >= 256 else 4


def check_k(N: int, p: int, topk: int, cls_mode: str) -> None:
    if cls_mode not in ("always_visible", "topk"):  # the two prefix rules the kernels know
        raise ValueError(f"cls_mode={cls_mode!r}; choose 'always_visible' or 'topk'")
    n_cand = N if cls_mode == "topk" else N - p
    if not 1 <= topk <= n_cand:
        raise ValueError(f"TopK K={topk} outside [1, {n_cand}] candidate keys "
                         f"({N} tokens, {p} prefix, cls_mode={cls_mode!r})")


def prepare(q: torch.Tensor, impl: str, topk: int, prefix: int, cls_mode: str, src):
    """Checks shared by every Triton impl (device, K) → (B, H, N, src as contiguous int64)."""
    reason = unavailable_reason(q.device, impl)
    if reason:
        raise ValueError(reason)
    B, H, N, _ = q.shape
    check_k(N, prefix, topk, cls_mode)
    return B, H, N, None if src is None else src.to(torch.int64).contiguous()


def _ieee(q: torch.Tensor) -> bool:
    """fp32 dot without TF32 for fp32/fp64 inputs, and in the interpreter (numpy has no bf16
    matmul, so bf16 tiles are widened to fp32 there: the products are exact either way)."""
    return INTERPRET or q.dtype in (torch.float32, torch.float64)


@torch.library.custom_op("mixedae::homologous_select", mutates_args=())
def _select_op(q: torch.Tensor, k: torch.Tensor, topk: int, prefix: int, cls_topk: bool,
               bias: bool, src: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, N, D = q.shape
    BM, BN, BD = block_sizes(N, D)
    out = torch.empty((B, H, N, padded_width(N)), device=q.device,
                      dtype=q.dtype if bias else torch.int8)
    grid = (B * H, triton.cdiv(N, BM))
    hits = torch.zeros(grid[0] * grid[1], dtype=torch.int32, device=q.device)
    _select_kernel[grid](
        q, k, out, hits, src if src is not None else hits, *q.stride(), *k.stride(),
        *out.stride()[:3], H, N, D, prefix, topk, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
        CLS_TOPK=cls_topk, IEEE=_ieee(q), OUT_BIAS=bias, HAS_SRC=src is not None,
        num_warps=num_warps(BN))
    return out, hits


@_select_op.register_fake
def _(q, k, topk, prefix, cls_topk, bias, src):
    B, H, N, D = q.shape
    BM = block_sizes(N, D)[0]
    out = q.new_empty((B, H, N, padded_width(N)), dtype=q.dtype if bias else torch.int8)
    return out, q.new_empty((B * H * -(-N // BM),), dtype=torch.int32)


@torch.no_grad()
def homologous_select(q: torch.Tensor, k: torch.Tensor, topk: int, num_prefix_tokens: int = 1,
                      cls_mode: str = "always_visible", out: str = "bias",
                      src: torch.Tensor | None = None, impl: str = "triton"):
    """Run the selection kernel on (B, H, N, D) q, k.

    out="bias": (B, H, N, N) additive bias in q's dtype (0 kept, −inf dropped), a view of a
    16-padded buffer; out="keep": (B, H, N, N) bool. Also returns the TopK accuracy (0-dim
    float tensor, see the module docstring) if ``src`` (B, L) is given, else None.
    """
    B, H, N, src = prepare(q, impl, topk, num_prefix_tokens, cls_mode, src)
    mask, hits = _select_op(q.detach(), k.detach(), topk, num_prefix_tokens, cls_mode == "topk",
                            out == "bias", src)
    mask = mask[..., :N] if out == "bias" else mask[..., :N].view(torch.bool)
    acc = None
    if src is not None:
        acc = hits.sum().float() / (B * H * (N - num_prefix_tokens) * topk)
    return mask, acc
