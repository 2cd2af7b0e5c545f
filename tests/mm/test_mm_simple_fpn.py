"""ViTDet's simple feature pyramid: strides, the same layer decay as the adapter+FPN config,
and a short Cascade Mask R-CNN training run on coco_tiny through tools/train.py."""
import json
import math

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope

import mixedae.mm  # noqa: F401
from mixedae.mm import MixedAEViT, SimpleFPN
from mixedae.mm.runner import adapt_to_machine
from mixedae.mm.smoke import tiny_det_config

from mm_inproc import run_tool
from conftest import REPO, data_dir

SFPN = REPO / "mmdet_configs/cascade-mask-rcnn_vit-b16_simplefpn_8xb2-amp-1x_coco.py"


@pytest.mark.parametrize("patch", [16, 8])
def test_strides_from_the_last_block(patch):
    bb = MixedAEViT(arch="micro", patch_size=patch, img_size=64, out_indices=(3,),
                    with_adapter=False).eval()
    neck = SimpleFPN(in_channels=64, out_channels=32, in_stride=patch).eval()
    neck.init_weights()
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        feats = bb(x)
        outs = neck(feats)
    assert len(feats) == 1 and feats[0].shape[-2:] == (128 // patch, 192 // patch)
    assert [tuple(o.shape) for o in outs] == [(1, 32, 128 // s, 192 // s)
                                             for s in (4, 8, 16, 32, 64)]
    # ViTDet's channel schedule in the upsampling branches
    if patch == 16:
        assert neck.stages[0][0].out_channels == 32 and neck.stages[0][3].out_channels == 16
        assert neck.stages[1][0].out_channels == 32


def build(cfg):
    init_default_scope("mmdet")
    adapt_to_machine(cfg, distributed=False)
    model = MODELS.build(cfg.model)
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def lrs(ow):
    return {n: (g["lr"], g["weight_decay"]) for g in ow.optimizer.param_groups
            for n in g["param_names"]}


def test_same_backbone_layer_decay_as_fpn(tmp_path):
    fpn = lrs(build(tiny_det_config(tmp_path))[1])
    model, ow = build(tiny_det_config(tmp_path, base=SFPN))
    sfpn = lrs(ow)
    vit = [n for n in sfpn if n.startswith("backbone.")]
    assert vit and all(sfpn[n] == fpn[n] for n in vit)
    assert all(not n.startswith("backbone.fpn") for n in sfpn)
    neck = [v for n, v in sfpn.items() if n.startswith("neck.")]
    assert neck and all(lr == pytest.approx(1e-4) for lr, _ in neck)   # lr scale 1


def test_trains_on_coco_tiny(tmp_path):
    coco = data_dir("coco_tiny")
    cfg = tmp_path / "sfpn.py"
    r = run_tool("-m", "mixedae.mm.smoke", "det", coco, cfg, "--base", SFPN, "--iters", "2")
    assert r.returncode == 0, r.stderr
    wd = tmp_path / "wd"
    r = run_tool("tools/train.py", cfg, "--work-dir", wd, "--from-scratch",
                 "--cfg-options", "val_dataloader.dataset.indices=2")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    recs = [json.loads(line) for f in wd.glob("*/vis_data/scalars.json")
            for line in f.read_text().splitlines()]
    train = [x for x in recs if "loss" in x]
    assert [x["step"] for x in train] == [1, 2]
    assert all(math.isfinite(v) for x in train for k, v in x.items() if "loss" in k)
    assert any("coco/bbox_mAP" in x for x in recs)
