"""Single-image inference with the OpenMMLab APIs on this project's configs and checkpoints
(what ``tools/infer.py`` runs; see docs/transfer.md, "Inference"):

* mmseg: ``init_model(cfg, checkpoint, device)`` → ``inference_model(model, image)`` →
  ``show_result_pyplot(..., out_file=...)`` (the prediction blended over the image);
* mmdet: ``init_detector(cfg, checkpoint, device)`` → ``inference_detector(model, image)`` →
  ``DetLocalVisualizer.add_datasample(..., out_file=...)`` (boxes and masks above a score).

The config is first made to build the model the checkpoint holds
(:func:`mixedae.mm.pretrained.match_checkpoint`: what ``--match-pretrained`` / ``--cfg-options``
changed at training time), adapted to one process (SyncBN → BN) and the backbone's
``init_cfg`` is cleared: the weights come from the checkpoint, which must cover the whole model.
Images of any size work: the mmdet configs pad to a multiple of 32 (``pad_size_divisor``), the
mmseg ones at test time too (``data_preprocessor.test_cfg.size_divisor``; mmseg crops the
padding off the prediction).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from mmengine.config import Config

from mixedae.mm.pretrained import match_checkpoint
from mixedae.mm.runner import adapt_to_machine, check_full_checkpoint, detect_task
from mixedae.runtime.errors import ConfigError


def _prepare(cfg: Config) -> str:
    task = detect_task(cfg)
    cfg.default_scope = task
    adapt_to_machine(cfg, distributed=False)
    bb = cfg.model.get("backbone") or {}
    bb.pop("pretrained", None)
    if "init_cfg" in bb:
        bb["init_cfg"] = None
    importlib.import_module("mixedae.mm")  # registers MixedAEViT, SimpleFPN
    return task


def _segment(cfg, checkpoint, image, out, device, opacity) -> dict:
    from mmseg.apis import inference_model, init_model, show_result_pyplot
    model = init_model(cfg, checkpoint, device=device)
    check_full_checkpoint(model, checkpoint)
    result = inference_model(model, image)
    show_result_pyplot(model, image, result, opacity=opacity, draw_gt=False, show=False,
                       out_file=out)
    labels = result.pred_sem_seg.data.cpu().numpy().ravel()
    ids, counts = np.unique(labels, return_counts=True)
    classes = model.dataset_meta["classes"]
    top = sorted(zip(counts, ids), reverse=True)[:5]
    return dict(task="mmseg", shape=tuple(result.pred_sem_seg.data.shape[-2:]),
                classes={classes[i]: round(c / labels.size, 4) for c, i in top})


def _detect(cfg, checkpoint, image, out, device, score_thr) -> dict:
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.visualization import DetLocalVisualizer
    model = init_detector(cfg, checkpoint, device=device)
    check_full_checkpoint(model, checkpoint)
    result = inference_detector(model, image)
    vis = DetLocalVisualizer(name=f"mixedae_infer_{id(result)}")
    vis.dataset_meta = model.dataset_meta
    vis.add_datasample("prediction", mmcv.imread(image, channel_order="rgb"), data_sample=result,
                       draw_gt=False, show=False, out_file=out, pred_score_thr=score_thr)
    pred = result.pred_instances
    keep = pred.scores >= score_thr
    classes = model.dataset_meta["classes"]
    return dict(task="mmdet", detections=int(keep.sum()), total=len(pred),
                labels=sorted({classes[int(i)] for i in pred.labels[keep]}))


def infer(config: str | Config, checkpoint: str, image: str, out: str, device: str = "cpu",
          score_thr: float = 0.3, opacity: float = 0.5) -> dict:
    """Predict ``image``, write the overlay to ``out``; returns a short summary dict."""
    for p, what in ((checkpoint, "checkpoint"), (image, "image")):
        if not Path(p).is_file():
            raise ConfigError(f"{what} not found: {p}")
    if not str(out).lower().endswith((".png", ".jpg", ".jpeg")):
        raise ConfigError(f"--out {out}: give an image file name (.png or .jpg)")
    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    match_checkpoint(cfg, checkpoint)
    task = _prepare(cfg)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if task == "mmseg":
        return _segment(cfg, checkpoint, image, out, device, opacity)
    return _detect(cfg, checkpoint, image, out, device, score_thr)
