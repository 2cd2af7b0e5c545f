"""Classification metrics: top-k and mean per-class accuracy from a confusion matrix, the VOC2007
devkit's 11-point AP, the standard AP, mean AP.

Which metric scores which dataset (the protocol of Ericsson et al., "How well do self-supervised
models transfer?", followed by the paper) is declared in :mod:`mixedae.classification.specs`;
every metric below is computed and stored for every dataset anyway.

Multi-label targets are 1 (positive), 0 (negative) or ``IGNORE`` (VOC "difficult": not
scored). The standard (non-interpolated) AP is scikit-learn's ``average_precision_score``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -1  # multi-label target value of a class that is only "difficult" (VOC): not scored

# every metric a result may hold: key → label used in tables
METRIC_LABELS = {"top1": "top-1 accuracy (%)", "top5": "top-5 accuracy (%)",
                 "mean_per_class": "mean per-class accuracy (%)",
                 "map11": "mAP, VOC2007 11-point (%)", "map": "mAP, standard AP (%)"}


def _matlab_colon(a: float, step: float, b: float) -> np.ndarray:
    """``a:step:b`` as MATLAB computes it: from both ends (``a + k·step`` for the first half,
    ``b - k·step`` for the second), which is not ``np.arange`` (0.6000000000000001)."""
    n = int(math.floor((b - a) / step + 1e-10))
    out = np.empty(n + 1)
    for k in range(n // 2 + 1):
        out[k], out[n - k] = a + k * step, b - k * step
    return out


# the recall thresholds of ``for t=0:0.1:1`` in VOCevalcls.m (VOC2007 devkit), bit for bit:
# 0, .1, .2, 0.30000000000000004, .4, .5, .6, .7, .8, .9, 1
VOC07_THRESHOLDS = _matlab_colon(0.0, 0.1, 1.0)


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
    """11-point interpolated AP of the VOC2007 devkit (``VOCevalcls.m``), exactly: rank by
    descending score (stable: ties keep their order, as MATLAB's ``sort``), precision and
    recall after every example, then the mean over ``t = 0:0.1:1`` of the max precision at
    ``rec >= t`` (no tolerance; ``t`` as MATLAB computes it, :data:`VOC07_THRESHOLDS`).
    Difficult examples (``IGNORE``) count neither as true nor false positives (dropping them
    is equivalent)."""
    scored = _scored(scores, targets)
    if scored is None:
        return float("nan")
    scores, pos = scored
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(pos[order]).astype(float)
    fp = np.cumsum(~pos[order]).astype(float)
    rec, prec = tp / pos.sum(), tp / (tp + fp)
    best_from = np.maximum.accumulate(prec[::-1])[::-1]  # max precision at ranks >= i
    first = np.searchsorted(rec, VOC07_THRESHOLDS, side="left")  # rec is non-decreasing
    return float(sum(best_from[i] if i < len(rec) else 0.0 for i in first) / 11.0)


def per_class_ap(scores: np.ndarray, targets: np.ndarray, eleven_point: bool) -> list[float]:
    fn = voc07_11point_ap if eleven_point else average_precision
    return [fn(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]


def mean_ap(scores: np.ndarray, targets: np.ndarray, eleven_point: bool) -> float:
    """Mean over the classes that have at least one scored positive."""
    aps = [a for a in per_class_ap(scores, targets, eleven_point) if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def multilabel_report(scores: np.ndarray, targets: np.ndarray) -> dict:
    """``{"map11", "map", "n", "per_class_ap11", "per_class_ap"}`` in percent (NaN → None
    for a class without positives)."""
    ap11 = per_class_ap(scores, targets, True)
    ap = per_class_ap(scores, targets, False)
    pct = lambda xs: [None if math.isnan(x) else 100 * x for x in xs]  # noqa: E731
    return {"map11": 100 * mean_ap(scores, targets, True),
            "map": 100 * mean_ap(scores, targets, False), "n": int(len(scores)),
            "per_class_ap11": pct(ap11), "per_class_ap": pct(ap)}


# ---- single-label -----------------------------------------------------------------------------
def confusion_matrix(pred, target, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    t = torch.as_tensor(target, dtype=torch.int64).reshape(-1)
    p = torch.as_tensor(pred, dtype=torch.int64).reshape(-1)
    cm = torch.bincount(t * num_classes + p, minlength=num_classes ** 2)
    return cm.reshape(num_classes, num_classes).numpy()


def per_class_accuracy(cm: np.ndarray) -> list[float | None]:
    """Recall of every class in percent (None for a class absent from the targets)."""
    support = cm.sum(axis=1)
    return [None if s == 0 else 100.0 * cm[i, i] / s for i, s in enumerate(support)]


def mean_per_class_accuracy(cm: np.ndarray) -> float:
    """Mean of the per-class accuracies over the classes present in the targets (Ericsson et
    al.'s metric for Aircraft, Caltech-101, Flowers and Pets; sklearn's balanced accuracy)."""
    acc = [a for a in per_class_accuracy(cm) if a is not None]
    return float(np.mean(acc)) if acc else float("nan")


def single_label_report(cm: np.ndarray, top5_correct: float, loss_sum: float | None = None
                        ) -> dict:
    """``{"top1", "top5", "mean_per_class", "loss", "n", "per_class", "confusion"}`` from a
    confusion matrix (percent; ``confusion`` is the matrix as nested lists)."""
    n = int(cm.sum())
    out = {"top1": 100.0 * float(np.trace(cm)) / max(n, 1),
           "top5": 100.0 * float(top5_correct) / max(n, 1),
           "mean_per_class": mean_per_class_accuracy(cm), "n": n,
           "per_class": per_class_accuracy(cm), "confusion": cm.astype(int).tolist()}
    if loss_sum is not None:
        out["loss"] = float(loss_sum) / max(n, 1)
    return out


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over classes, ignoring ``IGNORE`` entries."""
    mask = (targets != IGNORE).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0).float(),
                                              reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)
