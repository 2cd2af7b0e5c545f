"""Ground-truth "models" for the metric-path tests: each returns every test image's own
annotations as its prediction (optionally perturbed), so the real path — config dataloader →
mmengine test loop → evaluator (mmseg IoUMetric; mmdet CocoMetric with pycocotools against the
annotation file) → tools/test.py — must report perfect scores, and known perturbations must
report the numbers computed independently in the tests.

Registered in mmseg's / mmdet's MODELS on import (``custom_imports=['mm_oracle']`` for a
subprocess with ``tests/`` on PYTHONPATH)."""
from __future__ import annotations

import torch
from mmdet.registry import MODELS as DET_MODELS
from mmengine.model import BaseModel
from mmengine.structures import InstanceData, PixelData
from mmseg.registry import MODELS as SEG_MODELS


class _Oracle(BaseModel):
    def __init__(self, **kwargs):
        super().__init__(data_preprocessor=dict(type="BaseDataPreprocessor"))

    def forward(self, inputs, data_samples=None, mode="tensor"):
        if mode != "predict":
            raise ValueError("ground-truth oracle: predict only")
        return [self.predict_one(ds) for ds in data_samples]


@SEG_MODELS.register_module(force=True)
class GroundTruthSegmentor(_Oracle):
    """pred_sem_seg = gt_sem_seg, with label ``relabel[0]`` turned into ``relabel[1]``."""

    def __init__(self, relabel: tuple[int, int] | None = None, **kwargs):
        super().__init__()
        self.relabel = relabel

    def predict_one(self, ds):
        pred = ds.gt_sem_seg.data.clone()
        if self.relabel is not None:
            pred[pred == self.relabel[0]] = self.relabel[1]
        ds.pred_sem_seg = PixelData(data=pred)
        return ds


@DET_MODELS.register_module(force=True)
class GroundTruthDetector(_Oracle):
    """pred_instances = gt_instances (score 1). The test pipelines load annotations after
    ``Resize``, so they are already in original-image coordinates, where a detector's
    predictions are rescaled to (checked). ``shift``: move every box right by that fraction of
    its width; ``empty``: predict nothing."""

    def __init__(self, shift: float = 0.0, empty: bool = False, **kwargs):
        super().__init__()
        self.shift, self.empty = shift, empty

    def predict_one(self, ds):
        gt = ds.gt_instances
        boxes = gt.bboxes.tensor.clone() if hasattr(gt.bboxes, "tensor") else gt.bboxes.clone()
        h, w = ds.metainfo["ori_shape"]
        if tuple(gt.masks.masks.shape[-2:]) != (h, w):
            raise ValueError("ground-truth oracle: annotations are not at the original size")
        if self.shift:
            dx = self.shift * (boxes[:, 2] - boxes[:, 0])
            boxes[:, 0] += dx
            boxes[:, 2] += dx
        pred = InstanceData(bboxes=boxes, scores=torch.ones(len(boxes)), labels=gt.labels,
                            masks=gt.masks.to_tensor(torch.bool, "cpu"))
        ds.pred_instances = pred[:0] if self.empty else pred
        return ds
