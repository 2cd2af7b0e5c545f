#!/usr/bin/env python
"""UperNet train-step time: our ``MixedAEViT`` backbone vs mmseg's own ``MAE`` backbone.

Both segmentors are UperNet + FCN auxiliary head at the same dims (ViT-B by default), the same
4-scale adapter (ours inside the backbone, mmseg's as the ``Feature2Pyramid`` neck) and both
with relative position bias; one forward + backward (loss on random labels) per iteration,
measured side by side in one process, alternating the two models.

    python tools/benchmark_transfer.py                       # CPU: batch 2, 3 iters
    python tools/benchmark_transfer.py --batch 2 --iters 20  # GPU (AMP fp16) when available

Not imported by the tests.
"""
import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv

from mixedae.runtime.cli import add_debug_flag, run_main  # noqa: E402

import torch  # noqa: E402

from mixedae.model.vit import VIT_SIZES  # noqa: E402


def segmentor_cfgs(arch: str, size: int, rel_pos: bool):
    dim, depth, heads = VIT_SIZES[arch]
    out_idx = {12: (3, 5, 7, 11), 24: (7, 11, 15, 23)}.get(depth, tuple(range(depth))[-4:])
    norm = dict(type="BN", requires_grad=True)
    common = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(size, size)),
        decode_head=dict(type="UPerHead", in_channels=[dim] * 4, in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2, 3, 6), channels=dim, dropout_ratio=0.1,
                         num_classes=150, norm_cfg=norm, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=dim, in_index=2, channels=256,
                            num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=150,
                            norm_cfg=norm, align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))
    ours = dict(common, backbone=dict(type="MixedAEViT", arch=arch, img_size=size,
                                      out_indices=out_idx, drop_path_rate=0.1,
                                      use_rel_pos_bias=rel_pos, norm_cfg=norm))
    mmseg_mae = dict(common,
                     backbone=dict(type="MAE", img_size=(size, size), patch_size=16,
                                   embed_dims=dim, num_layers=depth, num_heads=heads,
                                   mlp_ratio=4, out_indices=list(out_idx), drop_path_rate=0.1,
                                   init_values=1.0),
                     neck=dict(type="Feature2Pyramid", embed_dim=dim, rescales=[4, 2, 1, 0.5],
                               norm_cfg=norm))
    return {"ours (MixedAEViT)": ours, "mmseg MAE": mmseg_mae}


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="base", choices=sorted(VIT_SIZES))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2,
                    help="per step (>= 2: UperNet's 1x1 pooling branch uses BatchNorm)")
    ap.add_argument("--iters", type=int, default=None, help="timed iters (3 CPU / 20 GPU)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-amp", action="store_true", help="fp32 on GPU too")
    ap.add_argument("--no-rel-pos", action="store_true")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    batch = args.batch
    if batch < 2:
        ap.error("--batch must be >= 2 (BatchNorm on UperNet's 1x1 pooled branch in training)")
    iters = args.iters or (20 if gpu else 3)
    amp = gpu and not args.no_amp

    importlib.import_module("mixedae.mm")  # registers MixedAEViT
    from mmengine.registry import DefaultScope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    DefaultScope.get_instance("benchmark_transfer", scope_name="mmseg")

    torch.manual_seed(0)
    imgs = torch.rand(batch, 3, args.size, args.size, device=dev)
    samples = []
    for _ in range(batch):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, args.size, args.size),
                                                    device=dev))
        s.set_metainfo(dict(img_shape=(args.size, args.size), ori_shape=(args.size, args.size),
                            pad_shape=(args.size, args.size)))
        samples.append(s)

    models = {}
    for name, cfg in segmentor_cfgs(args.arch, args.size,
                                    not args.no_rel_pos).items():
        m = MODELS.build(cfg).to(dev).train()
        n = sum(p.numel() for p in m.backbone.parameters()) / 1e6
        models[name] = m
        print(f"{name:18s} backbone {n:.1f} M params")

    def step(m):
        m.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            losses = m.loss(imgs, samples)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        loss.backward()
        if gpu:
            torch.cuda.synchronize()

    times = {k: [] for k in models}
    for i in range(args.warmup + iters):
        for name, m in models.items():   # alternate: same machine state for both
            t0 = time.perf_counter()
            step(m)
            if i >= args.warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    print(f"\nUperNet train step (fwd+bwd), ViT-{args.arch}, {args.size}x{args.size}, batch "
          f"{batch}, {dev.type}{' AMP fp16' if amp else ' fp32'}, {iters} iters "
          f"(+{args.warmup} warm-up), torch threads {torch.get_num_threads()}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:18s} median {med[k]:9.1f} ms/iter   (min {min(v):.1f}, max {max(v):.1f})")
    a, b = med["ours (MixedAEViT)"], med["mmseg MAE"]
    print(f"  ratio ours / mmseg MAE = {a / b:.3f} (median), "
          f"{min(times['ours (MixedAEViT)']) / min(times['mmseg MAE']):.3f} (min)")
    if gpu:
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (both)")
    return 0


def main(argv=None) -> int:
    return run_main("tools/benchmark_transfer.py", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
