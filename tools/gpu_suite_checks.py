"""Parts of ``tools/gpu_suite.py``: attention/preset/compile correctness (formerly
tools/gpu_check.py) and the dense-backbone timing. Each part takes the suite (``s.add`` records
a row) and ``in_budget(need_s=0)`` (False once less than ``need_s`` of the budget is left)."""
from __future__ import annotations

import importlib.util
import time

import torch

from mixedae.model.homologous_attention import (TRITON_IMPLS, HomologousContext,
                                                homologous_attention, topk_attn_bias)
from mixedae.model.mixed_autoencoder import build_model
from mixedae.model.vit import create_vit
from mixedae.pretrain.config import get_preset

PRESETS = ("mixedae_base", "mixedae_base_full", "mae_base", "naive_mix_base",
           "mix_masked_sa_base", "homo_att_only_base", "homo_con_only_base",
           "mixedae_no_seg_base", "mae_homocon_base")
MICRO = dict(model="micro", img_size=32, patch_size=8, mask_patch_size=8, decoder_dim=32,
             decoder_depth=1, decoder_heads=2)
HAS_CLS_MODE = "cls_mode" in HomologousContext.__dataclass_fields__


def impl_unavailable(impl: str, device: str) -> str | None:
    if impl in ("mae", "sdpa", "explicit"):
        return None
    from mixedae.model.homologous_attention_triton import unavailable_reason
    reason = unavailable_reason(torch.device(device), impl)
    if reason is None and impl == "flex" and device == "cpu":
        return "FlexAttention has no backward on the CPU"
    return reason


def keep_topk(q, k, K, mode="always_visible", p=1):
    """Reference keep mask from torch.topk on fp32 logits (a tied K-th value keeps all ties)."""
    logits = q.detach().float() @ k.detach().float().transpose(-1, -2)
    if mode == "topk":
        return logits >= logits.topk(K, -1).values[..., -1:]
    keep = torch.ones_like(logits, dtype=torch.bool)
    patch = logits[:, :, p:, p:]
    keep[:, :, p:, p:] = patch >= patch.topk(K, -1).values[..., -1:]
    return keep


def masked_attention(q, k, v, keep):
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return logits.masked_fill(~keep, float("-inf")).softmax(-1) @ v


def check_attention(s, impl, dtype, mode, shape, K, dev):
    torch.manual_seed(0)
    grads = not (impl == "flex" and dev.type == "cpu")
    q, k, v = (torch.randn(shape, device=dev, dtype=dtype, requires_grad=grads)
               for _ in range(3))
    ctx = HomologousContext(k=K, impl=impl)
    ctx.cls_mode = mode
    out = homologous_attention(q, k, v, ctx)
    if impl in TRITON_IMPLS:  # the kernel's own keys (checked against torch.topk below)
        from mixedae.model.homologous_attention_triton import homologous_select
        keep = homologous_select(q, k, K, cls_mode=mode, out="keep")[0]
    else:
        keep = keep_topk(q, k, K, mode)
    qf, kf, vf = (t.detach().float().requires_grad_(grads) for t in (q, k, v))
    ref = masked_attention(qf, kf, vf, keep)
    err = (out.float() - ref).abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    gerr = float("nan")
    if grads:
        g = torch.randn_like(ref)
        g1 = torch.autograd.grad(out.float(), (q, k, v), g)
        g2 = torch.autograd.grad(ref, (qf, kf, vf), g)
        gerr = max((a.float() - b).abs().max().item() for a, b in zip(g1, g2))
    ok = err < tol and (not grads or gerr < tol * 10)
    s.add("correctness", f"{impl} {str(dtype)[6:]} cls={mode}", f"max err {err:.1e}, grads "
          f"{gerr:.1e} (tol {tol:.0e}/{tol * 10:.0e})", ok=ok, impl=impl, err=err, grad_err=gerr)


def check_selection(s, shape, K, dev):
    """Triton keys == torch.topk keys (rows with a near-tie at the K-th value may differ),
    exactly K per row; and the selection's time against today's topk_attn_bias."""
    from mixedae.model.homologous_attention_triton import homologous_select
    for dtype in (torch.float32, torch.bfloat16):
        for mode in ("always_visible", "topk"):
            torch.manual_seed(1)
            q, k = (torch.randn(shape, device=dev, dtype=dtype) for _ in range(2))
            keep = homologous_select(q, k, K, cls_mode=mode, out="keep")[0]
            ref = keep_topk(q, k, K, mode)
            rows = keep if mode == "topk" else keep[:, :, 1:, 1:]
            exact_k = rows.sum(-1).eq(K).all().item()
            same = (keep == ref).all(-1).float().mean().item()
            s.add("correctness", f"selection {str(dtype)[6:]} cls={mode}", f"exactly K: "
                  f"{exact_k}, rows equal to torch.topk {same:.5f}",
                  ok=exact_k and same > 0.999, rows_equal=same)
    if dev.type != "cuda":
        return
    q, k = (torch.randn(64, 12, 197, 64, device=dev, dtype=torch.bfloat16) for _ in range(2))
    for name, fn in (("torch.topk bias (sdpa)", lambda: topk_attn_bias(q, k, 49)),
                     ("triton selection bias", lambda: homologous_select(q, k, 49))):
        ms = _time_cuda(fn)
        s.add("correctness", f"time {name} 64x12x197", f"{ms:.3f} ms/layer", select_ms=ms)


def _time_cuda(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def check_presets(s, dev, quick, impls, in_budget):
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    size = MICRO if quick else dict(model="small")
    presets = ("mixedae_base", "mae_base") if quick else PRESETS
    runs = [(p, "sdpa") for p in presets] + [("mixedae_base", i) for i in impls
                                             if i != "sdpa" and not impl_unavailable(i, dev.type)]
    for preset, impl in runs:
        if not in_budget():
            s.add("correctness", f"{preset} {impl}", "skipped: out of budget")
            continue
        guarded(s, f"{preset} {impl} fwd/bwd", _check_preset, s, preset, impl, size, amp, dev)


def _check_preset(s, preset, impl, size, amp, dev):
    torch.manual_seed(0)
    m = build_model(get_preset(preset, **size, batch_size=16, attn_impl=impl)).to(dev)
    img = size.get("img_size", 224)
    with amp:
        out = m(torch.randn(16, 3, img, img, device=dev))
    out["loss"].backward()
    bad = [n for n, p in m.named_parameters() if p.requires_grad and
           (p.grad is None or not torch.isfinite(p.grad).all())]
    s.add("correctness", f"{preset} {impl} fwd/bwd", f"loss {out['loss'].item():.3f} "
          f"topk_acc {[round(a, 3) for a in out['topk_acc'].tolist()]}" +
          (f" bad grads {bad[:3]}" if bad else ""),
          ok=bool(torch.isfinite(out["loss"]).item() and not bad))


def guarded(s, name, fn, *args):
    """Run one check; an exception becomes a FAIL row and the part goes on."""
    try:
        fn(*args)
    except Exception as e:
        s.add("correctness", name, f"{type(e).__name__}: {str(e)[:200]}", ok=False)


def check_compiled(s, dev, quick, impls, in_budget):
    import torch._inductor.config as ind
    old, ind.fallback_random = ind.fallback_random, True  # inductor's RNG made to match eager
    try:
        _check_compiled(s, dev, quick, impls, in_budget)
    finally:
        ind.fallback_random = old


def _check_compiled(s, dev, quick, impls, in_budget):
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    for impl in [i for i in ("sdpa", "fused") if i in impls]:
        if quick or not in_budget(40) or impl_unavailable(impl, dev.type):
            s.add("correctness", f"compiled == eager ({impl})",
                  "skipped: " + ("quick" if quick else "out of budget or unavailable"))
            continue
        torch.manual_seed(0)
        m = build_model(get_preset("mixedae_base", model="small", batch_size=16,
                                   attn_impl=impl)).to(dev)
        x = torch.randn(16, 3, 224, 224, device=dev)
        losses = []
        for fn in (m, torch.compile(m)):
            torch.manual_seed(1)
            with amp:
                losses.append(fn(x)["loss"].item())
        le, lc = losses
        s.add("correctness", f"compiled == eager ({impl})", f"{le:.4f} vs {lc:.4f}",
              ok=abs(le - lc) < 2e-2 * max(1.0, abs(le)))


def part_correctness(s, in_budget):
    a, dev = s.args, torch.device(s.args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references in true fp32
    torch.backends.cudnn.allow_tf32 = False
    shape, K = ((2, 2, 17, 16), 4) if a.quick else ((4, 12, 197, 64), 49)
    for impl in a.impls:
        reason = impl_unavailable(impl, a.device)
        if reason and not (impl == "flex" and "backward" in reason):
            s.add("correctness", impl, f"skipped: {reason}")
            continue
        modes = ("always_visible", "topk") if impl in TRITON_IMPLS or HAS_CLS_MODE \
            else ("always_visible",)
        for dtype in (torch.float32, torch.bfloat16):
            for mode in modes:
                if in_budget():
                    guarded(s, f"{impl} {str(dtype)[6:]} cls={mode}", check_attention, s, impl,
                            dtype, mode, shape, K, dev)
                else:
                    s.add("correctness", f"{impl} {str(dtype)[6:]} cls={mode}",
                          "skipped: out of budget")
    if not impl_unavailable("triton", a.device):
        guarded(s, "selection", check_selection, s, shape, K, dev)
    guarded(s, "presets", check_presets, s, dev, a.quick, a.impls, in_budget)
    guarded(s, "compiled == eager", check_compiled, s, dev, a.quick, a.impls, in_budget)


def part_dense(s, in_budget):
    """Dense backbone (what the mm MixedAEViT runs, rebuilt from the plain ViT: relative
    position bias, 4 feature maps) forward+backward, fp32 (TF32) vs bf16 autocast."""
    a, dev = s.args, torch.device(s.args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # as in training
    torch.backends.cudnn.allow_tf32 = True
    size, img, batch, outs = ("micro", 64, 2, (0, 1, 2, 3)) if a.quick else \
        ("base", 512, 8, (3, 5, 7, 11))
    torch.manual_seed(0)
    m = create_vit(size, img_size=img, rel_pos_bias=True).to(dev)
    for blk in m.blocks:  # a trained table is not zero: exercise the bias values
        torch.nn.init.normal_(blk.attn.relative_position_bias_table, std=0.02)
    x = torch.randn(batch, 3, img, img, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    feats = {}
    for name, amp in (("fp32", False), ("bf16", True)):
        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                tok, grid = m.embed(x)
                _, fs = m.forward_blocks(tok, out_indices=outs, grid=grid)
                loss = sum(f.float().pow(2).mean() for f in fs)
            loss.backward()
            m.zero_grad(set_to_none=True)
            return fs[-1].detach().float()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        feats[name] = step()
        n = 1 if a.quick else 5
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        ms = (time.perf_counter() - t0) / n * 1e3
        mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
        s.add("dense", f"ViT-{size} rel-pos {img}² bs{batch} {name} fwd+bwd",
              f"{ms:8.1f} ms/step {batch / ms * 1e3:7.1f} img/s"
              + (f"  peak {mem:.1f} GiB" if mem else ""), step_ms=ms, peak_mem_gib=mem)
    rel = ((feats["bf16"] - feats["fp32"]).norm() / feats["fp32"].norm()).item()
    mm = "mm MixedAEViT not importable here: plain ViT path" \
        if importlib.util.find_spec("mmseg") is None else "plain ViT path (mm installed)"
    s.add("dense", "bf16 vs fp32 last feature map", f"rel. L2 diff {rel:.2e} ({mm})",
          ok=rel < 5e-2, rel_diff=rel)
