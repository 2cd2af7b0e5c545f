"""The OpenMMLab stack on torch 2.14 / numpy 2: imports, compiled mmcv ops against
torchvision, and the checkpoint (weights_only) workaround of mixedae.mm.compat.

Import failures FAIL here on purpose: the set-up script always installs the stack."""
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

import mixedae.mm  # noqa: F401  (applies the workarounds)

from conftest import REPO


def test_imports_and_versions():
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    from mmcv import _ext  # noqa: F401  (compiled ops present)
    assert mmcv.__version__ == "2.1.0"
    assert mmdet.__version__ == "3.3.0" and mmseg.__version__ == "1.2.2"
    assert mmengine.__version__.startswith("0.10.")
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401


def test_mmcv_nms_matches_torchvision():
    from mmcv.ops import nms
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    wh = torch.rand(300, 2, generator=g) * 60 + 4
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(300, generator=g)
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    ref = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep.sort().values, ref.sort().values)
    assert torch.allclose(dets[:, 4].sort().values, scores[ref].sort().values)


@pytest.mark.parametrize("aligned", [True, False])
def test_mmcv_roi_align_matches_torchvision(aligned):
    from mmcv.ops import RoIAlign
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 40, 56, generator=g)
    xy = torch.rand(30, 2, generator=g) * 300
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(), xy,
                      xy + torch.rand(30, 2, generator=g) * 120 + 1], 1)
    ours = RoIAlign((7, 7), spatial_scale=1 / 8, sampling_ratio=2, aligned=aligned)(feats, rois)
    ref = torchvision.ops.roi_align(feats, rois, (7, 7), spatial_scale=1 / 8, sampling_ratio=2,
                                    aligned=aligned)
    assert torch.allclose(ours, ref, atol=1e-5)


def _toy_runner(work_dir, max_iters, resume=False):
    import torch.nn as nn
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, inputs, mode="tensor"):
            out = self.lin(torch.stack(inputs) if isinstance(inputs, list) else inputs)
            return dict(loss=(out ** 2).mean()) if mode == "loss" else list(out)

    class NumpyMetric(BaseMetric):   # numpy scalars land in the message hub / checkpoint
        def process(self, data_batch, data_samples):
            self.results.extend(np.float64(1.0) for _ in data_samples)

        def compute_metrics(self, results):
            return dict(acc=np.float64(np.mean(results)))

    data = [dict(inputs=torch.randn(2)) for _ in range(8)]
    loader = dict(dataset=data, sampler=dict(type="DefaultSampler", shuffle=False),
                  batch_size=2, collate_fn=dict(type="default_collate"))
    return Runner(
        model=Toy(), work_dir=str(work_dir), train_dataloader=loader, val_dataloader=loader,
        val_evaluator=[NumpyMetric()], resume=resume,
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2), val_cfg=dict(),
        param_scheduler=[dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=2)],
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
        experiment_name=f"toy_{work_dir.name}_{max_iters}_{int(resume)}")


def test_mmengine_checkpoint_resume_with_weights_only(tmp_path):
    """save_checkpoint (real Runner, numpy metric + message hub) -> load_checkpoint / resume."""
    from mmengine.runner import load_checkpoint
    r = _toy_runner(tmp_path, 2)
    r.train()
    ckpt = tmp_path / "iter_2.pth"
    assert ckpt.is_file()
    raw = torch.load(str(ckpt), map_location="cpu", weights_only=True)   # default torch path
    assert raw["meta"]["iter"] == 2 and "message_hub" in raw
    load_checkpoint(r.model, str(ckpt), map_location="cpu", strict=True)
    r2 = _toy_runner(tmp_path, 4, resume=True)
    r2.train()
    assert r2.iter == 4 and (tmp_path / "iter_4.pth").is_file()
    hub = r2.message_hub.get_scalar("train/loss")
    assert np.isfinite(hub.mean())


def test_workaround_is_needed_and_keeps_weights_only(tmp_path):
    """Without mixedae.mm the same checkpoint fails to load (the upstream bug); with it,
    code-executing pickles are still refused."""
    r = _toy_runner(tmp_path, 2)
    r.train()
    code = ("import torch, sys; torch.load(sys.argv[1], weights_only=True)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "iter_2.pth")],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode != 0 and "UnpicklingError" in res.stderr

    from mmengine.logging import HistoryBuffer

    class Sneaky:   # getattr(HistoryBuffer, <not a statistics method>)
        def __reduce__(self):
            return (getattr, (HistoryBuffer, "register_statistics"))

    class Evil:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    for obj in (Sneaky(), Evil()):
        path = tmp_path / f"{type(obj).__name__}.pth"
        torch.save({"x": obj}, str(path))
        with pytest.raises(pickle.UnpicklingError):
            torch.load(str(path), weights_only=True)


def test_sem_seg_drawing_accepts_a_non_contiguous_image():
    """compat 2: mmseg draws labels with cv2 on zeros_like(image); a permuted tensor image
    (what browse_dataset passes) fails in OpenCV without the workaround."""
    from mmengine.structures import PixelData
    from mmseg.visualization import SegLocalVisualizer
    img = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8).permute(1, 2, 0).numpy()
    img = img[..., [2, 1, 0]]
    assert not img.flags["C_CONTIGUOUS"]
    seg = PixelData(data=torch.zeros(1, 64, 64, dtype=torch.long))
    seg.data[0, 10:40, 10:40] = 1
    vis = SegLocalVisualizer(name=f"compat_{id(img)}")
    import cv2
    with pytest.raises(cv2.error):
        SegLocalVisualizer._draw_sem_seg.__wrapped__(vis, img, seg, ["a", "b"], [[0, 0, 0], [255, 0, 0]])
    out = vis._draw_sem_seg(img, seg, ["a", "b"], [[0, 0, 0], [255, 0, 0]])
    assert out.shape == (64, 64, 3) and not np.array_equal(out, img)


def test_project_reader_keeps_the_mm_safe_globals_registered(tmp_path):
    """torch's safe_globals context removes its entries on exit, also ones registered before
    it: the project reader's fallback (a DINO-style argparse.Namespace in the file) must not
    take mm/compat's numpy globals away (an mmengine checkpoint loaded later then failed)."""
    import argparse

    import mixedae.mm.compat as compat
    from mixedae.runtime.torch_files import load_weights_only
    compat.apply()
    before = set(torch.serialization.get_safe_globals())
    path = tmp_path / "dino_like.pth"
    torch.save({"args": argparse.Namespace(arch="vit_small"), "meta": np.arange(3)}, path)
    assert load_weights_only(path)["args"].arch == "vit_small"
    assert before <= set(torch.serialization.get_safe_globals())
    plain = tmp_path / "mm_like.pth"
    torch.save({"meta": {"epoch": np.int64(3), "seed": np.arange(2)}}, plain)
    assert torch.load(plain, map_location="cpu", weights_only=True)["meta"]["epoch"] == 3
