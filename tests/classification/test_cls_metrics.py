"""The protocol metrics: VOC2007 11-point AP against a re-typed devkit loop (VOCevalcls.m) and
hand-computed cases that pin its exact ``rec >= t`` semantics; mean per-class accuracy,
confusion matrix and the rank-summed report against scikit-learn and hand computations."""
import math

import numpy as np
import pytest
import torch

from mixedae.classification import metrics as M
from mixedae.classification.evaluation import single_label_stats


# ---- a re-typed VOC2007 devkit, plain python floats (no numpy) -----------------------------
def matlab_colon(a, d, b):
    """MATLAB's ``a:d:b`` (its documented colonop: both halves computed from their own end)."""
    n = int(math.floor((b - a) / d + 0.5))
    out = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        out[k] = a + k * d
        out[n - k] = b - k * d
    return out


def devkit_ap(confidence, gt):
    """VOCevalcls.m (VOC2007): gt is 1 / -1 / 0 (difficult), line by line."""
    si = sorted(range(len(confidence)), key=lambda i: -confidence[i])  # [so,si]=sort(-conf)
    tp, fp, rec, prec = 0, 0, [], []
    npos = sum(1 for g in gt if g > 0)
    for i in si:
        tp += gt[i] > 0                    # tp=cumsum(gt(si)>0)
        fp += gt[i] < 0                    # fp=cumsum(gt(si)<0)
        rec.append(tp / npos)              # rec=tp/sum(gt>0)
        prec.append(tp / (fp + tp) if fp + tp else float("nan"))  # prec=tp./(fp+tp)
    ap = 0.0
    for t in matlab_colon(0, 0.1, 1):      # for t=0:0.1:1
        ps = [p for r, p in zip(rec, prec) if r >= t and not math.isnan(p)]
        ap += (max(ps) if ps else 0.0) / 11  # p=max(prec(rec>=t)); if isempty(p) p=0
    return ap


def test_thresholds_are_matlabs():
    assert list(M.VOC07_THRESHOLDS) == matlab_colon(0, 0.1, 1)
    assert M.VOC07_THRESHOLDS[3] == 0.1 * 3 > 3 / 10  # 0.30000000000000004
    assert M.VOC07_THRESHOLDS[6] == 0.6 == 3 / 5 and M.VOC07_THRESHOLDS[7] == 0.7 == 7 / 10
    assert np.arange(0, 1.1, 0.1)[6] > 0.6  # why np.arange is not the devkit


def test_voc07_equals_retyped_devkit_on_random_cases():
    rng = np.random.RandomState(0)
    differs_from_tolerant = 0
    for trial in range(400):
        n = int(rng.randint(2, 40))
        npos = int(rng.choice([1, 2, 3, 5, 10, rng.randint(1, n + 1)]))
        npos = min(npos, n)
        gt = np.full(n, -1)
        gt[rng.permutation(n)[:npos]] = 1
        gt[(gt == -1) & (rng.rand(n) < 0.15)] = 0  # difficult
        scores = rng.randn(n)
        if trial % 3 == 0:
            scores = np.round(scores, 1)  # ties
        ref = devkit_ap(scores.tolist(), gt.tolist())
        targets = np.where(gt == 0, M.IGNORE, (gt > 0).astype(int))
        assert M.voc07_11point_ap(scores, targets) == pytest.approx(ref, abs=1e-12), trial
        differs_from_tolerant += abs(ref - _tolerant(scores, targets)) > 1e-9
    assert differs_from_tolerant > 0  # the cases exercise the exact threshold semantics


def _tolerant(scores, targets):
    """The old implementation's semantics (rec >= t - 1e-12), for contrast."""
    keep = targets != M.IGNORE
    s, pos = scores[keep], targets[keep] > 0
    order = np.argsort(-s, kind="stable")
    tp, fp = np.cumsum(pos[order]), np.cumsum(~pos[order])
    rec, prec = tp / pos.sum(), tp / (tp + fp)
    return sum(prec[rec >= t - 1e-12].max() if (rec >= t - 1e-12).any() else 0
               for t in np.arange(0, 1.1, 0.1)) / 11


def test_voc07_exact_threshold_cases_by_hand():
    # 10 positives: +++ --- +++++++ → rec 0.3 (= 3/10 < 0.1*3) never reaches t = 0.1*3, so
    # t ∈ {0, .1, .2} → 1 and the 8 others → max prec at rec ≥ .4 = 10/13
    y = np.array([1, 1, 1, 0, 0, 0] + [1] * 7)
    s = -np.arange(len(y), dtype=float)
    assert M.voc07_11point_ap(s, y) == pytest.approx((3 + 8 * 10 / 13) / 11, abs=1e-15)
    # 5 positives: +++ --- ++ → rec 0.6 = 3/5 does reach t = 0.6 (MATLAB's value):
    # t ∈ {0, ..., .6} → 1, t ∈ {.7, .8, .9, 1} → 5/8
    y = np.array([1, 1, 1, 0, 0, 0, 1, 1])
    s = -np.arange(len(y), dtype=float)
    assert M.voc07_11point_ap(s, y) == pytest.approx((7 + 4 * 5 / 8) / 11, abs=1e-15)
    # no positive → NaN (left out of the mean), difficult-only positives too
    assert math.isnan(M.voc07_11point_ap(np.array([1.0, 2.0]), np.array([0, M.IGNORE])))
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert M.mean_ap(scores, np.array([[1, 0], [0, 0]]), True) == 1.0


# ---- single-label -------------------------------------------------------------------------
def test_mean_per_class_accuracy_by_hand_and_sklearn():
    t = [0, 0, 0, 0, 1, 1, 2]
    p = [0, 0, 0, 1, 1, 0, 2]
    cm = M.confusion_matrix(p, t, 4)  # class 3 absent from targets: not averaged
    assert cm.tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert M.per_class_accuracy(cm) == [75.0, 50.0, 100.0, None]
    assert M.mean_per_class_accuracy(cm) == pytest.approx(100 * (0.75 + 0.5 + 1) / 3)
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix
    rng = np.random.RandomState(1)
    for _ in range(20):
        c = int(rng.randint(2, 12))
        t, p = rng.randint(0, c, 80), rng.randint(0, c, 80)
        cm = M.confusion_matrix(p, t, c)
        assert (cm == confusion_matrix(t, p, labels=range(c))).all()
        assert M.mean_per_class_accuracy(cm) == pytest.approx(
            100 * balanced_accuracy_score(t, p), abs=1e-9)


def test_single_label_stats_from_scores():
    rng = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 7, generator=rng)
    targets = torch.randint(0, 7, (50,), generator=rng)
    r = single_label_stats(scores, targets, 7, torch.device("cpu"))
    pred = scores.argmax(1)
    assert r["top1"] == pytest.approx(100 * (pred == targets).float().mean().item())
    top5 = (scores.topk(5, 1).indices == targets[:, None]).any(1).float().mean().item()
    assert r["top5"] == pytest.approx(100 * top5)
    assert r["loss"] == pytest.approx(torch.nn.functional.cross_entropy(scores, targets).item(),
                                      rel=1e-6)
    assert r["n"] == 50 and np.asarray(r["confusion"]).sum() == 50
    from sklearn.metrics import balanced_accuracy_score
    assert r["mean_per_class"] == pytest.approx(
        100 * balanced_accuracy_score(targets.numpy(), pred.numpy()), abs=1e-9)
