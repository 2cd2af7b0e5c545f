"""The pieces of ``tools/gpu_suite.py``: pre-flight rows, attention / selection / preset /
compile correctness, Triton kernel resources, the benchmark and loader rows, the dense
backbone. Each takes the suite ``s`` (``s.add(part, name, summary, ok, **data)`` records a row;
``s.args`` the sizes set by ``configure``)."""
from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from mixedae.model.attention.homologous import (CLS_MODES, TRITON_IMPLS, HomologousContext,
                                                homologous_attention, topk_attn_bias)
from mixedae.model.mixed_autoencoder import MixedAutoencoder
from mixedae.model.vit import create_vit
from mixedae.pretrain.config import get_preset

PRESETS = ("mixedae_base", "mixedae_base_full", "mae_base", "naive_mix_base",
           "mix_masked_sa_base", "homo_att_only_base", "homo_con_only_base",
           "mixedae_no_seg_base", "mae_homocon_base")
MICRO = dict(model="micro", img_size=32, patch_size=8, mask_patch_size=8, decoder_dim=32,
             decoder_depth=1, decoder_heads=2)
COMPILED_ORDER = ("sdpa", "fused", "triton", "flex", "explicit")  # compiled runs, most wanted
MM_PREFIXES = ("mmcv", "mmengine", "mmdet", "mmseg", "mmpretrain")
# the kernels of each Triton impl (module, jit function names) for n_regs / n_spills rows
KERNELS = dict(triton=("attention.triton_select", ("_select_kernel",)),
               fused=("attention.triton_fused", ("_fwd_kernel", "_bwd_dq_kernel",
                                                     "_bwd_dkdv_kernel")))


def configure(a) -> None:
    """Sizes of every piece: full (ViT-B/16, batch 256, real shapes) or ``--quick`` (toy)."""
    q = a.quick
    a.model, a.batch_size = ("micro", 8) if q else ("base", 256)
    a.steps, a.warmup = (1, 1) if q else (10, 3)
    a.overrides = dict(MICRO, model="micro") if q else {}
    a.overrides.pop("model", None)
    a.workers = 0 if q else os.cpu_count()
    a.loader_seconds, a.loader_batch = (1.0, 4) if q else (12.0, 128)
    a.shape, a.K = ((2, 2, 17, 16), 4) if q else ((4, 12, 197, 64), 49)


def impl_unavailable(impl: str, device: str, checking: bool = False) -> str | None:
    if impl in ("mae", "sdpa", "explicit"):
        return None
    from mixedae.model.attention.triton_select import unavailable_reason
    reason = unavailable_reason(torch.device(device), impl)
    if reason is None and impl == "flex" and device == "cpu" and not checking:
        return "FlexAttention has no backward on the CPU"
    return reason


# ---------------------------------------------------------------------------- pre-flight
def preflight_gpu(s):
    if s.args.device != "cuda":
        s.add("preflight", "gpu", f"none: {platform.processor() or 'cpu'}, "
              f"{os.cpu_count()} cpus", cpus=os.cpu_count())
        return
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    s.add("preflight", "gpu", f"{p.name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} free), "
          f"sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {os.cpu_count()} cpus",
          gpu=p.name, mem_gib=total / 2**30, free_gib=free / 2**30,
          capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count, cpus=os.cpu_count())


def _version(mod: str) -> str:
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return "not installed"


def preflight_versions(s):
    from mixedae.pretrain.decode import jpeg_library
    v = dict(python=platform.python_version(), torch=torch.__version__,
             cuda=torch.version.cuda or "none", triton=_version("triton"),
             timm=_version("timm"), torchvision=_version("torchvision"),
             numpy=_version("numpy"), pillow=_version("PIL"),
             torchcodec=_version("torchcodec"), jpeg=jpeg_library())
    mm = sorted(m for m in sys.modules if m.split(".")[0] in MM_PREFIXES)
    s.add("preflight", "versions, no mm* import", " ".join(f"{k} {x}" for k, x in v.items())
          + (f"; mm* IMPORTED: {mm[:5]}" if mm else "; no mm* module imported"),
          ok=not mm, versions=v, mm_imported=mm)


def preflight_decode(s):
    from mixedae.pretrain.decode import decode_jpegs, device_decode_problem, jpeg_library, \
        tiny_jpeg
    dev = torch.device(s.args.device)
    t0 = time.perf_counter()
    problem = device_decode_problem(dev)
    ms = (time.perf_counter() - t0) * 1e3
    what = "nvJPEG" if dev.type == "cuda" else "libjpeg-turbo"
    if problem:
        s.add("preflight", "JPEG decode on the device", f"{problem} (--decode gpu would not "
              "run)", ok=False, decoder=jpeg_library(), problem=problem)
        return
    img = decode_jpegs([tiny_jpeg()], dev)[0]
    s.add("preflight", "JPEG decode on the device", f"{jpeg_library()} ({what}) decodes on "
          f"{img.device} in {ms:.0f} ms (first call)", ok=True, decoder=jpeg_library())


def shm_need_gib(a) -> tuple[float, float]:
    """/dev/shm the loader rows need: workers × 2 prefetched batches, uint8 and float."""
    img = 3 * 224 * 224
    n = a.workers * 2 * a.loader_batch * img
    return n / 2**30, 4 * n / 2**30


def preflight_shm(s):
    need8, need32 = shm_need_gib(s.args)
    try:
        du = shutil.disk_usage("/dev/shm")
    except OSError as e:
        s.add("preflight", "/dev/shm", f"unavailable ({e}); DataLoader workers need it",
              ok=s.args.workers == 0)
        return
    free = du.free / 2**30
    s.add("preflight", "/dev/shm", f"{du.total / 2**30:.1f} GiB, {free:.1f} free; loader needs "
          f"{need8:.2f} GiB (uint8 batches), {need32:.2f} GiB (float, cpu-pil)",
          ok=free >= need8, shm_gib=du.total / 2**30, shm_free_gib=free,
          need_uint8_gib=need8, need_float_gib=need32)


# --------------------------------------------------------------------------- correctness
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


def check_attention(s, part, impl, dtype, mode, shape, K, dev):
    torch.manual_seed(0)
    grads = not (impl == "flex" and dev.type == "cpu")
    q, k, v = (torch.randn(shape, device=dev, dtype=dtype, requires_grad=grads)
               for _ in range(3))
    ctx = HomologousContext(k=K, impl=impl, cls_mode=mode)
    out = homologous_attention(q, k, v, ctx)
    if impl in TRITON_IMPLS:  # the kernel's own keys (checked against torch.topk below)
        from mixedae.model.attention.triton_select import homologous_select
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
    s.add(part, f"{impl} {str(dtype)[6:]} cls={mode}", f"max err {err:.1e}, grads "
          f"{gerr:.1e} (tol {tol:.0e}/{tol * 10:.0e})", ok=ok, impl=impl, err=err, grad_err=gerr)


def check_impl_rows(s, part, impl):
    """``impl`` vs the masked-softmax reference (fp32, bf16 × its cls modes), each case
    guarded; then, for a Triton impl, the resources of every kernel it compiled."""
    a, dev = s.args, torch.device(s.args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references in true fp32
    torch.backends.cudnn.allow_tf32 = False
    for dtype in (torch.float32, torch.bfloat16):
        for mode in CLS_MODES:
            name = f"{impl} {str(dtype)[6:]} cls={mode}"
            try:
                check_attention(s, part, impl, dtype, mode, a.shape, a.K, dev)
            except Exception as e:
                s.add(part, name, f"{type(e).__name__}: {str(e)[:200]}", ok=False, impl=impl)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    if impl in KERNELS:
        kernel_rows(s, part, impl, a.shape)


def kernel_rows(s, part, impl, shape):
    """n_regs, n_spills, warps, stages, shared memory of each compiled kernel of ``impl`` (from
    Triton's cache; None under the interpreter) and the block sizes / warps of its launch rule
    (``block_sizes``, ``num_warps``) at ``shape``."""
    from mixedae.model.attention.triton_select import INTERPRET, block_sizes, num_warps
    mod = importlib.import_module(f"mixedae.model.{KERNELS[impl][0]}")
    _, _, N, D = shape
    BM, BN, BD = block_sizes(N, D)
    rule = dict(BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, num_warps=num_warps(BN))
    for name in KERNELS[impl][1]:
        fn = getattr(mod, name, None)
        compiled = [] if fn is None or INTERPRET else _compiled(fn)
        if not compiled:
            s.add(part, f"kernel {impl}.{name}", f"launch rule {rule} (N={N}, D={D}); "
                  + ("interpreter: no compiled binary" if INTERPRET else "not compiled"),
                  impl=impl, kernel=name, n_regs=None, n_spills=None, **rule)
        for c in compiled:
            s.add(part, f"kernel {impl}.{name}", f"regs {c['n_regs']} spills {c['n_spills']} "
                  f"warps {c['num_warps']} stages {c['num_stages']} smem {c['shared']} B "
                  f"{c['blocks'] or rule}", impl=impl, kernel=name, **{**rule, **c})


def _compiled(fn) -> list[dict]:
    out = []
    caches = getattr(fn, "device_caches", None) or {}
    for entry in list(caches.values()):
        for ck in list(entry[0].values()):
            try:
                ck._init_handles()
            except Exception:
                pass
            md = getattr(ck, "metadata", None)
            consts = getattr(getattr(ck, "src", None), "constants", None) or {}
            names = getattr(getattr(getattr(ck, "src", None), "fn", None), "arg_names", [])
            blocks = {}
            for key, val in consts.items():
                k = names[key[0]] if isinstance(key, tuple) and key and key[0] < len(names) \
                    else key
                if isinstance(k, str) and k.startswith("BLOCK"):
                    blocks[k] = val
            out.append(dict(n_regs=getattr(ck, "n_regs", None),
                            n_spills=getattr(ck, "n_spills", None),
                            num_warps=getattr(md, "num_warps", None),
                            num_stages=getattr(md, "num_stages", None),
                            shared=getattr(md, "shared", None), blocks=blocks))
    return out


def selection(s):
    """Triton keys == torch.topk keys (rows with a near-tie at the K-th value may differ),
    exactly K per row; and the selection's time against today's topk_attn_bias."""
    from mixedae.model.attention.triton_select import homologous_select
    if s.checked.get("triton") is not True:
        s.skip("correctness", "selection vs torch.topk", "the triton check did not pass")
        return
    a, dev = s.args, torch.device(s.args.device)
    for dtype in (torch.float32, torch.bfloat16):
        for mode in ("always_visible", "topk"):
            torch.manual_seed(1)
            q, k = (torch.randn(a.shape, device=dev, dtype=dtype) for _ in range(2))
            keep = homologous_select(q, k, a.K, cls_mode=mode, out="keep")[0]
            ref = keep_topk(q, k, a.K, mode)
            rows = keep if mode == "topk" else keep[:, :, 1:, 1:]
            exact_k = rows.sum(-1).eq(a.K).all().item()
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


# -------------------------------------------------------------------- presets and compile
def preset_runs(quick: bool, impls) -> list[tuple[str, str]]:
    presets = ("mixedae_base", "mae_base") if quick else PRESETS
    return [(p, "sdpa") for p in presets if "sdpa" in impls] + \
        [("mixedae_base", i) for i in impls if i != "sdpa"]


def _skipped_preset_row(s, name, impl) -> bool:
    """Skip (and record) a presets row whose implementation cannot run here or whose Triton
    check did not pass; True when skipped."""
    reason = impl_unavailable(impl, s.args.device)
    if not reason and impl in TRITON_IMPLS and s.checked.get(impl) is not True:
        reason = f"the {impl} check did not pass or did not run"
    if reason:
        s.skip("presets", name, reason, impl=impl)
    return bool(reason)


def preset_row(s, preset, impl):
    name = f"{preset} {impl} fwd/bwd"
    if _skipped_preset_row(s, name, impl):
        return
    dev = torch.device(s.args.device)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    size = MICRO if s.args.quick else dict(model="small")
    torch.manual_seed(0)
    cfg = get_preset(preset, **size, batch_size=16, attn_impl=impl)
    m = MixedAutoencoder(cfg.model_config()).to(dev)
    img = size.get("img_size", 224)
    with amp:
        out = m(torch.randn(16, 3, img, img, device=dev))
    out["loss"].backward()
    bad = [n for n, p in m.named_parameters() if p.requires_grad and
           (p.grad is None or not torch.isfinite(p.grad).all())]
    s.add("presets", name, f"loss {out['loss'].item():.3f} "
          f"topk_acc {[round(a, 3) for a in out['topk_acc'].tolist()]}" +
          (f" bad grads {bad[:3]}" if bad else ""), impl=impl,
          ok=bool(torch.isfinite(out["loss"]).item() and not bad))


def compiled_vs_eager(s, impl):
    import torch._inductor.config as ind
    name = f"compiled == eager ({impl})"
    if _skipped_preset_row(s, name, impl):
        return
    dev = torch.device(s.args.device)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    old, ind.fallback_random = ind.fallback_random, True  # inductor's RNG made to match eager
    torch._dynamo.reset()  # a fresh compile cache (see benchmark_pretrain.bench)
    try:
        torch.manual_seed(0)
        cfg = get_preset("mixedae_base", model="small", batch_size=16, attn_impl=impl)
        m = MixedAutoencoder(cfg.model_config()).to(dev)
        x = torch.randn(16, 3, 224, 224, device=dev)
        losses = []
        for fn in (m, torch.compile(m)):
            torch.manual_seed(1)
            with amp:
                losses.append(fn(x)["loss"].item())
    finally:
        ind.fallback_random = old
    le, lc = losses
    s.add("presets", name, f"{le:.4f} vs {lc:.4f}", impl=impl,
          ok=abs(le - lc) < 2e-2 * max(1.0, abs(le)))


# ------------------------------------------------------------------------ benchmark rows
def bench_row(a, impl: str, compiled: bool) -> dict:
    import argparse

    import benchmark_pretrain
    torch.backends.cuda.matmul.allow_tf32 = True  # as tools/benchmark_pretrain.py
    torch.backends.cudnn.allow_tf32 = True
    bargs = argparse.Namespace(device=a.device, model=a.model, batch_size=a.batch_size,
                               mixing="compose", steps=a.steps, warmup=a.warmup,
                               overrides=a.overrides)
    preset = "mae_base" if impl == "mae" else "mixedae_base"
    return benchmark_pretrain.bench(preset, bargs, compiled=compiled,
                                    attn=None if impl == "mae" else dict(attn_impl=impl))


def loader_row(s, path: str):
    import benchmark_loader
    from mixedae.pretrain.decode import device_decode_problem
    a = s.args
    if not hasattr(s, "loader_data"):
        data = a.data or next((str(d) for d in _data_candidates() if d.is_dir()), None)
        kind = "real JPEGs"
        if data is None:
            data, kind = synthetic_jpegs(), "SYNTHETIC JPEGs (no real images here)"
        s.loader_data = data
        s.add("loader", "images", f"{kind}: {data}", data=data, synthetic=kind != "real JPEGs")
    workers = a.workers if path != "gpu" else min(8, a.workers)
    if path == "cpu-pil" and workers:  # float batches: 4x the shared memory of uint8
        need = shm_need_gib(a)[1]
        try:
            free = shutil.disk_usage("/dev/shm").free / 2**30
        except OSError:
            free = 0.0
        if free < need:
            s.skip("loader", f"loader {path}", f"/dev/shm has {free:.1f} GiB free, its float "
                   f"batches need {need:.1f} GiB", path=path)
            return
    if path == "gpu" and a.device == "cuda":
        problem = device_decode_problem(a.device)
        if problem:
            s.skip("loader", f"loader {path}", problem, path=path)
            return
    r = benchmark_loader.run_loader(path, s.loader_data, workers, a.loader_seconds,
                                    a.loader_batch, device=a.device,
                                    max_batches=2 if a.quick else None)
    r.pop("part")
    base = getattr(s, "loader_rows", {}).get("cpu-pil")
    if path == "cpu" and base:
        r["per_core_vs_cpu_pil"] = r["img_per_s_per_core"] / base["img_per_s_per_core"]
        if r["img_per_cpu_s"] and base["img_per_cpu_s"]:
            r["per_cpu_s_vs_cpu_pil"] = r["img_per_cpu_s"] / base["img_per_cpu_s"]
    s.loader_rows = {**getattr(s, "loader_rows", {}), path: r}
    s.add("loader", f"loader {path}, {workers} workers / {r['cpus']} cpus",
          f"{r['img_per_s']:8.1f} img/s, {r['img_per_s_per_core']:7.1f} per worker core"
          + (f", {r['img_per_cpu_s']:.1f} per CPU-s" if r["img_per_cpu_s"] else "")
          + f" [{r['decoder']}]" + (f"; {r['per_cpu_s_vs_cpu_pil']:.2f}x cpu-pil per CPU-s"
                                    if "per_cpu_s_vs_cpu_pil" in r else ""), **r)


def _data_candidates():
    repo = Path(__file__).resolve().parents[1]
    return (repo / ".bench_data" / "imagenet_tiny",
            repo.parent / "shared" / "data" / "imagenet_tiny")


def synthetic_jpegs(n: int = 128) -> str:
    """Smooth random photo-like JPEGs (500×375, quality 90) when no real images travelled."""
    import tempfile

    import numpy as np
    from PIL import Image
    root = Path(tempfile.mkdtemp(prefix="synthetic_jpegs_")) / "x"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        img.save(root / f"{i}.jpg", quality=90)
    return str(root.parent)


# --------------------------------------------------------------------------- dense backbone
def dense(s):
    """Dense backbone (what the mm MixedAEViT runs, rebuilt from the plain ViT: relative
    position bias, 4 feature maps) forward+backward, fp32 (TF32) vs bf16 autocast; the non-mm
    path, since the GPU machine has no OpenMMLab package."""
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
              + (f"  peak {mem:.1f} GiB" if mem else ""), step_ms=ms, peak_mem_gib=mem,
              img_per_s=batch / ms * 1e3)
    rel = ((feats["bf16"] - feats["fp32"]).norm() / feats["fp32"].norm()).item()
    s.add("dense", "bf16 vs fp32 last feature map", f"rel. L2 diff {rel:.2e} (plain ViT path: "
          "the mm MixedAEViT is not imported)", ok=rel < 5e-2, rel_diff=rel)
