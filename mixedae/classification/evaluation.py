"""Evaluation of a classifier or feature extractor, sharded over ranks: :func:`predict` (this
rank's outputs), :func:`evaluate` (every metric of :mod:`mixedae.classification.metrics`), and
the rank-summed metric reductions shared with k-NN."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mixedae.classification import metrics
from mixedae.runtime.distributed import all_gather_object, get_rank, get_world_size, unwrap
from mixedae.runtime.precision import amp_dtype, autocast


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
            workers: int = 0, amp: bool = True, on_batch: Callable[[int], None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, targets) of ``model`` (in eval mode) on this rank's share of ``dataset``: the
    examples ``rank, rank + world, ...`` (every example once over all ranks), on the CPU in
    fp32. ``on_batch(n)`` is called after each batch (e.g. a progress bar)."""
    model.eval()
    rank, world = get_rank(), get_world_size()
    part = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    outs, targets, dtype = [], [], amp_dtype("bf16" if amp else "none", device)
    for images, t in loader:
        with autocast(device, dtype):
            outs.append(model(images.to(device, non_blocking=True)).float().cpu())
        targets.append(t)
        if on_batch is not None:
            on_batch(len(t))
    if not outs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(outs), torch.cat(targets)


def single_label_stats(scores: torch.Tensor, targets: torch.Tensor, num_classes: int,
                       device: torch.device, with_loss: bool = True) -> dict:
    """Metrics of this rank's (scores, targets), summed over ranks: confusion matrix (its
    first top-1 column is the prediction), top-5 hits and the cross-entropy of ``scores``."""
    stats = torch.zeros(num_classes * num_classes + 2, dtype=torch.float64)
    if len(targets):
        top = scores.topk(min(5, num_classes), dim=1).indices
        stats[:-2] = torch.bincount(targets * num_classes + top[:, 0],
                                    minlength=num_classes ** 2).double()
        stats[-2] = (top == targets[:, None]).any(dim=1).sum().double()
        if with_loss:
            stats[-1] = F.cross_entropy(scores, targets, reduction="sum").double()
    if get_world_size() > 1:
        stats = stats.to(device)
        dist.all_reduce(stats)
        stats = stats.cpu()
    cm = stats[:-2].round().long().reshape(num_classes, num_classes).numpy()
    return metrics.single_label_report(cm, stats[-2].item(), stats[-1].item() if with_loss else None)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             multilabel: bool = False, workers: int = 0, amp: bool = True) -> dict:
    """Every metric of ``model`` on ``dataset`` (percent), sharded over ranks. Single-label:
    ``{"top1", "top5", "mean_per_class", "loss", "n", "per_class", "confusion"}``;
    multi-label: ``{"map11", "map", "n", "per_class_ap11", "per_class_ap"}`` (VOC2007 11-point
    and standard AP)."""
    logits, targets = predict(model, dataset, batch_size, device, workers, amp)
    if multilabel:
        return multilabel_stats(logits, targets)
    return single_label_stats(logits, targets, unwrap(model).num_classes, device)


def multilabel_stats(scores: torch.Tensor, targets: torch.Tensor) -> dict:
    """:func:`mixedae.classification.metrics.multilabel_report` over every rank's rows."""
    parts = all_gather_object((scores.numpy(), targets.float().numpy()))
    s = np.concatenate([p[0].reshape(-1, scores.shape[-1]) for p in parts])
    t = np.concatenate([p[1].reshape(-1, scores.shape[-1]) for p in parts])
    return metrics.multilabel_report(s, t)
