"""Every production config loads (mmengine Config.fromfile) and builds its model; the paper's
settings (Appendix B) are what the configs say."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mixedae.mm  # noqa: F401
from mixedae.mm import preflight

from conftest import REPO

SEG = sorted((REPO / "mmseg_configs").glob("*.py"))
DET = sorted((REPO / "mmdet_configs").glob("*.py"))


def test_configs_exist():
    assert len(SEG) == 2 and len(DET) == 3


def _build(cfg):
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    # SyncBN needs no process group to be constructed; build as-is
    return MODELS.build(cfg.model)


@pytest.mark.parametrize("path", SEG + DET, ids=lambda p: p.name)
def test_config_loads_and_builds(path: Path):
    cfg = Config.fromfile(str(path))
    large = "vit-l16" in path.name
    simple = "simplefpn" in path.name   # ViTDet neck: the last block only
    bb = cfg.model.backbone
    assert bb.type == "MixedAEViT" and bb.arch == ("large" if large else "base")
    assert tuple(bb.out_indices) == ((7, 11, 15, 23) if large else (11,) if simple
                                     else (3, 5, 7, 11))
    assert preflight.check_strides(cfg) == (4, 8, 16, 32)
    ow = cfg.optim_wrapper
    assert ow.type == "AmpOptimWrapper" and ow.constructor == "MixedAELayerDecayOptimizerConstructor"
    assert ow.optimizer.type == "AdamW" and tuple(ow.optimizer.betas) == (0.9, 0.999)
    assert ow.optimizer.weight_decay == 0.05
    assert "num_layers" not in ow.paramwise_cfg   # the backbone reports its depth
    assert cfg.train_dataloader.batch_size == 2   # x 8 GPUs = 16
    if cfg.default_scope == "mmseg":
        assert ow.optimizer.lr == 3e-4
        assert ow.paramwise_cfg.layer_decay_rate == (0.75 if large else 0.65)
        assert bb.drop_path_rate == 0.1
        assert cfg.train_cfg.max_iters == 160000
        warm, poly = cfg.param_scheduler
        assert (warm.type, warm.end, poly.type, poly.power, poly.eta_min, poly.end) == \
            ("LinearLR", 1500, "PolyLR", 1.0, 0.0, 160000)
        assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
        assert cfg.model.decode_head.type == "UPerHead"
        assert cfg.model.auxiliary_head.type == "FCNHead"
        assert cfg.val_evaluator.iou_metrics == ["mIoU"]
    else:
        assert ow.optimizer.lr == 1e-4 and ow.paramwise_cfg.layer_decay_rate == 0.75
        assert cfg.train_cfg.max_epochs == 12
        step = cfg.param_scheduler[-1]
        assert step.type == "MultiStepLR" and step.milestones == [8, 11] and step.gamma == 0.1
        scales = cfg.train_dataloader.dataset.pipeline[2].scales
        assert [s[1] for s in scales] == list(range(480, 801, 32))
        assert all(s[0] == 1333 for s in scales)
        heads = cfg.model.roi_head.bbox_head
        assert [h.type for h in heads] == ["Shared4Conv1FCBBoxHead"] * 3
        assert all(h.loss_bbox.type == "GIoULoss" and h.norm_cfg.type == "SyncBN" for h in heads)
        if not simple:
            assert cfg.model.neck.norm_cfg.type == "SyncBN"
        assert cfg.val_evaluator.metric == ["bbox", "segm"]
        if not large:
            assert bb.drop_path_rate == 0.2
    model = _build(cfg)
    if simple:
        assert type(model.neck).__name__ == "SimpleFPN" and not model.backbone.with_adapter
    assert model.backbone.num_layers == (24 if large else 12)
    assert preflight.cpu_warning(model, cuda=False) is not None   # production: too big for CPU
    vit = sum(p.numel() for n, p in model.backbone.named_parameters()
              if not n.startswith("fpn") and "relative_position" not in n
              and n != "pos_embed")
    assert abs(vit - (303.2e6 if large else 85.6e6)) / vit < 0.01, vit
    assert any(isinstance(m, torch.nn.SyncBatchNorm) or "SyncBatchNorm" in type(m).__name__
               for m in model.modules())
