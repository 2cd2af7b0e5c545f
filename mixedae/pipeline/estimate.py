"""Rough time estimates of the pretraining stage for ``mixedae pipeline --dry-run``.

The model (one number per device kind, everything else from the config):

    seconds = steps × batch × units(image) × RATE[device] / gpus

``units(image)``: the work of one image in one training step, counted as depth · width² ·
tokens of the encoder plus the same of the decoder, with the tokens each sees per image:
compose mixing r·L (the encoder sees B·r mixed samples of L tokens) and L in the decoder (each
mixed sample is decoded once per source); full mixing L and L/r; MAE r·L and L.

``RATE`` (seconds per unit):
* ``cuda``: 4.7e-12, fitted to the paper's own pretraining costs on Tesla V100 GPUs (Table 1:
  MixedAE ViT-B/16 300 epochs 16.9 GPU-days, MixedAE-Full 62.3; Table 6: ViT-L/16 1600 epochs
  170.4), which this model reproduces within ±8 %. It is a V100-equivalent: newer GPUs are
  faster, bf16 and ``--compile`` change it.
* ``cpu``: 5.6e-9, measured with this code on one CPU core (OMP_NUM_THREADS=1; ViT-tiny at
  128 px, batch 16: 19.5 img/s; ViT-micro at 64 px runs 1.4× slower per unit, overhead-bound).

Transfer stages are not modelled (they are printed as such). Every number printed is labelled
an estimate.
"""
from __future__ import annotations

import math

from mixedae.model.vit import VIT_SIZES

RATE = {"cuda": 4.7e-12, "cpu": 5.6e-9}
RATE_SOURCE = {"cuda": "V100-equivalent, fitted to the paper's GPU-days (Tables 1, 6)",
               "cpu": "measured on one CPU core with this code"}


def units_per_image(cfg) -> float:
    dim, depth, _ = VIT_SIZES[cfg.model]
    L = (cfg.img_size // cfg.patch_size) ** 2
    g = round(1 / cfg.mix_ratio)
    enc, dec = {"compose": (L / g, L), "full": (L, L * g)}.get(cfg.mixing, (L / g, L))
    return depth * dim ** 2 * enc + cfg.decoder_depth * cfg.decoder_dim ** 2 * dec


def pretrain_steps(cfg, num_images: int, max_steps: int | None) -> int:
    """Optimizer steps the engine will run (``epochs`` × images // batch, capped)."""
    steps = int(round(cfg.epochs * (num_images // cfg.batch_size)))
    return min(steps, max_steps) if max_steps else steps


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def pretrain_estimate(cfg, num_images: int | None, max_steps: int | None, device: str,
                      gpus: int) -> str:
    """One line: steps, images, the estimated wall time on ``device`` and where RATE is from."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if num_images is None and not max_steps:
        return "estimate: unknown (no images counted in --data)"
    steps = (pretrain_steps(cfg, num_images, max_steps) if num_images is not None
             else max_steps)
    seconds = steps * cfg.batch_size * units_per_image(cfg) * RATE[kind] / max(1, gpus)
    if not math.isfinite(seconds):
        return "estimate: unknown"
    where = f"{gpus} GPU(s)" if kind == "cuda" else "1 CPU core"
    return (f"estimate: {steps} steps × {cfg.batch_size} images, ViT-{cfg.model}/"
            f"{cfg.patch_size} at {cfg.img_size} px, {cfg.mixing} mixing: ~{fmt_seconds(seconds)}"
            f" on {where} ({RATE_SOURCE[kind]}; mixedae/pipeline/estimate.py)")
