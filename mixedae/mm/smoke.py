"""Tiny derived configs for smoke runs and tests: the production configs with a micro ViT,
small images, a few iterations and the real small datasets (``../shared/data``).

    .venv/bin/python -m mixedae.mm.smoke seg  ../shared/data/ade_tiny  seg_tiny.py
    .venv/bin/python -m mixedae.mm.smoke det  ../shared/data/coco_tiny det_tiny.py \
        [--base mmdet_configs/cascade-mask-rcnn_vit-b16_simplefpn_8xb2-amp-1x_coco.py]
    .venv/bin/python tools/train.py seg_tiny.py --pretrained RUN_DIR --work-dir work_dirs/smoke_seg

Everything that matters for the pipeline (model types, heads, losses, optimizer constructor,
schedulers' kinds, metrics) stays as in the production config; only sizes change.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from pathlib import Path

from mmengine.config import Config

from mixedae.runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SEG_CONFIG = REPO / "mmseg_configs" / "upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"
DET_CONFIG = REPO / "mmdet_configs" / "cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"
MICRO_DIM, MICRO_DEPTH = 64, 4
# the production configs each task may derive from (--base), and the scope they declare
BASE_DIRS = {"seg": (REPO / "mmseg_configs", "mmseg"), "det": (REPO / "mmdet_configs", "mmdet")}
# what the smoke configs read below the data root: COCO (instances_*.json, images/ of
# coco_tiny) and ADE20K's images/ + annotations/ pairs per split
COCO_FILES = ("annotations/instances_train2017.json", "annotations/instances_val2017.json")
ADE_SPLITS = ("training", "validation")


def _loader(d, root, pipeline, batch=None, **dataset_kw):
    d.num_workers = 0
    d.persistent_workers = False
    if batch is not None:
        d.batch_size = batch
    d.dataset.data_root = str(root)
    d.dataset.pipeline = pipeline
    d.dataset.update(dataset_kw)


def tiny_seg_config(data_root: str | Path, iters: int = 6, crop: int = 128,
                    base: str | Path = SEG_CONFIG) -> Config:
    cfg = Config.fromfile(str(base))
    m = cfg.model
    m.data_preprocessor.size = (crop, crop)
    m.backbone.update(arch="micro", img_size=crop, out_indices=(0, 1, 2, 3))
    m.decode_head.update(in_channels=[MICRO_DIM] * 4, channels=32)
    m.auxiliary_head.update(in_channels=MICRO_DIM, channels=16)
    m.test_cfg = dict(mode="slide", crop_size=(crop, crop), stride=(85 * crop // 128,) * 2)
    scale = (4 * crop, crop)
    train = [dict(type="LoadImageFromFile"),
             dict(type="LoadAnnotations", reduce_zero_label=True),
             dict(type="RandomResize", scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
             dict(type="RandomCrop", crop_size=(crop, crop), cat_max_ratio=0.75),
             dict(type="RandomFlip", prob=0.5),
             dict(type="PhotoMetricDistortion"),
             dict(type="PackSegInputs")]
    test = [dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=scale, keep_ratio=True),
            dict(type="LoadAnnotations", reduce_zero_label=True),
            dict(type="PackSegInputs")]
    _loader(cfg.train_dataloader, data_root, train, batch=2)
    _loader(cfg.val_dataloader, data_root, test)
    cfg.test_dataloader = cfg.val_dataloader
    # the top-level names of the base config hold what this config runs (a config dump shows
    # them first); test_pipeline is also what mmseg's inference_model reads
    ratios = [0.75, 1.25]
    cfg.update(data_root=str(data_root), crop_size=(crop, crop), train_pipeline=train,
               test_pipeline=test, img_ratios=ratios, tta_pipeline=tta_pipeline(scale, ratios),
               data_preprocessor=m.data_preprocessor)
    warm = max(1, iters // 3)
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warm)]
    if iters > warm:   # (a 1-iteration run is all warm-up)
        cfg.param_scheduler.append(
            dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=warm, end=iters))
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = iters
    cfg.env_cfg.cudnn_benchmark = False
    return cfg


def tta_pipeline(scale: tuple[int, int], ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                 size_divisor: int = 16) -> list[dict]:
    """mmseg multi-scale + flip test pipeline (BEiT's ratios of the single-scale ``scale``);
    sizes rounded up to a multiple of the patch size so every slide window fits the ViT."""
    return [dict(type="LoadImageFromFile"),
            dict(type="TestTimeAug", transforms=[
                [dict(type="Resize", scale=(int(scale[0] * r), int(scale[1] * r)),
                      keep_ratio=True) for r in ratios],
                [dict(type="ResizeToMultiple", size_divisor=size_divisor)],
                [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                 dict(type="RandomFlip", prob=1.0, direction="horizontal")],
                [dict(type="LoadAnnotations", reduce_zero_label=True)],
                [dict(type="PackSegInputs")]])]


def tiny_det_config(data_root: str | Path, iters: int = 4, short: int = 192,
                    val_images: int = 8, base: str | Path = DET_CONFIG) -> Config:
    cfg = Config.fromfile(str(base))
    m = cfg.model
    c = 32
    if m.neck.type == "SimpleFPN":   # ViTDet: the last block only
        m.backbone.update(arch="micro", out_indices=(MICRO_DEPTH - 1,))
        m.neck.update(in_channels=MICRO_DIM, out_channels=c)
    else:
        m.backbone.update(arch="micro", out_indices=(0, 1, 2, 3))
        m.neck.update(in_channels=[MICRO_DIM] * 4, out_channels=c)
    m.rpn_head.update(in_channels=c, feat_channels=c)
    m.roi_head.bbox_roi_extractor.out_channels = c
    m.roi_head.mask_roi_extractor.out_channels = c
    for h in m.roi_head.bbox_head:
        h.update(in_channels=c, conv_out_channels=c, fc_out_channels=64)
    m.roi_head.mask_head.update(in_channels=c, conv_out_channels=c)
    m.train_cfg.rpn_proposal.update(nms_pre=500, max_per_img=200)
    for st in m.train_cfg.rcnn:
        st.sampler.num = 64
    m.test_cfg.rpn.update(nms_pre=300, max_per_img=100)
    # score_thr 0: an almost untrained model still emits boxes, so AP is really computed
    m.test_cfg.rcnn.update(score_thr=0.0, max_per_img=20)
    root = str(data_root).rstrip("/") + "/"
    long = short * 5 // 3
    train = [dict(type="LoadImageFromFile"),
             dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
             dict(type="RandomChoiceResize", scales=[(long, short), (long, short + 32)],
                  keep_ratio=True),
             dict(type="RandomFlip", prob=0.5),
             dict(type="PackDetInputs")]
    test = [dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=(long, short), keep_ratio=True),
            dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
            dict(type="PackDetInputs",
                 meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    _loader(cfg.train_dataloader, root, train, batch=2,
            ann_file="annotations/instances_train2017.json", data_prefix=dict(img="images/"))
    _loader(cfg.val_dataloader, root, test, ann_file="annotations/instances_val2017.json",
            data_prefix=dict(img="images/"), indices=val_images)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.update(data_root=root, train_pipeline=train, test_pipeline=test)  # as seg
    cfg._cfg_dict.pop("max_epochs", None)   # the 1x schedule's epochs: iteration-based here
    cfg._cfg_dict.pop("ms_scales", None)    # iBOT's multi-scale list: this pipeline has its own
    for ev in ("val_evaluator", "test_evaluator"):
        cfg[ev].ann_file = osp.join(root, "annotations/instances_val2017.json")
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0,
                                end=max(1, iters // 2))]
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters)
    cfg.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.update(by_epoch=False, interval=iters)
    return cfg


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def check_base(task: str, base: str) -> None:
    """``--base`` must be an existing config of ``task``'s library (one error line naming the
    path and the valid bases otherwise)."""
    folder, scope = BASE_DIRS[task]
    valid = ", ".join(_rel(p) for p in sorted(folder.glob("*.py")))
    if not Path(base).is_file():
        raise ConfigError(f"--base {base}: no such config file; the {task} bases are: {valid}")
    found = Config.fromfile(base).get("default_scope")
    if found != scope:
        what = f"an {found} config" if found else "a config without default_scope"
        raise ConfigError(f"--base {base} is {what}; `smoke {task}` needs an {scope} one: "
                          f"{valid}")


def _missing(root: Path, task: str) -> list[str]:
    """What ``root`` lacks for ``task`` (empty: usable)."""
    if task == "det":
        need = [f for f in COCO_FILES if not (root / f).is_file()]
        return need + ([] if (root / "images").is_dir() else ["images/"])
    missing = []
    for split in ADE_SPLITS:
        imgs, anns = root / "images" / split, root / "annotations" / split
        if not imgs.is_dir() or not anns.is_dir():
            missing += [f"{d.relative_to(root)}/" for d in (imgs, anns) if not d.is_dir()]
        elif not any((anns / f"{p.stem}.png").is_file() for p in imgs.glob("*.jpg")):
            missing.append(f"a pair images/{split}/NAME.jpg + annotations/{split}/NAME.png")
    return missing


def check_data_root(task: str, data_root: str) -> None:
    """Refuse a data root without the layout ``task``'s smoke config reads (COCO
    ``annotations/instances_{train,val}2017.json`` + ``images/``; ADE20K ``images/`` +
    ``annotations/`` pairs per split), naming what is missing and the other task when the
    folder fits that one."""
    root = Path(data_root)
    if not root.is_dir():
        raise ConfigError(f"data root {data_root} is not a folder")
    missing = _missing(root, task)
    if not missing:
        return
    what = {"seg": "an ADE20K folder (ade_tiny layout)", "det": "a COCO folder (coco_tiny layout)"}
    other = "det" if task == "seg" else "seg"
    hint = (f"; it is {what[other].split(' (')[0]}: use `smoke {other}`"
            if not _missing(root, other) else "")
    raise ConfigError(f"data root {data_root} is not {what[task]} for `smoke {task}`: missing "
                      f"{', '.join(missing)}{hint}")


def _main(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m mixedae.mm.smoke", description=(
        "Write a tiny config (micro ViT, small images, a few iterations) derived from a "
        "production config, to try train/test/infer on the small datasets in minutes."))
    ap.add_argument("task", choices=["seg", "det"])
    ap.add_argument("data_root", help="ade_tiny (seg) or coco_tiny (det) folder")
    ap.add_argument("out", help="config file to write (.py)")
    ap.add_argument("--base", help=f"production config to derive from (default: "
                                   f"{SEG_CONFIG.name} / {DET_CONFIG.name})")
    ap.add_argument("--iters", type=int, help="training iterations (default 6 seg, 4 det)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        ap.error(f"--iters must be >= 1, got {args.iters}")
    check_data_root(args.task, args.data_root)
    if args.base is not None:
        check_base(args.task, args.base)
    fn = tiny_seg_config if args.task == "seg" else tiny_det_config
    kw = {k: v for k, v in (("base", args.base), ("iters", args.iters)) if v is not None}
    fn(args.data_root, **kw).dump(args.out)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    from mixedae.mm.runner import run_tool
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
