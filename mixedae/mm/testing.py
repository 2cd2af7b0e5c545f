"""Test-time options of ``tools/test.py``, as mmseg's / mmdet's own ``tools/test.py`` define
them, validated before any work:

* ``--out``: the PREDICTIONS for offline analysis. mmdet: a ``.pkl`` (``DumpDetResults``, what
  mmdet's analysis tools read); mmseg: a folder of label PNGs in the dataset's label space
  (``IoUMetric(output_dir=...)``, what mmseg's tools read), or a ``.pkl`` of the raw
  predictions (mmengine ``DumpResults``);
* ``--show-dir DIR``: painted predictions (and ground truth) for EVERY test image under DIR
  (mmdet: ``DIR/<image name>``; mmseg: ``DIR/vis_data/vis_image/``; mmseg's own tool keeps
  its hook's interval of 50 and paints every 50th); ``--show``: open a window;
* ``--tta`` (mmseg): the config's ``tta_pipeline`` + ``tta_model`` (``SegTTAModel``);
* the metrics go to a separate JSON (``--metrics-out``), and an evaluator that yields no
  metrics at all (e.g. a detector with no box above ``score_thr``) is an error.
"""
from __future__ import annotations

import json
import math
import os.path as osp
from pathlib import Path

from mmengine.config import Config, ConfigDict

from mixedae.runtime.errors import ConfigError


def _evaluators(cfg: Config) -> list:
    ev = cfg.get("test_evaluator")
    if ev is None:
        raise ConfigError("the config has no test_evaluator")
    return list(ev) if isinstance(ev, (list, tuple)) else [ev]


def configure_test(cfg: Config, task: str, out: str | None = None, show_dir: str | None = None,
                   show: bool = False, wait_time: float = 2.0, tta: bool = False) -> None:
    """Apply the test-time options to ``cfg`` (ConfigError for a bad combination)."""
    evals = _evaluators(cfg)
    if out is not None:
        pkl = out.endswith((".pkl", ".pickle"))
        if task == "mmdet":
            if not pkl:
                raise ConfigError(f"--out {out}: mmdet predictions are a pickle; end it in .pkl")
            evals.append(dict(type="DumpDetResults", out_file_path=out))
        elif pkl:
            evals.append(dict(type="DumpResults", out_file_path=out))
        else:
            iou = [e for e in evals if e.get("type") == "IoUMetric"]
            if not iou:
                raise ConfigError(f"--out {out}: a folder of label PNGs needs an IoUMetric "
                                  f"test_evaluator (or give a .pkl path)")
            iou[0]["output_dir"] = osp.abspath(out)
        cfg.test_evaluator = evals if len(evals) > 1 else evals[0]
    if show or show_dir:
        hook = cfg.get("default_hooks", {}).get("visualization")
        if hook is None:
            raise ConfigError("--show/--show-dir need default_hooks.visualization in the config")
        hook.update(draw=True, interval=1)   # mmseg's hook draws every 50th by default
        if show:
            hook.update(show=True, wait_time=wait_time)
        if show_dir and task == "mmdet":
            hook["test_out_dir"] = osp.abspath(show_dir)
        elif show_dir:
            cfg.visualizer["save_dir"] = osp.abspath(show_dir)
    if tta:
        if task != "mmseg":
            raise ConfigError("--tta is supported for mmseg configs (SegTTAModel)")
        missing = [k for k in ("tta_model", "tta_pipeline") if k not in cfg]
        if missing:
            raise ConfigError(f"--tta: the config defines no {' / '.join(missing)}")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)


def check_metrics(metrics: dict | None, cfg: Config) -> dict[str, float]:
    """The metrics as floats; ConfigError when the evaluator produced none (the config's
    evaluator or threshold, or the checkpoint, gives nothing to measure)."""
    if not metrics:
        kinds = ", ".join(str(e.get("type")) for e in _evaluators(cfg))
        thr = cfg.get("model", {}).get("test_cfg", {})
        thr = (thr.get("rcnn") or {}).get("score_thr") if isinstance(thr, dict) else None
        hint = (f"; the model made no prediction above model.test_cfg.rcnn.score_thr={thr}"
                f" (an untrained detector often does not)" if thr is not None else "")
        raise ConfigError(f"the test evaluator ({kinds}) produced no metrics{hint}")
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue   # e.g. mmdet's per-class table strings
    return out


def write_metrics(metrics: dict[str, float], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({k: (v if math.isfinite(v) else None)
                                      for k, v in metrics.items()}, indent=1))
