# MixedAE ViT-B/16 -> Cascade Mask R-CNN + FPN, COCO 2017, 1x (12 epochs), batch 16
# (8 GPUs x 2), AdamW lr 1e-4, layer decay 0.75, drop path 0.2 (paper Appendix B / iBOT).
#   python tools/train.py THIS --pretrained <pretraining run dir or converted backbone>
_base_ = [
    '_base_/models/cascade-mask-rcnn_mixedae-vit_fpn.py', '_base_/datasets/coco_instance_ms.py',
    '_base_/schedules/adamw_layer_decay_1x.py', '_base_/default_runtime.py'
]
model = dict(
    backbone=dict(arch='base', out_indices=(3, 5, 7, 11), drop_path_rate=0.2),
    neck=dict(in_channels=[768, 768, 768, 768]))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.75))
