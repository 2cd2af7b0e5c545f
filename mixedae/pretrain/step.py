"""One pretraining optimizer step and the recipe around it (Appendix B, Table 4): the per-rank
micro-batch, AdamW without weight decay on norms / biases / tokens / embeddings, the autocast
dtype, and ``train_step`` (gradient accumulation, DDP sync on the last micro-batch)."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from mixedae.pretrain.config import PretrainConfig
from mixedae.runtime.errors import ConfigError

def micro_batch_size(cfg: PretrainConfig, world_size: int) -> int:
    """Per-rank micro-batch = batch / (world · accum); must be a positive multiple of 1/r."""
    denom = world_size * cfg.accum_iter
    if cfg.batch_size % denom:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by world_size "
                          f"({world_size}) × accum_iter ({cfg.accum_iter})")
    micro = cfg.batch_size // denom
    if micro % cfg.group_size:
        raise ConfigError(f"per-rank micro-batch {micro} (batch_size={cfg.batch_size} / "
                          f"(world {world_size} × accum {cfg.accum_iter})) is not divisible by "
                          f"the group size 1/r={cfg.group_size}")
    return micro


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on ndim<=1 params, biases and ``model.no_weight_decay()``."""
    from timm.optim import param_groups_weight_decay
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.effective_lr(), betas=tuple(cfg.betas), fused=fused)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in ("bf16", "fp16", "none"):
        raise ConfigError(f"amp={amp!r} must be 'bf16', 'fp16' or 'none'")
    if device.type != "cuda" or amp == "none":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def train_step(model, batches, optimizer, accum_iter: int, device: torch.device,
               dtype: torch.dtype | None = None, scaler=None,
               apply: Callable[[], bool] = lambda: True) -> torch.Tensor:
    """One optimizer step over ``accum_iter`` micro-batches drawn from ``batches``.

    DDP gradients are synchronised on the last micro-batch only. Returns the detached stats
    ``[loss, loss_recon, loss_homocon, *topk_acc]`` averaged over micro-batches (no host sync).
    Gradients stay in ``.grad`` after the step (they are cleared at the start of the next).
    ``apply()`` runs between backward and the step: False skips the step (non-finite grads).
    """
    optimizer.zero_grad(set_to_none=True)
    stats = 0.0
    for i in range(accum_iter):
        imgs = next(batches)
        imgs = (imgs[0] if isinstance(imgs, (tuple, list)) else imgs).to(device, non_blocking=True)
        sync = nullcontext() if i == accum_iter - 1 or not hasattr(model, "no_sync") \
            else model.no_sync()  # (a compiled DDP module forwards no_sync too)
        with sync:
            with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                out = model(imgs)
            loss = out["loss"].float() / accum_iter
            (scaler.scale(loss) if scaler is not None else loss).backward()
        stats = stats + torch.cat([torch.stack([out["loss"], out["loss_recon"],
                                                out["loss_homocon"]]).detach().float(),
                                   out["topk_acc"].detach().float().reshape(-1)]) / accum_iter
    if scaler is not None:  # the scaler skips non-finite steps itself
        scaler.step(optimizer)
        scaler.update()
    elif apply():
        optimizer.step()
    return stats


