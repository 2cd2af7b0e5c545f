#!/usr/bin/env python
"""Correctness of the pretraining path on an accelerator (run before the benchmark).

* homologous attention (SDPA + TopK bias) equals the literal Eq. (6) reference on the device,
  fp32 and bf16, values and gradients; which SDPA kernel accepts the bias;
* every baseline preset runs forward/backward under bf16 autocast with finite losses and
  gradients on every trainable parameter;
* torch.compile'd MixedAE gives the eager loss (inductor's RNG made to match eager).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.pretrain.config import get_preset  # noqa: E402
from mixedae.model.homologous_attention import (HomologousContext, homologous_attention,  # noqa: E402
                                          homologous_attention_reference, topk_attn_bias)
from mixedae.model.mixed_autoencoder import build_model  # noqa: E402

dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
failures = []


def check(name, ok, detail=""):
    print(f"[{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)
    if not ok:
        failures.append(name)


torch.manual_seed(0)
for select, dtype, tol in (("topk", torch.float32, 1e-4), ("topk", torch.bfloat16, 3e-2),
                           ("sort", torch.float32, 1e-4)):
    q, k, v = (torch.randn(4, 12, 197, 64, device=dev, dtype=dtype, requires_grad=True)
               for _ in range(3))
    out = homologous_attention(q, k, v, HomologousContext(k=49, select=select))
    ref = homologous_attention_reference(*(t.float() for t in (q, k, v)), 49)
    err = (out.float() - ref).abs().max().item()
    check(f"homologous attention == reference ({dtype}, {select})", err < tol,
          f"max err {err:.2e}")
    g = torch.randn_like(ref)
    g1 = torch.autograd.grad(out.float(), (q, k, v), g)
    g2 = torch.autograd.grad(ref, (q, k, v), g)
    gerr = max((a.float() - b.float()).abs().max().item() for a, b in zip(g1, g2))
    check(f"homologous attention grads == reference ({dtype}, {select})", gerr < tol * 10,
          f"max err {gerr:.2e}")

if dev.type == "cuda":
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = (torch.randn(64, 12, 197, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
    bias, _ = topk_attn_bias(q, k, 49)
    for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([be]):
                F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            print(f"[info] SDPA backend {be.name} accepts the TopK bias", flush=True)
        except RuntimeError as e:
            print(f"[info] SDPA backend {be.name} rejects the TopK bias: {str(e)[:120]}")

amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
for preset in ("mixedae_base", "mixedae_base_full", "mae_base", "naive_mix_base",
               "mix_masked_sa_base", "homo_att_only_base", "homo_con_only_base",
               "mixedae_no_seg_base", "mae_homocon_base"):
    torch.manual_seed(0)
    m = build_model(get_preset(preset, model="small", batch_size=16)).to(dev)
    with amp:
        out = m(torch.randn(16, 3, 224, 224, device=dev))
    out["loss"].backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all())]
    check(f"{preset} bf16 fwd/bwd", torch.isfinite(out["loss"]).item() and not missing,
          f"loss {out['loss'].item():.3f} topk_acc {[round(a, 3) for a in out['topk_acc'].tolist()]}"
          + (f" bad grads {missing[:3]}" if missing else ""))

import torch._inductor.config as ind  # noqa: E402
ind.fallback_random = True
m = build_model(get_preset("mixedae_base", model="small", batch_size=16)).to(dev)
x = torch.randn(16, 3, 224, 224, device=dev)
torch.manual_seed(1)
with amp:
    le = m(x)["loss"].item()
torch.manual_seed(1)
with amp:
    lc = torch.compile(m)(x)["loss"].item()
check("compiled loss == eager loss", abs(le - lc) < 2e-2 * max(1.0, abs(le)), f"{le:.4f} vs {lc:.4f}")
print("GPU CHECK:", "PASS" if not failures else f"FAIL {failures}", flush=True)
sys.exit(1 if failures else 0)
