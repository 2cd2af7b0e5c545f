"""Shared machinery of ``mixedae finetune`` and ``mixedae transfer``.

* distributed set-up (torchrun ``env://``; NCCL on GPU, gloo on CPU) and sharded evaluation;
* :func:`load_pretrained` — strict loading of pretraining / plain ViT checkpoints into the
  classifier (``create_vit(..., global_pool='avg')``);
* :func:`train_loop` — an iteration-based training loop (per-iteration schedule, gradient
  accumulation, bf16 autocast on CUDA, optional mixup and EMA) with atomic, resumable
  checkpoints (model, optimizer, EMA, step and every RNG state);
* metrics: top-1/top-5 accuracy; VOC2007 mean average precision, both the 11-point
  interpolated AP of the VOC2007 devkit and the standard (non-interpolated) AP that equals
  ``sklearn.metrics.average_precision_score``.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from mixedae.runtime.checkpoint import atomic_torch_save, atomic_write_text, load_checkpoint  # noqa: F401
from mixedae.convert import ConversionError
from mixedae.runtime.distributed import init_distributed  # noqa: F401
from mixedae.runtime.schedules import cosine_lr, set_lr  # noqa: F401

IGNORE = -1  # multi-label target value of a class that is only "difficult" (VOC): not scored

class UsageError(ValueError):
    """Bad command-line input or data layout; the CLIs print it as one error line."""


# ==== distributed ===========================================================================


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if dist_on() else 0


def get_world() -> int:
    return dist.get_world_size() if dist_on() else 1


def is_main() -> bool:
    return get_rank() == 0


def print0(*args, **kw) -> None:
    """print on rank 0 only (flushed)."""
    if is_main():
        print(*args, **kw, flush=True)


def barrier() -> None:
    if dist_on():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# ==== sampling ==============================================================================


class EpochStreamSampler(Sampler[int]):
    """An endless stream of epochs: epoch ``e`` is a permutation seeded by ``(seed, e)``,
    sharded over ranks (padded by wrapping so every rank gets ``per_rank`` indices) and cut to
    its first ``used`` indices (whole optimizer steps; the tail is skipped). Starting at
    ``(start_epoch, start_offset)`` reproduces exactly the stream an uninterrupted run sees,
    and a single DataLoader (and its workers) serves the whole run."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1,
                 used: int | None = None, start_epoch: int = 0, start_offset: int = 0):
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.per_rank = math.ceil(n / world)
        self.used = self.per_rank if used is None else used
        self.start_epoch, self.start_offset = start_epoch, start_offset

    def epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world
        order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank::self.world][:self.used]

    def __iter__(self):
        epoch, offset = self.start_epoch, self.start_offset
        while True:
            yield from self.epoch_indices(epoch)[offset:]
            epoch, offset = epoch + 1, 0


# ==== checkpoints ===========================================================================


def rng_state() -> dict:
    """Every RNG state as plain python (lists of ints): safe for ``weights_only`` loading and
    for ``all_gather_object``."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *[x.item() if hasattr(x, "item") else x
                                                        for x in np_state[2:]]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])





# ==== pretrained weights ====================================================================


# A checkpoint that does not fit the model (the message names the offending keys).
CheckpointError = ConversionError


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A pretraining run directory stands for its ``model.safetensors`` (else
    ``checkpoint.pth``), as in :func:`mixedae.convert.load_checkpoint_file`."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "checkpoint.pth"):
            if (path / name).is_file():
                return path / name
        return path / "model.safetensors"
    return path


def checkpoint_config(path: str | Path) -> dict:
    """The ``config`` json stored in a pretraining checkpoint's metadata ({} if none)."""
    path = resolve_checkpoint_path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        cfg = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: metadata 'config' is not valid json ({e})") from e
    return cfg if isinstance(cfg, dict) else {}


def load_pretrained(model: nn.Module, path: str | Path) -> dict:
    """Load pretrained ViT weights into the classifier ``model``; strict except for the head.

    Reading and key rules are :mod:`mixedae.convert`'s (the project's one converter):
    accepts (a) a pretraining checkpoint (``model.safetensors``, ``checkpoint.pth`` or their
    run directory) whose ``encoder.*`` tensors are taken, and (b) a plain ViT state dict in
    timm/MAE layout (``.safetensors``, or a torch file optionally wrapped in
    ``"model"``/``"state_dict"``; always ``weights_only=True``; DDP ``module.`` stripped).

    Dropped on purpose (and reported): decoder / projector / mask-token / segment-embedding
    tensors, the final ``norm.*`` (the avg-pool classifier uses ``fc_norm``) and any ``head.*``
    (the task head is always fresh). ``pos_embed`` is resampled bicubically (cls token kept)
    when the patch grid differs. A missing key other than ``head.*``/``fc_norm.*``, an
    unknown or unexpected key, or a shape mismatch raises ``ConversionError`` (alias
    ``CheckpointError``) naming the keys. Returns ``{"path", "format", "dropped",
    "fresh", "resized"}``.
    """
    from mixedae.convert import (extract_vit, load_checkpoint_file, match_state_dict,
                          resize_pos_embed, square_grid, to_target)

    m = unwrap(model)
    path = resolve_checkpoint_path(path)
    sd, _meta = load_checkpoint_file(path)
    source, kept, dropped = extract_vit(sd)
    state, more = to_target(kept, "classifier")
    dropped = [k for k, _ in dropped + more]
    heads = [k for k in state if k.startswith("head.")]  # the task head is always fresh
    state = {k: v for k, v in state.items() if k not in heads}
    resized = []

    def resize_pos(v: torch.Tensor, shape) -> torch.Tensor:
        resized.append(True)
        return resize_pos_embed(v, square_grid(v.shape[1] - 1), m.grid_size, 1)

    own = m.state_dict()
    pe = state.get("pos_embed")
    same_dim = pe is not None and pe.ndim == 3 and pe.shape[-1] == own["pos_embed"].shape[-1]
    out, missing, ignored = match_state_dict(  # other pos_embed dims: reported as mismatch
        own, state, optional_missing=lambda k: k.startswith(("head.", "fc_norm.")),
        resize={"pos_embed": resize_pos} if same_dim else {}, what=str(path))
    m.load_state_dict(out, strict=False)
    return {"path": str(path), "format": "pretrain" if source == "pretrain" else "plain",
            "source": source, "dropped": sorted(dropped + heads + ignored),
            "fresh": sorted(missing), "resized": bool(resized)}


# ==== metrics ===============================================================================


def _rank(scores, targets):
    """Drop ``IGNORE`` entries; (scores, positive mask, descending stable order) or None if no
    positive is left."""
    scores, targets = np.asarray(scores, float), np.asarray(targets)
    keep = targets != IGNORE
    scores, pos = scores[keep], targets[keep] > 0
    if pos.sum() == 0:
        return None
    return scores, pos, np.argsort(-scores, kind="mergesort")


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Standard (non-interpolated) AP: Σ_n (R_n − R_{n−1}) P_n over distinct score thresholds.

    Equals ``sklearn.metrics.average_precision_score`` (ties share one threshold).
    ``targets`` in {1, 0} (entries equal to ``IGNORE`` are removed first)."""
    ranked = _rank(scores, targets)
    if ranked is None:
        return float("nan")
    scores, pos, order = ranked
    s, p = scores[order], pos[order]
    tp = np.cumsum(p)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = tp[last].astype(float)
    n = (last + 1).astype(float)
    prec, rec = tp / n, tp / pos.sum()
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def voc07_11point_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """11-point interpolated AP of the VOC2007 devkit (``VOCevalcls.m`` / ``VOCap`` 2007):
    rank by descending score, prec/rec after every example, mean over t ∈ {0, .1, …, 1} of
    max precision at recall ≥ t. ``targets``: 1 positive, 0 negative, ``IGNORE`` difficult."""
    ranked = _rank(scores, targets)
    if ranked is None:
        return float("nan")
    scores, pos, order = ranked
    tp = np.cumsum(pos[order]).astype(float)
    fp = np.cumsum(~pos[order]).astype(float)
    rec, prec = tp / pos.sum(), tp / (tp + fp)
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        m = rec >= t - 1e-12
        ap += (prec[m].max() if m.any() else 0.0) / 11.0
    return float(ap)


def mean_ap(scores: np.ndarray, targets: np.ndarray, eleven_point: bool) -> float:
    fn = voc07_11point_ap if eleven_point else average_precision
    aps = [fn(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over classes, ignoring ``IGNORE`` entries."""
    mask = (targets != IGNORE).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0).float(),
                                              reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


# ==== evaluation ============================================================================


def autocast(device: torch.device, enabled: bool = True):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             multilabel: bool = False, workers: int = 0, amp: bool = True) -> dict:
    """Evaluate on all of ``dataset`` (each example exactly once across ranks).

    Single-label: ``{"top1", "top5", "loss", "n"}`` (percent). Multi-label:
    ``{"map11", "map", "n"}`` (percent; VOC2007 11-point and standard mAP)."""
    model.eval()
    rank, world = get_rank(), get_world()
    idx = list(range(rank, len(dataset), world))
    loader = DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=batch_size,
                        shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")
    correct1 = correct5 = n = 0
    loss_sum = 0.0
    all_scores, all_targets = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float().cpu()
        if multilabel:
            all_scores.append(logits.numpy())
            all_targets.append(targets.numpy())
        else:
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == targets[:, None]
            correct1 += hit[:, 0].sum().item()
            correct5 += hit.any(dim=1).sum().item()
        n += images.shape[0]
    if multilabel:
        s = np.concatenate(all_scores) if all_scores else np.zeros((0, 0))
        t = np.concatenate(all_targets) if all_targets else np.zeros((0, 0))
        if dist_on():
            parts = [None] * world
            dist.all_gather_object(parts, (s.tolist(), t.tolist()))  # plain python only
            s = np.concatenate([np.asarray(p[0], float) for p in parts if len(p[0])])
            t = np.concatenate([np.asarray(p[1], float) for p in parts if len(p[1])])
        return {"map11": 100 * mean_ap(s, t, True), "map": 100 * mean_ap(s, t, False),
                "n": int(len(s))}
    stats = torch.tensor([correct1, correct5, n, loss_sum], dtype=torch.float64)
    if dist_on():
        stats = stats.to(device)
        dist.all_reduce(stats)
        stats = stats.cpu()
    c1, c5, n, ls = stats.tolist()
    return {"top1": 100 * c1 / max(n, 1), "top5": 100 * c5 / max(n, 1),
            "loss": ls / max(n, 1), "n": int(n)}


# ==== training ==============================================================================


class JsonlLogger:
    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path and is_main() else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **record) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train_loop(*, model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Dataset,
               loss_fn: Callable, batch_size: int, total_steps: int,
               lr_at: Callable[[int], float], device: torch.device, seed: int = 0,
               accum_iter: int = 1, workers: int = 0, ckpt_path: str | Path | None = None,
               ckpt_every: int = 0, log: Callable | None = None, log_every: int = 20,
               mixup_fn: Callable | None = None, ema=None, clip_grad: float | None = None,
               amp: bool = True, stop_after: int | None = None,
               on_epoch_end: Callable[[int, int], None] | None = None,
               extra_state: dict | None = None) -> dict:
    """Run optimizer steps ``start..total_steps-1`` (resuming from ``ckpt_path`` if present).

    ``batch_size`` is per rank and per micro-batch; one optimizer step consumes ``accum_iter``
    micro-batches. An epoch is ``steps_per_epoch = (len/world // batch) // accum`` steps over a
    fresh seeded permutation (:class:`EpochStreamSampler`); ``on_epoch_end(epoch, step)`` is
    called after each. A checkpoint is written atomically every ``ckpt_every`` steps, after
    each epoch (if ``on_epoch_end`` is set) and when stopping early at ``stop_after`` steps (a
    resumable interruption). With ``workers=0`` a resumed run is bit-identical to an
    uninterrupted one. Returns ``{"step", "resumed_from", "finished"}``.
    """
    log = log or (lambda **_: None)
    rank, world = get_rank(), get_world()
    per_rank = math.ceil(len(train_set) / world)
    steps_per_epoch = (per_rank // batch_size) // accum_iter
    if steps_per_epoch == 0:
        raise UsageError(f"training set of {len(train_set)} examples is smaller than one step "
                         f"({world} rank(s) × {batch_size} × accum {accum_iter})")
    start, resumed_from = 0, None
    if ckpt_path and Path(ckpt_path).is_file():
        ck = load_checkpoint(ckpt_path)
        unwrap(model).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ema is not None and "ema" in ck:
            ema.load_state_dict(ck["ema"])
        start = resumed_from = int(ck["step"])
        rngs = ck["rng"]
        if len(rngs) != world:
            log(event="warning", msg=f"checkpoint has {len(rngs)} rank RNG states, running "
                f"{world}: rank r uses state r % {len(rngs)}")
        set_rng_state(rngs[rank % len(rngs)])
        log(event="resume", step=start, path=str(ckpt_path))

    def save(step: int) -> None:
        if not ckpt_path:
            return
        if dist_on():
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if is_main():
            state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "rng": rngs, **(extra_state or {})}
            if ema is not None:
                state["ema"] = ema.state_dict()
            atomic_torch_save(state, ckpt_path)
        barrier()

    if start >= total_steps:
        return {"step": start, "resumed_from": resumed_from, "finished": True}
    used = steps_per_epoch * accum_iter * batch_size
    epoch0, step_in_epoch = divmod(start, steps_per_epoch)
    sampler = EpochStreamSampler(len(train_set), seed=seed, rank=rank, world=world, used=used,
                                 start_epoch=epoch0,
                                 start_offset=step_in_epoch * accum_iter * batch_size)
    # worker seeds depend on where we (re)start, so a resumed run does not replay augmentations
    loader_gen = torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + start)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=loader_gen,
                        persistent_workers=workers > 0)
    it = iter(loader)
    model.train()
    running, t0 = [], time.time()
    step = start
    while step < total_steps:
        epoch = step // steps_per_epoch
        set_lr(optimizer, lr_at(step))
        optimizer.zero_grad(set_to_none=True)
        loss_acc = 0.0
        for a in range(accum_iter):
            images, targets = next(it)
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                images, targets = mixup_fn(images, targets)
            sync = a == accum_iter - 1 or not hasattr(model, "no_sync")
            with (nullcontext() if sync else model.no_sync()):
                with autocast(device, amp):
                    out = model(images)
                loss = loss_fn(out.float(), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}")
                (loss / accum_iter).backward()
            loss_acc += loss.item() / accum_iter
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        if ema is not None:
            ema.update(unwrap(model), step=step)
        step += 1
        running.append(loss_acc)
        if step % log_every == 0 or step == total_steps:
            log(event="train", step=step, epoch=epoch, loss=float(np.mean(running)),
                lr=lr_at(step - 1), sec=round(time.time() - t0, 3))
            running, t0 = [], time.time()
        if step % steps_per_epoch == 0 and on_epoch_end is not None:
            on_epoch_end(epoch, step)
            model.train()
            save(step)
        elif stop_after is not None and step >= stop_after and step < total_steps:
            save(step)
        elif ckpt_every and step % ckpt_every == 0 and step < total_steps:
            save(step)
        if stop_after is not None and step >= stop_after and step < total_steps:
            log(event="stop", step=step)
            del it
            return {"step": step, "resumed_from": resumed_from, "finished": False}
    del it
    return {"step": step, "resumed_from": resumed_from, "finished": True}


def build_sgd(model: nn.Module, lr: float, momentum: float = 0.9,
              weight_decay: float = 0.0) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def stratified_split(labels: Sequence[int], frac: float, seed: int) -> tuple[list[int], list[int]]:
    """(train_idx, val_idx): ``round(frac·n_c)`` of each class to val (≥1 if the class has ≥2
    examples, never all of it), chosen with a fixed seed. ``labels`` may be multi-label rows,
    in which case a plain random split is used."""
    rng = np.random.RandomState(seed)
    labels = list(labels)
    if labels and not np.isscalar(labels[0]) and np.ndim(labels[0]) > 0:
        perm = rng.permutation(len(labels))
        k = int(round(frac * len(labels)))
        return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    val = []
    for c in sorted(by_class):
        idx = by_class[c]
        k = int(round(frac * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        val.extend(rng.permutation(idx)[:k].tolist())
    vs = set(val)
    return [i for i in range(len(labels)) if i not in vs], sorted(val)
