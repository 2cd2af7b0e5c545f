# MixedAE ViT-L/16 -> Cascade Mask R-CNN + FPN, COCO 2017, 1x, batch 16, AdamW lr 1e-4,
# layer decay 0.75 over 24 layers. Drop path 0.2 as for ViT-B (the paper gives none for L).
_base_ = [
    '_base_/models/cascade-mask-rcnn_mixedae-vit_fpn.py', '_base_/datasets/coco_instance_ms.py',
    '_base_/schedules/adamw_layer_decay_1x.py', '_base_/default_runtime.py'
]
model = dict(
    backbone=dict(arch='large', out_indices=(7, 11, 15, 23), drop_path_rate=0.2),
    neck=dict(in_channels=[1024, 1024, 1024, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.75))
