"""MAE's per-iteration learning-rate schedule: linear warmup, then half-cycle cosine decay."""
from __future__ import annotations

import math


def cosine_lr(step: float, base_lr: float, total_steps: float, warmup_steps: float = 0.0,
              min_lr: float = 0.0) -> float:
    """Learning rate at (fractional) optimizer step ``step`` of ``total_steps``."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    span = max(total_steps - warmup_steps, 1e-12)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Set every param group's lr (scaled by its optional ``lr_scale``, e.g. layer decay)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
