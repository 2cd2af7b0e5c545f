"""The classification engine of ``mixedae finetune`` and ``mixedae transfer``, on the shared
runtime (:mod:`mixedae.runtime`: distributed helpers, sample stream, checkpoints and RNG state,
weight loader, run logger).

* :func:`load_pretrained` — the one weight loader applied to the classifier
  (``create_vit(..., global_pool='avg')``);
* :func:`train_loop` — iteration-based training (per-iteration schedule, gradient
  accumulation, bf16 autocast on CUDA, optional mixup and EMA) with atomic, exactly resumable
  checkpoints (model, optimizer, EMA, step, every rank's RNG state and the caller's ``state``).

Evaluation (every metric, sharded over ranks) is :mod:`mixedae.classification.evaluation`.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from mixedae.runtime import weights as W
from mixedae.runtime.atomic import atomic_torch_save, remove_stale_temps
from mixedae.runtime.checkpoint import load_checkpoint, rng_state, set_rng_state
from mixedae.runtime.distributed import (all_gather_object, barrier, get_rank, get_world_size,
                                         unwrap)
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.finite import FiniteGuard
from mixedae.runtime.optimizer_step import optimizer_step
from mixedae.runtime.precision import amp_dtype, autocast
from mixedae.runtime.run_logger import RunLogger
from mixedae.runtime.sampler import EpochStreamSampler, SeededSample
from mixedae.runtime.schedules import set_lr


# ==== pretrained weights ====================================================================
def load_pretrained(model: nn.Module, path: str | Path) -> dict:
    """Load pretrained ViT weights into the classifier ``model``; strict except for the head.

    Accepts every layout of :mod:`mixedae.runtime.weights` (a pretraining run / checkpoint,
    official MAE / timm / converted ViTs). Dropped on purpose (and reported): decoder /
    projector / mask-token / segment-embedding tensors, any ``head.*`` (the task head is
    always fresh) and the norm the model does not use: the final ``norm.*`` for an avg-pool
    classifier (it has ``fc_norm``), ``fc_norm.*`` for a cls-token model (it pools after the
    pretrained final ``norm``). ``pos_embed`` of another square patch grid is resampled
    bicubically by the ViT itself when it is loaded (its ``load_state_dict`` pre-hook).
    Anything else that does not fit raises ``CheckpointError`` naming the keys.
    Returns ``{"path", "format", "source", "dropped", "fresh", "resized", "line"}``
    (``line``: the one-line report every command prints)."""
    m = unwrap(model)
    path = W.resolve_checkpoint_path(path)
    sd, _meta = W.read_weights(path)
    source, kept, dropped = W.extract_vit(sd)
    token_model = not isinstance(m.norm, nn.Identity)
    state, more = W.to_target(kept, "vit" if token_model else "classifier")
    unused = ("head.", "fc_norm.") if token_model else ("head.",)
    dropped = dropped + more + [
        (k, "classification head (the task head is always fresh)" if k.startswith("head.")
         else "fc_norm (this model pools after the final norm)")
        for k in state if k.startswith(unused)]
    state = {k: v for k, v in state.items() if not k.startswith(unused)}
    resized = []

    def resize_pos(v: torch.Tensor, shape) -> torch.Tensor:
        """Another grid passes the check if it is square; the ViT's load hook resamples it."""
        resized.append(W.square_grid(v.shape[1] - m.num_prefix_tokens))
        return v

    pe = state.get("pos_embed")
    same_dim = pe is not None and pe.ndim == 3 and pe.shape[-1] == m.pos_embed.shape[-1]
    report = W.load_into(  # other pos_embed dims: reported as a mismatch
        m, state, what=str(path),
        optional_missing=lambda k: k.startswith(("head.", "fc_norm.", "norm.")),
        resize={"pos_embed": resize_pos} if same_dim else {})
    return {"path": str(path), "format": "pretrain" if source == "pretrain" else "plain",
            "source": source, "dropped": sorted(k for k, _ in dropped) + report["ignored"],
            "fresh": report["missing"], "resized": bool(resized),
            "line": W.load_report_line(path, source, report, dropped,
                                       (resized[0], m.patch_embed.grid_size) if resized else None)}


# ==== training ==============================================================================
class _Checkpointer:
    """Atomic save / exact restore of a training loop's state (rank 0 writes)."""

    def __init__(self, path, model, optimizer, ema, state: dict | None, extra: dict | None,
                 guard: FiniteGuard):
        self.path = Path(path) if path else None
        self.model, self.optimizer, self.ema, self.state = model, optimizer, ema, state
        self.extra, self.guard = extra or {}, guard

    def restore(self) -> int | None:
        if self.path and get_rank() == 0:
            remove_stale_temps(self.path.parent)
        if not (self.path and self.path.is_file()):
            return None
        ck = load_checkpoint(self.path)
        self.guard.saved(int(ck["step"]), self.path)
        self.guard.bad_steps = int(ck.get("bad_steps", 0))
        unwrap(self.model).load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.ema is not None and "ema" in ck:
            self.ema.load_state_dict(ck["ema"])
        if self.state is not None:
            self.state.update(ck.get("state", {}))
        rngs = ck["rng"]
        set_rng_state(rngs[get_rank() % len(rngs)])
        return int(ck["step"])

    def save(self, step: int) -> None:
        if not self.path:
            return
        rngs = all_gather_object(rng_state())
        if get_rank() == 0:
            ck = {"model": unwrap(self.model).state_dict(), "step": step, "rng": rngs,
                  "optimizer": self.optimizer.state_dict(), "state": dict(self.state or {}),
                  "bad_steps": self.guard.bad_steps, **self.extra}
            if self.ema is not None:
                ck["ema"] = self.ema.state_dict()
            atomic_torch_save(ck, self.path)
        self.guard.saved(step, self.path)
        barrier()


def steps_per_epoch(n: int, batch_size: int, accum_iter: int = 1) -> int:
    """Optimizer steps of one epoch of ``n`` examples (per-rank micro-batch ``batch_size``,
    every rank); refuses data smaller than one step."""
    world = get_world_size()
    spe = (math.ceil(n / world) // batch_size) // accum_iter
    if spe == 0:
        raise ConfigError(f"training set of {n} examples is smaller than one step "
                          f"({world} rank(s) × {batch_size} × accum {accum_iter}); lower "
                          f"--batch-size")
    return spe


def _stream(train_set: Dataset, batch_size: int, accum_iter: int, start: int, seed: int,
            workers: int, device: torch.device):
    """(steps per epoch, an iterator over the run's batches from optimizer step ``start``)."""
    world = get_world_size()
    steps_per_epoch_ = steps_per_epoch(len(train_set), batch_size, accum_iter)
    per_step = accum_iter * batch_size
    epoch0, within = divmod(start, steps_per_epoch_)
    sampler = EpochStreamSampler(len(train_set), seed=seed, rank=get_rank(), world=world,
                                 used=steps_per_epoch_ * per_step, start_epoch=epoch0,
                                 start_offset=within * per_step)
    loader = DataLoader(SeededSample(train_set), batch_size=batch_size, sampler=sampler,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed),
                        persistent_workers=workers > 0)
    return steps_per_epoch_, iter(loader)


def _optimizer_step(model, optimizer, batches, loss_fn, accum_iter, device, step, amp,
                    guard: FiniteGuard, mixup_fn=None, clip_grad=None) -> float:
    """One step of :func:`mixedae.runtime.optimizer_step.optimizer_step` on (images, targets)
    micro-batches; the mean loss. An applied step that leaves non-finite weights stops the run
    at once (before anything is saved)."""
    dtype = amp_dtype("bf16" if amp else "none", device)

    def micro_step():
        images, targets = next(batches)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        with autocast(device, dtype):
            out = model(images)
        loss = loss_fn(out.float(), targets)
        return loss, loss

    loss = optimizer_step(model, optimizer, accum_iter, micro_step, clip_grad=clip_grad,
                          apply=lambda: guard.step_ok(optimizer, step + 1))
    guard.check_state(optimizer, step + 1)
    return loss.item()


def train_loop(*, model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Dataset,
               loss_fn: Callable, batch_size: int, total_steps: int,
               lr_at: Callable[[int], float], device: torch.device, seed: int = 0,
               accum_iter: int = 1, workers: int = 0, ckpt_path: str | Path | None = None,
               ckpt_every: int = 0, logger: RunLogger | None = None, log_every: int = 20,
               mixup_fn: Callable | None = None, ema=None, clip_grad: float | None = None,
               amp: bool = True, stop_after: int | None = None,
               on_epoch_end: Callable[[int, int], None] | None = None,
               state: dict | None = None, extra_state: dict | None = None,
               max_bad_steps: int = 0) -> dict:
    """Run optimizer steps ``start..total_steps-1`` (resuming from ``ckpt_path`` if present).

    ``batch_size`` is per rank and micro-batch; a step consumes ``accum_iter`` micro-batches.
    ``on_epoch_end(epoch, step)`` runs after each epoch, followed by a checkpoint; checkpoints
    are also written every ``ckpt_every`` steps and when stopping early at ``stop_after`` (a
    resumable interruption). ``state`` (e.g. the best score so far) is saved with every
    checkpoint and updated in place on resume; ``extra_state`` (plain data, e.g. the command
    line) is stored at the top level of every checkpoint. The resumed run is identical to an
    uninterrupted one for any worker count. A step with non-finite gradients is never applied
    (:mod:`mixedae.runtime.finite`: up to ``max_bad_steps`` are skipped, then training stops
    without saving); an applied step that leaves non-finite weights or optimizer state
    (:func:`mixedae.runtime.finite.state_finite`)
    stops training at once, before any save, so the last checkpoint stays the last good one.
    Returns ``{"step", "resumed_from", "finished"}``.
    """
    logger = logger or RunLogger(None, desc="train")
    guard = FiniteGuard(max_bad_steps)
    ck = _Checkpointer(ckpt_path, model, optimizer, ema, state, extra_state, guard)
    start = (resumed_from := ck.restore()) or 0
    if stop_after is not None:  # the bar (and its ETA) counts to where this run stops
        logger.set_total(min(total_steps, max(stop_after, start + 1)))
    if resumed_from is not None:
        logger.resume_at(start)
        logger.event(event="resume", step=start, path=str(ckpt_path))
    if start >= total_steps:
        return {"step": start, "resumed_from": resumed_from, "finished": True}
    spe, batches = _stream(train_set, batch_size, accum_iter, start, seed, workers, device)
    model.train()
    running, t0, step = [], time.time(), start
    while step < total_steps:
        lr = lr_at(step)
        set_lr(optimizer, lr)
        running.append(_optimizer_step(model, optimizer, batches, loss_fn, accum_iter, device,
                                       step, amp, guard, mixup_fn, clip_grad))
        if ema is not None:
            ema.update(unwrap(model), step=step)
        step += 1
        logger.step()
        if step % log_every == 0 or step == total_steps:
            loss = float(np.mean(running))
            logger.log(dict(event="train", step=step, epoch=(step - 1) // spe, loss=loss, lr=lr,
                            sec=round(time.time() - t0, 3)), {"train/loss": loss, "train/lr": lr},
                       postfix=dict(loss=f"{loss:.4f}", lr=f"{lr:.2e}"))
            running, t0 = [], time.time()
        stopping = stop_after is not None and stop_after <= step < total_steps
        if step % spe == 0 and on_epoch_end is not None:
            on_epoch_end(step // spe - 1, step)
            model.train()
            ck.save(step)
        elif stopping or (ckpt_every and step % ckpt_every == 0 and step < total_steps):
            ck.save(step)
        if stopping:
            logger.event(event="stop", step=step)
            return {"step": step, "resumed_from": resumed_from, "finished": False}
    return {"step": step, "resumed_from": resumed_from, "finished": True}


def build_sgd(model: nn.Module, lr: float, momentum: float = 0.9,
              weight_decay: float = 0.0, nesterov: bool = False) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
