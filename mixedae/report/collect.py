"""Find what a run produced: the pretraining run (config, ``log.jsonl``, weights) and every
transfer result in the given folders. Nothing here trains or draws; everything tolerates
partial output (a missing file is a missing part, never an exception).

Transfer folders understood (the layouts the project's commands write):

* ``ade`` / ``coco``: an mmengine work dir of ``tools/train.py`` (``<ts>/vis_data/scalars.json``,
  validation records with ``mIoU`` or ``coco/bbox_mAP``), optionally ``test_metrics.json``
  written by ``tools/test.py --out`` (preferred: the metrics of the final checkpoint);
* ``finetune``: ``mixedae finetune`` output (``result.json`` with ``best_top1``, or a
  layer-decay sweep's ``sweep.json``);
* ``cls11``: ``mixedae transfer`` output (``results.csv`` / ``runs/<dataset>/result.json``);
* ``linprobe`` / ``knn``: one data folder ``OUT/<data>/`` of ``mixedae linprobe`` / ``knn``
  (``result.json`` with its ``method``); their ``OUT`` is searched one level down.

Which checkpoint a result comes from (:func:`checkpoint_of`) is the producers' own
:mod:`mixedae.runtime.provenance` record (``"pretrained"`` in result.json, ``pretrained.json``
of an mm work dir, a pipeline stage marker).

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

from mixedae.paper_numbers import CLS11_COLUMNS
from mixedae.runtime.errors import MixedAEError
from mixedae.runtime.provenance import is_record
from mixedae.runtime.run_logger import read_jsonl
from mixedae.runtime.torch_files import safetensors_metadata

KINDS = ("ade", "coco", "finetune", "cls11", "linprobe", "knn")
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

    def pretrain_config(self):
        """The run's ``PretrainConfig`` (None if absent or unreadable)."""
        from mixedae.pretrain.config import PretrainConfig
        try:
            return PretrainConfig.from_dict(self.config) if self.config else None
        except (MixedAEError, TypeError, ValueError):
            return None

    def weight_files(self) -> list[Path]:
        """The files a result's recorded checkpoint may name to be this run's."""
        return [f for f in (self.path / "model.safetensors", self.path / "checkpoint.pth")
                if f.is_file()]

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
    data: str | None = None       # the dataset it was measured on (folder name), if recorded
    data_is_paper: bool | None = None  # the paper's dataset of that table (None: unknown)
    checkpoint: dict | None = None  # runtime.provenance record, or {"path"} without digest


def _jsonl(path: Path, skipped: list[str] | None = None) -> list[dict]:
    """Records with a ``step`` of a JSON-lines file (none if it does not exist)."""
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path, skipped) if "step" in r]


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_run(path: str | Path, label: str | None = None) -> PretrainRun:
    """Read a pretraining run folder (``mixedae pretrain`` / ``mixedae demo`` output)."""
    path = Path(path)
    problems: list[str] = []
    records = _jsonl(path / "log.jsonl", problems)
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
    try:
        return safetensors_metadata(path)
    except MixedAEError:  # a half-written file: treated as missing metadata
        return {}


def is_run_dir(path: Path) -> bool:
    return any((path / n).is_file() for n in ("log.jsonl", "config.json", "model.safetensors"))


# ---- which checkpoint, which data --------------------------------------------------------
IN1K_VAL = 50_000  # ImageNet-1K validation images: how a fine-tune is recognised as IN-1K


def pipeline_marker(path: Path) -> dict:
    """The ``mixedae pipeline`` marker of the stage whose output folder is ``path`` ({})."""
    m = path.parent / "stages" / f"{path.name}.json"
    rec = _json(m) if m.is_file() else None
    return rec if isinstance(rec, dict) else {}


SCRATCH = {"path": None, "scratch": True}  # a producer recorded no checkpoint: random init


def _own(rec) -> dict | None:
    """A producer's ``pretrained`` entry as :func:`checkpoint_of` returns it."""
    return SCRATCH if rec is None else rec if isinstance(rec, dict) else \
        {"path": f"an unreadable record ({rec!r:.60})"}


def checkpoint_of(path: Path, recorded: list, fallback_path=None) -> dict | None:
    """The provenance of the result in ``path`` (``runtime.provenance`` records): the producers'
    own (``recorded``: the ``pretrained`` entries of its result files, all must agree; null:
    random initialisation), which alone decide when there are any; else the pipeline's stage
    marker (the run's weights it handed the stage, which an mm stage reads through the convert
    stage's copy); else ``path/pretrained.json`` (``tools/train.py``: what the work dir's
    training started from); else only the path the producer named (``{"path": ...}``, not
    enough to credit), else None."""
    if recorded:
        distinct = {r["sha256"] if is_record(r) else repr(r) for r in recorded}
        if len(distinct) > 1:
            return {"path": "several checkpoints (the results' records differ)"}
        return _own(recorded[0])
    marker = pipeline_marker(path).get("pretrained")
    if is_record(marker):
        return marker
    if (path / "pretrained.json").is_file():
        try:
            return _own(json.loads((path / "pretrained.json").read_text()))
        except (OSError, json.JSONDecodeError):
            return {"path": f"{path / 'pretrained.json'} (unreadable)"}
    return {"path": str(fallback_path)} if fallback_path else None


def _start_event(path: Path) -> dict:
    """The ``{"event": "start", ...}`` record of an engine's log.jsonl ({} if none)."""
    if not (path / "log.jsonl").is_file():
        return {}
    return next((r for r in read_jsonl(path / "log.jsonl") if r.get("event") == "start"), {})


def _data_root(path: Path) -> str | None:
    """The data folder of an mm work dir: the pipeline's signature, else the config dump."""
    data = pipeline_marker(path).get("signature", {}).get("data")
    if data:
        return Path(data).name
    for f in sorted(path.glob("*.py")) + sorted(path.glob("*/vis_data/config.py")):
        m = re.search(r"data_root\s*=\s*['\"]([^'\"]+)['\"]", f.read_text(errors="replace"))
        if m:
            return Path(m.group(1).rstrip("/")).name
    return None


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
        recs = _jsonl(f)
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
                          f"{how}; {train_iters} training iteration(s)" if train_iters else how,
                          data=_data_root(path), checkpoint=checkpoint_of(path, []))


# ---- classification --------------------------------------------------------------------------
def _finetune_data(run_dir: Path) -> tuple[str | None, bool | None, object]:
    """(data folder name, is it ImageNet-1K, checkpoint path) from the run's start record."""
    start = _start_event(run_dir)
    args = start.get("args") or {}
    data = args.get("data") or pipeline_marker(run_dir).get("signature", {}).get("data")
    n_val = start.get("n_val")
    return (Path(data).name if data else None,
            None if n_val is None else n_val == IN1K_VAL,
            (start.get("pretrained") or {}).get("path") or args.get("checkpoint"))


def finetune_result(path: Path) -> TransferResult | None:
    sweep = _json(path / "sweep.json") if (path / "sweep.json").is_file() else None
    if isinstance(sweep, dict) and sweep.get("best_layer_decay") is not None:
        best = sweep["results"][sweep["best_layer_decay"]]
        sub = path / f"ld{sweep['best_layer_decay']}"
        data, in1k, ck = _finetune_data(sub)
        return TransferResult("finetune", path, {"top1": float(best["best_top1"])},
                              f"best of a layer-decay sweep (ld {sweep['best_layer_decay']}), "
                              f"step {best.get('step')}", data, in1k,
                              checkpoint_of(path, [best["pretrained"]] if "pretrained" in best
                                            else [], ck))
    res = _json(path / "result.json") if (path / "result.json").is_file() else None
    if not isinstance(res, dict) or "best_top1" not in res:
        return None
    state = "finished" if res.get("finished") else "NOT finished (stopped early)"
    data, in1k, ck = _finetune_data(path)
    return TransferResult("finetune", path, {"top1": float(res["best_top1"])},
                          f"best top-1 over evaluations; step {res.get('step')}, {state}",
                          data, in1k, checkpoint_of(path, [res["pretrained"]]
                                                    if "pretrained" in res else [], ck))


def cls11_result(path: Path) -> TransferResult | None:
    if not (path / "runs").is_dir():  # a linprobe / knn OUT has a results.csv of its own
        return None
    scores = {}
    if (path / "results.csv").is_file():
        with open(path / "results.csv", newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) >= 2:
            scores = {h: float(v) for h, v in zip(rows[0][1:], rows[1][1:])  # the run's row;
                      if h in CLS11_COLUMNS and v.strip()}  # not the metric-name column
    summaries = [r for r in map(_json, sorted(path.glob("runs/*/result.json")))
                 if isinstance(r, dict) and r.get("column") and "test_score" in r]
    if not scores:
        scores = {r["column"]: float(r["test_score"]) for r in summaries}
    if not scores:
        return None
    named = {(r.get("settings") or {}).get("checkpoint") for r in summaries} - {None}
    recorded = ([r.get("pretrained", "not recorded") for r in summaries]  # all, or none
                if any("pretrained" in r for r in summaries) else [])
    ck = checkpoint_of(path, recorded, named.pop() if len(named) == 1 else None)
    n = sum(c in scores for c in CLS11_COLUMNS[:-1])
    note = f"{n}/11 datasets"
    if n < 11:
        note += " (the average is over those only: not comparable to the paper's)"
    return TransferResult("cls11", path, scores, note, data=f"{n}/11 datasets",
                          checkpoint=ck)


def frozen_result(path: Path) -> TransferResult | None:
    """One data folder of ``mixedae linprobe`` / ``mixedae knn`` (``path/result.json``)."""
    res = _json(path / "result.json") if (path / "result.json").is_file() else None
    if not isinstance(res, dict) or res.get("method") not in ("linprobe", "knn"):
        return None
    metric = res.get("metric", "score")
    if res["method"] == "knn":
        by_k = res.get("by_k") or {}
        metrics = {f"k={k}": float(s["test_score"]) for k, s in by_k.items()
                   if isinstance(s, dict) and finite(s.get("test_score"))}
        if not metrics:
            return None
        note = f"k-NN, {metric}, T {res.get('temperature')}, {res.get('feature')} feature"
        named = next((s.get("settings", {}).get("checkpoint") for s in by_k.values()
                      if isinstance(s, dict) and s.get("settings")), None)
    else:
        if not finite(res.get("test_score")):
            return None
        metrics = {"linprobe": float(res["test_score"])}
        state = "finished" if res.get("finished", True) else "NOT finished (stopped early)"
        note = (f"linear probe, {metric}, {res.get('feature')} feature; step "
                f"{res.get('step')}, {state}")
        named = (res.get("settings") or {}).get("checkpoint")
    return TransferResult(res["method"], path, metrics, note, data=res.get("dataset"),
                          checkpoint=checkpoint_of(path, [res["pretrained"]]
                                                   if "pretrained" in res else [], named))


def find_transfers(path: str | Path, depth: int = 1) -> list[TransferResult]:
    """Every transfer result in ``path`` (or, if it holds none, in its sub-folders)."""
    path = Path(path)
    found = [r for r in (mm_result(path), finetune_result(path), cls11_result(path),
                         frozen_result(path)) if r]
    if found or depth == 0:
        return found
    subs = sorted(p for p in path.iterdir() if p.is_dir() and not PREVIOUS.search(p.name))
    return [r for sub in subs for r in find_transfers(sub, depth - 1)]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
