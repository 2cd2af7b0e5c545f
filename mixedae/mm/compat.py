"""Workarounds for mmengine 0.10.7 / mmcv 2.1 / mmdet 3.3 / mmseg 1.2.2 on torch 2.14 + numpy 2,
applied once when ``mixedae.mm`` is imported. Each one is tested in tests/mm/test_stack.py.

1. ``torch.load`` defaults to ``weights_only=True`` (torch >= 2.6) and mmengine 0.10.7 does not
   pass ``weights_only`` (fixed only on mmengine main, PR #1670): a checkpoint written by
   mmengine's Runner holds the message hub (``HistoryBuffer`` objects with numpy arrays and
   numpy scalars) and cannot be loaded back, so ``resume`` and ``load_from`` of our own runs
   fail. We allow-list exactly the types such checkpoints contain
   (``torch.serialization.add_safe_globals``) and keep ``weights_only=True``:
   a downloaded checkpoint still cannot run code on load. ``HistoryBuffer`` pickles its
   statistics methods as ``getattr(HistoryBuffer, 'mean')``; instead of allow-listing the
   builtin ``getattr`` (which would allow arbitrary attribute access) the name
   ``builtins.getattr`` is mapped to a function that only returns HistoryBuffer's own
   statistics methods.
2. mmseg's ``SegLocalVisualizer._draw_sem_seg`` draws the class labels with ``cv2.rectangle``
   on ``np.zeros_like(image)``, which keeps the image's memory layout; mmseg's own
   ``tools/analysis_tools/browse_dataset.py`` passes ``inputs.permute(1, 2, 0).numpy()[..., [2, 1, 0]]``
   (not C-contiguous) and OpenCV (4.14 and 5.0 alike, numpy 2) refuses it: "Layout of the
   output array img is incompatible with cv::Mat". The image is made C-contiguous first (a
   copy only when it is not), so browse_dataset runs with our configs.
3. Nothing else was needed on the code paths we run (UperNet/FCN, Cascade Mask R-CNN, IoUMetric,
   CocoMetric with pycocotools on numpy 2.4); tests/mm/test_stack.py and the end-to-end tests
   exercise them, so a regression shows up there.
"""
from __future__ import annotations

import pickle

import numpy as np
import torch

from mixedae.runtime.torch_files import numpy_globals

_APPLIED = False


def _history_buffer_getattr(obj, name: str):
    """Stand-in for ``getattr`` during weights-only unpickling: only HistoryBuffer's
    registered statistics methods may be looked up."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and (
            name in HistoryBuffer._statistics_methods or name in ("min", "max", "mean",
                                                                   "current")):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"weights-only load: getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}) "
        f"is not allowed (only mmengine HistoryBuffer statistics methods are)")


def safe_globals() -> list:
    """The globals mmengine checkpoints (meta + message hub) need, nothing more: numpy's
    (:func:`mixedae.runtime.torch_files.numpy_globals`), HistoryBuffer and its getattr."""
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_getattr, "builtins.getattr"),
            *((obj, name) for name, obj in numpy_globals().items())]


def _contiguous_sem_seg_drawing() -> None:
    from mmseg.visualization import SegLocalVisualizer
    original = SegLocalVisualizer._draw_sem_seg

    def _draw_sem_seg(self, image, *args, **kwargs):
        return original(self, np.ascontiguousarray(image), *args, **kwargs)
    _draw_sem_seg.__wrapped__ = original
    SegLocalVisualizer._draw_sem_seg = _draw_sem_seg


def apply() -> None:
    """Idempotent."""
    global _APPLIED
    if _APPLIED:
        return
    torch.serialization.add_safe_globals(safe_globals())
    _contiguous_sem_seg_drawing()
    _APPLIED = True
