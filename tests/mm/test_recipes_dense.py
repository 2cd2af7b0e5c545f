"""Every mm config against the dense-transfer rows of the recipe ledger (tests/ledger_dense.py):
each row's value is read back from the config loaded with mmengine's ``Config`` (composite
items are described from the config by the functions below), so a changed value fails naming
the paper's / reference's value and its source."""
import re
from pathlib import Path

import pytest
import torch.nn as nn
from mmengine.config import Config, ConfigDict

from ledger_dense import CONFIGS, EXEMPT, ROWS
from conftest import REPO, data_dir

_cache: dict[str, Config] = {}


def load(path: str) -> Config:
    if path not in _cache:
        _cache[path] = Config.fromfile(str(REPO / path))
    return _cache[path]


def tup(v):
    return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v


def get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return tup(node)


# ---- descriptions of composite items, in the ledger's words ----------------------------------
def _norm(d) -> str:
    return "no norm" if not d.get("norm_cfg") else f"norm {d.norm_cfg.type}"


def _resize(t) -> str:
    shorts = sorted(min(s) for s in t.scales)
    longs = {max(s) for s in t.scales}
    steps = {b - a for a, b in zip(shorts, shorts[1:])}
    short = (f"{shorts[0]}-{shorts[-1]} step {steps.pop()}" if len(shorts) > 3 and len(steps) == 1
             else ", ".join(map(str, shorts)))
    assert t.keep_ratio and len(longs) == 1, t
    return f"RandomChoiceResize(short {short}, long <= {longs.pop()})"


def describe_transform(t) -> str:
    kind = t.type
    if kind == "RandomResize":
        assert t.keep_ratio, t
        return f"RandomResize(scale={tup(t.scale)}, ratio_range={tup(t.ratio_range)})"
    if kind == "RandomCrop" and t.get("crop_type", "absolute") == "absolute_range":
        lo, hi = t.crop_size
        neg = ", negative crops allowed" if t.get("allow_negative_crop") else ""
        return f"RandomCrop(absolute_range {lo}-{hi}{neg})"
    if kind == "RandomCrop":
        h, w = t.crop_size
        return f"RandomCrop({h}x{w}, cat_max_ratio={t.cat_max_ratio})"
    if kind == "RandomFlip":
        return f"RandomFlip({t.prob})"
    if kind == "RandomChoiceResize":
        return _resize(t)
    if kind == "RandomChoice":
        return "RandomChoice[" + " | ".join(describe_pipeline(p) for p in t.transforms) + "]"
    if kind == "Resize":
        return f"Resize(scale={tup(t.scale)}" + (", keep_ratio)" if t.keep_ratio else ")")
    return kind


def describe_pipeline(pipeline) -> str:
    steps = [t for t in pipeline if not t.type.startswith(("Load", "Pack"))]
    return " -> ".join(describe_transform(t) for t in steps)


def describe_test(pipeline) -> str:
    text = describe_pipeline(pipeline)
    return text + " single scale, no flip" if text.count("Resize") == 1 and "->" not in text \
        else text


def sync_bn(cfg) -> tuple:
    found = []

    def walk(node, path):
        if isinstance(node, (dict, ConfigDict)):
            if (node.get("norm_cfg") or {}).get("type") == "SyncBN":
                found.append(path)
            for k, v in node.items():
                if k != "norm_cfg":
                    walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")
    walk(cfg.model, "")
    return tuple(sorted(found))


def weight_decay_of_tables(cfg) -> str:
    """The groups the config's own optim_wrapper builds for a micro backbone of its kind."""
    from mmengine.optim import build_optim_wrapper
    from mixedae.mm.backbone import MixedAEViT
    from ledger_dense import _DECAY_ALL
    bb = {k: v for k, v in cfg.model.backbone.items() if k not in ("type", "out_indices")}
    bb.update(arch="micro", norm_cfg=dict(type="BN"), use_rel_pos_bias=True)
    holder = nn.Module()
    holder.backbone = MixedAEViT(**bb)
    holder.head = nn.Linear(4, 4)
    ow_cfg = cfg.optim_wrapper.copy()
    ow_cfg.type = "OptimWrapper"
    ow_cfg.pop("loss_scale", None)
    ow = build_optim_wrapper(holder, ow_cfg)
    wd = {n: g["weight_decay"] for g in ow.optimizer.param_groups for n in g["param_names"]}
    base = cfg.optim_wrapper.optimizer.weight_decay
    names = ("backbone.cls_token", "backbone.pos_embed",
             "backbone.blocks.0.attn.relative_position_bias_table")
    one_d = [n for n, p in holder.named_parameters() if p.ndim == 1 or n.endswith(".bias")]
    if all(wd[n] == base for n in names) and all(wd[n] == 0.0 for n in one_d) and \
            all(wd[n] == base for n, p in holder.named_parameters() if n not in one_d):
        return _DECAY_ALL
    return "groups: " + ", ".join(f"{n}={wd[n]}" for n in names)


def batch(cfg, path) -> int:
    gpus, per = map(int, re.search(r"_(\d+)xb(\d+)-", path).groups())
    assert cfg.train_dataloader.batch_size == per, (path, cfg.train_dataloader.batch_size)
    return gpus * per


def _box_heads(cfg) -> str:
    heads = cfg.model.roi_head.bbox_head
    kinds = {h.type for h in heads}
    losses = {(h.loss_bbox.type, h.loss_bbox.loss_weight) for h in heads}
    assert len(kinds) == len(losses) == 1, heads
    (loss, w), = losses
    decoded = ", decoded boxes" if all(h.get("reg_decoded_bbox") for h in heads) else ""
    agnostic = {bool(h.get("reg_class_agnostic")) for h in heads}
    reg = "class-agnostic" if agnostic == {True} else "class-specific"
    return f"{kinds.pop()} x{len(heads)}, {loss} (weight {w:g}){decoded}, {reg} regression"


def _pos(cfg) -> str:
    bb = cfg.model.backbone
    img = bb.img_size
    h, w = (img, img) if isinstance(img, int) else img
    p = bb.get("patch_size", 16)
    what = f"{h}x{w}" if h != w else f"img_size {h}"
    return (f"learnable, resized at load to the {h // p}x{w // p} grid of {what}, resized per "
            f"input")


EXTRACT = {
    "auxiliary head": lambda c, p: (f"{c.model.auxiliary_head.type}, in_index "
                                    f"{c.model.auxiliary_head.in_index}, loss weight "
                                    f"{c.model.auxiliary_head.loss_decode.loss_weight}"),
    "weight decay of cls / pos / relative tables": lambda c, p: weight_decay_of_tables(c),
    "warm-up": lambda c, p: "linear from {start_factor}, iterations {begin}-{end}".format(
        **c.param_scheduler[0]) if c.param_scheduler[0].type == "LinearLR" else
        c.param_scheduler[0].type,
    "lr decay": lambda c, p: "poly, power {power}, to {eta_min}, until iteration {end}".format(
        **c.param_scheduler[1]) if c.param_scheduler[1].type == "PolyLR" else
        c.param_scheduler[1].type,
    "lr steps": lambda c, p: "x{gamma} at epochs {ms} of {end}".format(
        gamma=c.param_scheduler[1].gamma, ms=list(c.param_scheduler[1].milestones),
        end=c.param_scheduler[1].end) if c.param_scheduler[1].type == "MultiStepLR" else
        c.param_scheduler[1].type,
    "batch size": lambda c, p: batch(c, p),
    "training augmentation": lambda c, p: describe_pipeline(c.train_dataloader.dataset.pipeline),
    "test resize": lambda c, p: describe_test(c.test_dataloader.dataset.pipeline),
    "test inference": lambda c, p: "{mode}, crop {crop_size}, stride {stride}".format(
        **{k: tup(v) for k, v in c.model.test_cfg.items()}),
    "SyncBN placement": lambda c, p: sync_bn(c),
    "activation checkpointing": lambda c, p: bool(c.model.backbone.get("with_cp", False)),
    "absolute position embedding": lambda c, p: _pos(c),
    "detector": lambda c, p: (f"{c.model.type}, {c.model.roi_head.num_stages} stages, stage "
                              f"loss weights {list(c.model.roi_head.stage_loss_weights)}"),
    "neck": lambda c, p: (f"{c.model.neck.type} {c.model.neck.in_channels[0]}x"
                          f"{len(c.model.neck.in_channels)} -> {c.model.neck.out_channels}, "
                          f"{c.model.neck.num_outs} levels, {_norm(c.model.neck)}"),
    "box heads": lambda c, p: _box_heads(c),
    "mask head": lambda c, p: (f"{c.model.roi_head.mask_head.type}, "
                               f"{c.model.roi_head.mask_head.num_convs} convs, "
                               f"{_norm(c.model.roi_head.mask_head)}"),
    "RPN proposals": lambda c, p: (
        "train nms_pre {a} / max {b}, test {c} / {d}, NMS IoU {iou}".format(
            a=c.model.train_cfg.rpn_proposal.nms_pre, b=c.model.train_cfg.rpn_proposal.max_per_img,
            c=c.model.test_cfg.rpn.nms_pre, d=c.model.test_cfg.rpn.max_per_img,
            iou=c.model.test_cfg.rpn.nms.iou_threshold)),
    "test thresholds": lambda c, p: "score {s}, NMS IoU {n}, {m} per image, mask {k}".format(
        s=c.model.test_cfg.rcnn.score_thr, n=c.model.test_cfg.rcnn.nms.iou_threshold,
        m=c.model.test_cfg.rcnn.max_per_img, k=c.model.test_cfg.rcnn.mask_thr_binary),
    "metric": lambda c, p: "/".join(c.test_evaluator.iou_metrics),
    "metrics": lambda c, p: tup(c.test_evaluator.metric),
}


CASES = [(path, r) for r in ROWS for path in CONFIGS[r.experiment]
         if r.item not in EXEMPT.get(path, ())]


@pytest.mark.parametrize("path,row", CASES, ids=[f"{Path(p).stem}:{r.item}"
                                                 for p, r in CASES])
def test_config_holds_the_ledger_value(path, row):
    cfg = load(path)
    got = EXTRACT[row.item](cfg, path) if row.item in EXTRACT else get(cfg, row.carrier)
    assert got == tup(row.value), (
        f"{path}: {row.experiment} / {row.item} is {got!r}; the reference value is "
        f"{row.value!r} ({row.source})")


def test_every_mm_config_is_in_the_ledger():
    on_disk = {str(p.relative_to(REPO)) for d in ("mmseg_configs", "mmdet_configs")
               for p in (REPO / d).glob("*.py")}
    listed = {p for ps in CONFIGS.values() for p in ps}
    assert on_disk == listed, f"configs without ledger rows: {sorted(on_disk - listed)}"
    assert all(r.experiment in CONFIGS for r in ROWS)


def test_ade_test_pipeline_for_inference_is_the_evaluated_one():
    """mmseg's inference_model reads the top-level test_pipeline: the same single scale."""
    for exp in ("ADE20K UperNet, ViT-B", "ADE20K UperNet, ViT-L"):
        cfg = load(CONFIGS[exp][0])
        assert describe_test(cfg.test_pipeline) == describe_test(cfg.test_dataloader.dataset.pipeline)
        assert cfg.val_dataloader.dataset.pipeline == cfg.test_dataloader.dataset.pipeline


@pytest.mark.parametrize("branch", [0, 1], ids=["multi-scale", "resize-crop-resize"])
def test_coco_augmentation_runs_each_policy(branch):
    """iBOT's two policies, each forced in turn, run on real coco_tiny images in mmdet: the
    image ends with a short side in 480..800 (or its long side at 1333) and the boxes inside."""
    import numpy as np
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    import mixedae.mm  # noqa: F401
    register_all_modules(init_default_scope=True)
    coco = data_dir("coco_tiny")
    cfg = load(CONFIGS["COCO Cascade Mask R-CNN, ViT-B"][0])
    pipeline = [t.copy() for t in cfg.train_dataloader.dataset.pipeline]
    choice = next(t for t in pipeline if t.type == "RandomChoice")
    assert len(choice.transforms) == 2
    choice.prob = [1.0 - branch, float(branch)]
    ds = DATASETS.build(dict(type="CocoDataset", data_root=str(coco) + "/",
                             ann_file="annotations/instances_train2017.json",
                             data_prefix=dict(img="images/"), pipeline=pipeline,
                             filter_cfg=dict(filter_empty_gt=True, min_size=32)))
    for i in range(3):
        out = ds[i]
        h, w = out["inputs"].shape[-2:]
        assert 480 <= min(h, w) <= 800 or max(h, w) == 1333, (h, w)
        boxes = out["data_samples"].gt_instances.bboxes.tensor.numpy()
        assert np.all(boxes[:, 2] <= w + 1e-3) and np.all(boxes[:, 3] <= h + 1e-3)
