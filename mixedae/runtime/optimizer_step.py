"""One optimizer step with gradient accumulation, shared by every engine (pretraining and the
classification engine).

A step clears the gradients, runs ``accum_iter`` micro-batches (under DDP the gradients are
synchronised on the last one only: the others run in ``no_sync``), back-propagates each loss
divided by ``accum_iter`` (through the fp16 ``GradScaler`` when there is one), clips the
gradient norm when asked, and applies the update unless the caller's ``apply()`` check (the
non-finite gradient guard of :mod:`mixedae.runtime.finite`) says no. With a scaler the
scaler skips non-finite steps itself. What a micro-batch is (images to a loss dict, images
and targets to a cross-entropy) is the caller's ``micro_step``.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, accum_iter: int,
                   micro_step: Callable[[], tuple[torch.Tensor, torch.Tensor]], *,
                   scaler: torch.amp.GradScaler | None = None, clip_grad: float | None = None,
                   apply: Callable[[], bool] = lambda: True) -> torch.Tensor:
    """One optimizer step over ``accum_iter`` calls of ``micro_step() -> (loss, stats)``.

    ``micro_step`` draws its micro-batch and runs the forward pass (its own autocast);
    ``stats`` is any tensor to report. Returns the detached ``stats`` averaged over the
    micro-batches, in fp32, with no host sync. ``apply()`` runs between backward (and
    clipping) and the update: False skips the update. Gradients stay in ``.grad`` after the
    step (they are cleared at the start of the next)."""
    optimizer.zero_grad(set_to_none=True)
    stats = 0.0
    for i in range(accum_iter):
        sync = i == accum_iter - 1 or not hasattr(model, "no_sync")
        with nullcontext() if sync else model.no_sync():  # a compiled DDP module has it too
            loss, s = micro_step()
            loss = loss.float() / accum_iter
            (scaler.scale(loss) if scaler is not None else loss).backward()
        stats = stats + s.detach().float() / accum_iter
    if clip_grad:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif apply():
        optimizer.step()
    return stats
