"""Recipe ledger, dense transfer: ADE20K UperNet (the paper follows BEiT) and COCO Cascade Mask
R-CNN (the paper follows iBOT), ViT-B and ViT-L. Each value is the paper's (Appendix B) where it
states one, else the cited reference's, read from its repository:

* BEiT: github.com/microsoft/unilm ``beit/semantic_segmentation/`` (``configs/beit/upernet/
  upernet_beit_{base_12,large_24}_512_slide_160k_ade20k_*.py``, ``configs/_base_/``,
  ``backbone/beit.py``, ``mmcv_custom/layer_decay_optimizer_constructor.py``);
* iBOT: github.com/bytedance/ibot ``evaluation/object_detection/`` (``configs/cascade_rcnn/
  vit_base_giou_4conv1f_coco_3x.py``, ``configs/_base_/``, ``mmcv_custom/``), its
  ``evaluation/README.md`` command for ViT-B (12 epochs, steps 8/11, layer decay 0.75) and
  ``run.sh`` (``model.backbone.use_checkpoint=True``).

``CONFIGS`` names the mm configs each table holds for; tests/mm/test_recipes_dense.py loads every
mm config with mmengine's ``Config`` and asserts it against these rows.
"""
from recipe_ledger import Recipe

ADE_B = "ADE20K UperNet, ViT-B"
ADE_L = "ADE20K UperNet, ViT-L"
COCO_B = "COCO Cascade Mask R-CNN, ViT-B"
COCO_L = "COCO Cascade Mask R-CNN, ViT-L"

CONFIGS = {
    ADE_B: ["mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"],
    ADE_L: ["mmseg_configs/upernet_vit-l16_8xb2-amp-160k_ade20k-512x512.py"],
    COCO_B: ["mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py",
             # ViTDet's neck instead of iBOT's adapter + FPN (not a paper row): every other row
             "mmdet_configs/cascade-mask-rcnn_vit-b16_simplefpn_8xb2-amp-1x_coco.py"],
    COCO_L: ["mmdet_configs/cascade-mask-rcnn_vit-l16_fpn_8xb2-amp-1x_coco.py"],
}
# rows a config knowingly does not follow (config -> items), with the reason in its own header
EXEMPT = {
    "mmdet_configs/cascade-mask-rcnn_vit-b16_simplefpn_8xb2-amp-1x_coco.py":
        {"neck", "backbone out_indices", "SyncBN placement"},
}

_APP_B = "paper App. B"
_BEIT = "BEiT beit/semantic_segmentation/"
_BEIT_B = _BEIT + "configs/beit/upernet/upernet_beit_base_12_512_slide_160k_ade20k_pt.py"
_BEIT_L = _BEIT + "configs/beit/upernet/upernet_beit_large_24_512_slide_160k_ade20k_ms.py"
_BEIT_DATA = _BEIT + "configs/_base_/datasets/ade20k.py"
_BEIT_MODEL = _BEIT + "configs/_base_/models/upernet_beit.py"
_BEIT_CTOR = _BEIT + "mmcv_custom/layer_decay_optimizer_constructor.py"
_IBOT = "iBOT evaluation/object_detection/"
_IBOT_B = _IBOT + "configs/cascade_rcnn/vit_base_giou_4conv1f_coco_3x.py"
_IBOT_MODEL = _IBOT + "configs/_base_/models/cascade_mask_rcnn_vit_fpn.py"
_IBOT_DATA = _IBOT + "configs/_base_/datasets/coco_instance.py"
_IBOT_SCHED = _IBOT + "configs/_base_/schedules/schedule_1x.py"
_IBOT_BB = _IBOT + "mmcv_custom/register_backbone.py"
_IBOT_CTOR = _IBOT + "mmcv_custom/layer_decay_optimizer_constructor.py"
_IBOT_README = "iBOT evaluation/README.md (ViT-B Cascade Mask R-CNN command)"

_MS = "RandomChoiceResize(short 480-800 step 32, long <= 1333)"
_DECAY_ALL = ("decayed: every parameter but 1-D ones (norms) and biases; cls token, position "
              "embedding and relative position tables included")
_DECAY_NOTE = ("the reference's constructor tests name in ('pos_embed', 'cls_token') on names "
               "that carry the 'backbone.' prefix, so its runs decay them (mmseg 1.x's "
               "LearningRateDecayOptimizerConstructor has the same test); "
               "custom_keys=dict(pos_embed=dict(decay_mult=0.)) exempts a name")


def _ade(exp, size, beit):
    big = size == "large"
    dim = 1024 if big else 768
    r = [
        Recipe(exp, "backbone", size, _APP_B + " (ViT-B; ViT-L in App. C)", "model.backbone.arch"),
        Recipe(exp, "backbone out_indices", (7, 11, 15, 23) if big else (3, 5, 7, 11), beit,
               "model.backbone.out_indices"),
        Recipe(exp, "decode head", "UPerHead", _APP_B + " (UperNet following BEiT); "
               + _BEIT_MODEL, "model.decode_head.type"),
        Recipe(exp, "decode head channels", dim, beit, "model.decode_head.channels"),
        Recipe(exp, "auxiliary head", "FCNHead, in_index 2, loss weight 0.4", _BEIT_MODEL,
               "model.auxiliary_head"),
        Recipe(exp, "optimizer", "AdamW", beit, "optim_wrapper.optimizer.type"),
        Recipe(exp, "learning rate", 3e-4, _APP_B, "optim_wrapper.optimizer.lr",
               ("BEiT's ViT-L config uses 2e-5 with layer decay 0.95 for BEiT weights"
                if big else "BEiT's ViT-B config uses 7e-4 for BEiT weights")
               + "; the paper states 3e-4"),
        Recipe(exp, "AdamW betas", (0.9, 0.999), beit, "optim_wrapper.optimizer.betas"),
        Recipe(exp, "weight decay", 0.05, beit, "optim_wrapper.optimizer.weight_decay"),
        Recipe(exp, "weight decay of cls / pos / relative tables", _DECAY_ALL, _BEIT_CTOR,
               "optim_wrapper.constructor (mixedae/runtime/layer_decay.py)", _DECAY_NOTE),
        Recipe(exp, "layer-wise lr decay", 0.75 if big else 0.65, _APP_B,
               "optim_wrapper.paramwise_cfg.layer_decay_rate"),
        Recipe(exp, "warm-up", "linear from 1e-06, iterations 0-1500", beit + " (lr_config)",
               "param_scheduler[0]"),
        Recipe(exp, "lr decay", "poly, power 1.0, to 0.0, until iteration 160000",
               beit + " (lr_config)", "param_scheduler[1]"),
        Recipe(exp, "iterations", 160000, _APP_B, "train_cfg.max_iters"),
        Recipe(exp, "batch size", 16, _APP_B, "train_dataloader.batch_size x 8 GPUs",
               "2 per GPU on 8 GPUs (the config name's 8xb2), as BEiT"),
        Recipe(exp, "crop", (512, 512), _APP_B, "model.data_preprocessor.size"),
        Recipe(exp, "training augmentation",
               "RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0)) -> RandomCrop(512x512, "
               "cat_max_ratio=0.75) -> RandomFlip(0.5) -> PhotoMetricDistortion", _BEIT_DATA,
               "train_dataloader.dataset.pipeline"),
        Recipe(exp, "drop path", 0.2 if big else 0.1, beit, "model.backbone.drop_path_rate",
               "the paper gives none; BEiT's value for this size"),
        Recipe(exp, "relative position bias", True, beit + " (use_rel_pos_bias=True)",
               "model.backbone.use_rel_pos_bias", "one table per block, zero-initialised"),
        Recipe(exp, "absolute position embedding",
               "learnable, resized at load to the 32x32 grid of img_size 512, resized per input",
               beit
               + " (img_size=512)", "model.backbone.img_size",
               "BEiT's own weights have none (use_abs_pos_emb=False); an MAE-style encoder "
               "carries one, so it is kept and fine-tuned, the relative tables added at zero "
               "for the transfer only (as MAE's ADE20K transfer with BEiT's code)"),
        Recipe(exp, "SyncBN placement", ("auxiliary_head", "backbone", "decode_head"),
               _BEIT_MODEL + " (heads); " + _BEIT + "backbone/beit.py (fpn1 SyncBatchNorm)",
               "norm_cfg in model.*", "backbone: the adapter's x4 branch only"),
        Recipe(exp, "activation checkpointing", False, beit + " (use_checkpoint unset)",
               "model.backbone.with_cp"),
        Recipe(exp, "mixed precision", "AmpOptimWrapper", beit + " (IterBasedRunnerAmp, "
               "use_fp16=True)", "optim_wrapper.type"),
        Recipe(exp, "test resize", "Resize(scale=(2048, 512), keep_ratio) single scale, no flip",
               _APP_B + " (without multi-scale); " + _BEIT_DATA, "test_pipeline",
               "BEiT's ViT-L _ms config tests multi-scale + flip; the paper evaluates single-"
               "scale (tools/test.py --tta gives BEiT's ratios)" if big else ""),
        Recipe(exp, "test inference", "slide, crop (512, 512), stride (341, 341)", beit,
               "model.test_cfg"),
        Recipe(exp, "metric", "mIoU", _APP_B, "test_evaluator.iou_metrics"),
    ]
    return r


def _coco(exp, size):
    big = size == "large"
    dim = 1024 if big else 768
    no_l = "; iBOT has no ViT-L detector: as for ViT-B" if big else ""
    return [
        Recipe(exp, "backbone", size, _APP_B + " (ViT-B; ViT-L in App. C)", "model.backbone.arch"),
        Recipe(exp, "backbone out_indices", (7, 11, 15, 23) if big else (3, 5, 7, 11),
               (_BEIT_L + " (no ViT-L in iBOT)") if big else _IBOT_MODEL,
               "model.backbone.out_indices"),
        Recipe(exp, "detector", "CascadeRCNN, 3 stages, stage loss weights [1, 0.5, 0.25]",
               _APP_B + "; " + _IBOT_MODEL, "model.roi_head"),
        Recipe(exp, "neck", f"FPN {dim}x4 -> 256, 5 levels, no norm", _IBOT_MODEL, "model.neck"),
        Recipe(exp, "box heads", "Shared4Conv1FCBBoxHead x3, GIoULoss (weight 10), decoded "
               "boxes, class-specific regression", _IBOT_B + " (4conv1f)", "model.roi_head.bbox_head"),
        Recipe(exp, "mask head", "FCNMaskHead, 4 convs, no norm", _IBOT_MODEL,
               "model.roi_head.mask_head"),
        Recipe(exp, "SyncBN placement", ("backbone", "roi_head.bbox_head.0",
                                         "roi_head.bbox_head.1", "roi_head.bbox_head.2"),
               _IBOT_B + " (box heads); " + _IBOT_BB + " (fpn1 SyncBatchNorm)",
               "norm_cfg in model.*", "backbone: the adapter's x4 branch only; FPN, RPN and "
               "mask head have none"),
        Recipe(exp, "optimizer", "AdamW", _IBOT_B, "optim_wrapper.optimizer.type"),
        Recipe(exp, "learning rate", 1e-4, _APP_B + "; " + _IBOT_B, "optim_wrapper.optimizer.lr"),
        Recipe(exp, "AdamW betas", (0.9, 0.999), _IBOT_B, "optim_wrapper.optimizer.betas"),
        Recipe(exp, "weight decay", 0.05, _IBOT_B, "optim_wrapper.optimizer.weight_decay"),
        Recipe(exp, "weight decay of cls / pos / relative tables", _DECAY_ALL, _IBOT_CTOR,
               "optim_wrapper.constructor (mixedae/runtime/layer_decay.py)", _DECAY_NOTE),
        Recipe(exp, "layer-wise lr decay", 0.75, _APP_B + "; " + _IBOT_README,
               "optim_wrapper.paramwise_cfg.layer_decay_rate",
               "iBOT's config file says 0.65, its README's ViT-B command overrides it to 0.75"
               + ("; the paper states one value for both sizes" if big else "")),
        Recipe(exp, "warm-up", "linear from 0.001, iterations 0-500", _IBOT_SCHED,
               "param_scheduler[0]"),
        Recipe(exp, "lr steps", "x0.1 at epochs [8, 11] of 12", _APP_B + " (1x, 'at epoch 9 and "
               "11'); " + _IBOT_README + " (lr_config.step=8,11)", "param_scheduler[1]",
               "milestone 8 = the start of the 9th epoch"),
        Recipe(exp, "epochs", 12, _APP_B + " (1x); " + _IBOT_README, "train_cfg.max_epochs"),
        Recipe(exp, "batch size", 16, _APP_B + "; " + _IBOT_README + " (samples_per_gpu=2, 8 GPUs)",
               "train_dataloader.batch_size x 8 GPUs"),
        Recipe(exp, "training augmentation",
               "RandomFlip(0.5) -> RandomChoice[" + _MS + " | RandomChoiceResize(short 400, 500, "
               "600, long <= 1333) -> RandomCrop(absolute_range 384-600, negative crops allowed)"
               " -> " + _MS + "]",
               _IBOT_B + " (AutoAugment policies, from DETR)", "train_dataloader.dataset.pipeline",
               "the paper text names only the multi-scale resize; iBOT's config adds the "
               "crop policy"),
        Recipe(exp, "drop path", 0.2, _IBOT_B + no_l, "model.backbone.drop_path_rate"),
        Recipe(exp, "absolute position embedding",
               "learnable, resized at load to the 42x68 grid of 672x1092, resized per input",
               _IBOT_MODEL + " (img_size=[672, 1092]); " + _IBOT_BB + " + mmcv_custom/"
               "checkpoint.py (resize at load)", "model.backbone.img_size"),
        Recipe(exp, "relative position bias", False, _IBOT_BB + " (none)",
               "model.backbone.use_rel_pos_bias"),
        Recipe(exp, "activation checkpointing", True, "iBOT run.sh (model.backbone."
               "use_checkpoint=True)", "model.backbone.with_cp", "memory only: same gradients"),
        Recipe(exp, "mixed precision", "AmpOptimWrapper", _IBOT_B + " (EpochBasedRunnerAmp, "
               "use_fp16=True)", "optim_wrapper.type"),
        Recipe(exp, "pad size divisor", 32, _IBOT_DATA + " (Pad size_divisor=32)",
               "model.data_preprocessor.pad_size_divisor"),
        Recipe(exp, "test resize", "Resize(scale=(1333, 800), keep_ratio) single scale, no flip",
               _IBOT_DATA, "test_dataloader.dataset.pipeline"),
        Recipe(exp, "RPN proposals", "train nms_pre 2000 / max 2000, test 1000 / 1000, "
               "NMS IoU 0.7", _IBOT_MODEL, "model.train_cfg.rpn_proposal, model.test_cfg.rpn"),
        Recipe(exp, "test thresholds", "score 0.05, NMS IoU 0.5, 100 per image, mask 0.5",
               _IBOT_MODEL, "model.test_cfg.rcnn"),
        Recipe(exp, "metrics", ("bbox", "segm"), _APP_B + " (AP^bb, AP^mk)",
               "test_evaluator.metric"),
    ]


ROWS = (_ade(ADE_B, "base", _BEIT_B) + _ade(ADE_L, "large", _BEIT_L)
        + _coco(COCO_B, "base") + _coco(COCO_L, "large"))
