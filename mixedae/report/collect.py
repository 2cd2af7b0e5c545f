"""Find what a run produced: the pretraining run (config, ``log.jsonl``, weights) and every
transfer result in the given folders. Nothing here trains or draws; everything tolerates
partial output (a missing file is a missing part, never an exception).

Transfer folders understood (the layouts the project's commands write):

* ``ade`` / ``coco``: an mmengine work dir of ``tools/train.py`` (``<ts>/vis_data/scalars.json``,
  validation records with ``mIoU`` or ``coco/bbox_mAP``), optionally ``test_metrics.json``
  written by ``tools/test.py --out`` (preferred: the metrics of the final checkpoint);
* ``finetune``: ``mixedae finetune`` output (``result.json`` with ``best_top1``, or a
  layer-decay sweep's ``sweep.json``);
* ``cls11``: ``mixedae transfer`` output (``results.csv`` / ``runs/<dataset>/result.json``).

A folder that holds none of these is searched one level down (a ``mixedae pipeline`` output;
its set-aside ``<stage>.prev-N`` folders are ignored).
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from mixedae.report.paper import CLS11_COLUMNS

KINDS = ("ade", "coco", "finetune", "cls11")
PREVIOUS = re.compile(r"\.prev-\d+$")  # outputs a pipeline set aside when a stage re-ran


@dataclass
class PretrainRun:
    path: Path
    config: dict | None           # config.json (or the weights' metadata); None if absent
    records: list[dict]           # log.jsonl lines (possibly empty)
    weights: Path | None          # model.safetensors if present
    step: int | None              # last step with weights (metadata) or logged
    problems: list[str] = field(default_factory=list)
    label: str | None = None      # shown name (default: the folder name)

    @property
    def name(self) -> str:
        return self.label or self.path.resolve().name

    def describe(self) -> str:
        c = self.config or {}
        if not c:
            return f"{self.name} (no config.json)"
        what = (f"MAE (keep ratio {c.get('mix_ratio')}"
                f"{', HomoCon' if c.get('homo_con') else ''})" if c.get("mixing") == "none" else
                f"MixedAE ({c.get('mixing')} mixing, {c.get('attention')} attention"
                f"{', HomoCon' if c.get('homo_con') else ''})")
        ratio = "" if c.get("mixing") == "none" else f", r = {c.get('mix_ratio')}"
        return (f"{self.name}: {what}, ViT-{c.get('model')}/{c.get('patch_size')} at "
                f"{c.get('img_size')} px{ratio}, batch {c.get('batch_size')}, "
                f"{c.get('epochs')} epochs scheduled")


@dataclass
class TransferResult:
    kind: str                     # one of KINDS
    path: Path
    metrics: dict                 # column key → value in % (see paper.DENSE_COLUMNS, CLS11)
    note: str = ""                # how it was obtained (iterations, split, ...)


def _jsonl(path: Path) -> tuple[list[dict], list[str]]:
    recs, bad = [], []
    if not path.is_file():
        return recs, bad
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad.append(f"{path}:{i} is not JSON (skipped)")
            continue
        if isinstance(rec, dict) and "step" in rec:
            recs.append(rec)
    return recs, bad


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_run(path: str | Path, label: str | None = None) -> PretrainRun:
    """Read a pretraining run folder (``mixedae pretrain`` / ``mixedae demo`` output)."""
    path = Path(path)
    records, problems = _jsonl(path / "log.jsonl")
    config = _json(path / "config.json") if (path / "config.json").is_file() else None
    weights = path / "model.safetensors"
    weights = weights if weights.is_file() else None
    step = records[-1]["step"] if records else None
    if weights is not None:
        meta = _metadata(weights)
        if config is None and meta.get("config"):
            config = json.loads(meta["config"])  # written by our own checkpoint code
        if meta.get("step", "").isdigit():
            step = int(meta["step"])
    if config is not None and not isinstance(config, dict):
        problems.append(f"{path / 'config.json'} is not a JSON object")
        config = None
    return PretrainRun(path, config, records, weights, step, problems, label)


def _metadata(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # a half-written file: treated as missing metadata
        return {}


def is_run_dir(path: Path) -> bool:
    return any((path / n).is_file() for n in ("log.jsonl", "config.json", "model.safetensors"))


# ---- mm work dirs ----------------------------------------------------------------------------
_SEG = {"mIoU": "mIoU", "mAcc": "mAcc", "aAcc": "aAcc"}
_DET = {"coco/bbox_mAP": "AP_bb", "coco/bbox_mAP_50": "AP50_bb", "coco/bbox_mAP_75": "AP75_bb",
        "coco/segm_mAP": "AP_mk", "coco/segm_mAP_50": "AP50_mk", "coco/segm_mAP_75": "AP75_mk"}


def _mm_metrics(rec: dict) -> tuple[str, dict] | None:
    if "mIoU" in rec:
        return "ade", {v: float(rec[k]) for k, v in _SEG.items() if k in rec}
    if "coco/bbox_mAP" in rec:  # mmdet's CocoMetric reports fractions
        return "coco", {v: 100.0 * float(rec[k]) for k, v in _DET.items() if k in rec
                        and float(rec[k]) >= 0}
    return None


def mm_result(path: Path) -> TransferResult | None:
    scalars = sorted(path.glob("*/vis_data/scalars.json"))
    train_iters, val = 0, None
    for f in scalars:
        recs, _ = _jsonl(f)
        train_iters = max([train_iters] + [r["step"] for r in recs if "loss" in r])
        val = next((m for m in map(_mm_metrics, reversed(recs)) if m), None) or val
    test = _json(path / "test_metrics.json") if (path / "test_metrics.json").is_file() else None
    found = _mm_metrics(test) if isinstance(test, dict) else None
    if found:
        how = "tools/test.py on the final checkpoint"
    elif val:
        found, how = val, "last validation of tools/train.py"
    else:
        return None
    kind, metrics = found
    return TransferResult(kind, path, metrics,
                          f"{how}; {train_iters} training iteration(s)" if train_iters else how)


# ---- classification --------------------------------------------------------------------------
def finetune_result(path: Path) -> TransferResult | None:
    sweep = _json(path / "sweep.json") if (path / "sweep.json").is_file() else None
    if isinstance(sweep, dict) and sweep.get("best_layer_decay") is not None:
        best = sweep["results"][sweep["best_layer_decay"]]
        return TransferResult("finetune", path, {"top1": float(best["best_top1"])},
                              f"best of a layer-decay sweep (ld {sweep['best_layer_decay']}), "
                              f"step {best.get('step')}")
    res = _json(path / "result.json") if (path / "result.json").is_file() else None
    if not isinstance(res, dict) or "best_top1" not in res:
        return None
    state = "finished" if res.get("finished") else "NOT finished (stopped early)"
    return TransferResult("finetune", path, {"top1": float(res["best_top1"])},
                          f"best top-1 over evaluations; step {res.get('step')}, {state}")


def cls11_result(path: Path) -> TransferResult | None:
    scores = {}
    if (path / "results.csv").is_file():
        with open(path / "results.csv", newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) >= 2:
            scores = {h: float(v) for h, v in zip(rows[0][1:], rows[1][1:])  # the run's row;
                      if h in CLS11_COLUMNS and v.strip()}  # not the metric-name column
    else:
        for f in sorted(path.glob("runs/*/result.json")):
            r = _json(f)
            if isinstance(r, dict) and r.get("column") and "test_score" in r:
                scores[r["column"]] = float(r["test_score"])
    if not scores:
        return None
    n = sum(c in scores for c in CLS11_COLUMNS[:-1])
    note = f"{n}/11 datasets"
    if n < 11:
        note += " (the average is over those only: not comparable to the paper's)"
    return TransferResult("cls11", path, scores, note)


def find_transfers(path: str | Path, depth: int = 1) -> list[TransferResult]:
    """Every transfer result in ``path`` (or, if it holds none, in its sub-folders)."""
    path = Path(path)
    found = [r for r in (mm_result(path), finetune_result(path), cls11_result(path)) if r]
    if found or depth == 0:
        return found
    subs = sorted(p for p in path.iterdir() if p.is_dir() and not PREVIOUS.search(p.name))
    return [r for sub in subs for r in find_transfers(sub, depth - 1)]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
