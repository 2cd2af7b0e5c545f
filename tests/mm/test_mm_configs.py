"""Every production config loads (mmengine Config.fromfile) and builds its model (the recipe
values are held to the ledger by tests/mm/test_recipes_dense.py)."""
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
    if simple:
        assert tuple(bb.out_indices) == (11,)
    assert preflight.check_strides(cfg) == (4, 8, 16, 32)
    # every recipe value (optimizer, schedule, heads, augmentation, ...) is asserted against
    # the recipe ledger in tests/mm/test_recipes_dense.py
    model = _build(cfg)
    if simple:
        assert type(model.neck).__name__ == "SimpleFPN" and not model.backbone.with_adapter
    assert model.backbone.num_layers == (24 if large else 12)
    assert preflight.cpu_warning(model, cuda=False) is not None   # production: too big for CPU
    vit = sum(p.numel() for n, p in model.backbone.named_parameters()
              if not n.startswith("fpn") and "relative_position" not in n
              and n != "pos_embed")
    assert abs(vit - (303.2e6 if large else 85.6e6)) / vit < 0.01, vit
    sync = [n for n, m in model.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert sync
    # SyncBN only where BEiT (ADE20K) / iBOT (COCO) have it: the adapter's x4 branch, the
    # segmentation heads, the box heads (not the FPN, RPN or mask head)
    where = (("backbone.fpn1.", "decode_head.", "auxiliary_head.") if cfg.default_scope == "mmseg"
             else ("roi_head.bbox_head.",) if simple else ("backbone.fpn1.", "roi_head.bbox_head."))
    assert all(n.startswith(where) for n in sync), sync
    assert all(any(n.startswith(w) for n in sync) for w in where), sync
