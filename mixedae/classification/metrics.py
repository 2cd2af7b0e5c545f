"""Classification metrics: top-k accuracy, VOC2007 11-point AP and standard AP, mean AP.

Multi-label targets are 1 (positive), 0 (negative) or ``IGNORE`` (VOC "difficult": not
scored). The standard (non-interpolated) AP is scikit-learn's ``average_precision_score``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -1  # multi-label target value of a class that is only "difficult" (VOC): not scored


def _scored(scores, targets):
    """Drop ``IGNORE`` entries → (scores, positive mask), or None if no positive is left."""
    scores, targets = np.asarray(scores, float), np.asarray(targets)
    keep = targets != IGNORE
    scores, pos = scores[keep], targets[keep] > 0
    return None if pos.sum() == 0 else (scores, pos)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Standard AP, Σ_n (R_n − R_{n−1}) P_n over distinct score thresholds (sklearn's)."""
    from sklearn.metrics import average_precision_score
    scored = _scored(scores, targets)
    return float("nan") if scored is None else float(average_precision_score(scored[1],
                                                                                 scored[0]))


def voc07_11point_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """11-point interpolated AP of the VOC2007 devkit (``VOCevalcls.m`` / ``VOCap`` 2007):
    rank by descending score, prec/rec after every example, mean over t ∈ {0, .1, …, 1} of
    max precision at recall ≥ t."""
    scored = _scored(scores, targets)
    if scored is None:
        return float("nan")
    scores, pos = scored
    order = np.argsort(-scores, kind="mergesort")
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
