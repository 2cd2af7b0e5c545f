# COCO 2017 instances (layout: docs/transfer.md). Training augmentation of iBOT's ViT Cascade
# Mask R-CNN (evaluation/object_detection/configs/cascade_rcnn/vit_base_giou_4conv1f_coco_3x.py,
# "augmentation strategy originates from DETR / Sparse RCNN"): horizontal flip, then one of two
# policies with equal probability (iBOT's AutoAugment, here mmcv's RandomChoice):
#   (a) multi-scale resize, short side one of 480..800 (step 32), long side <= 1333;
#   (b) resize to short side 400/500/600 (long <= 1333) -> absolute RandomCrop of h, w each
#       uniform in [384, 600] (boxes may leave the crop: allow_negative_crop) -> (a)'s resize.
# The paper (App. B) states (a)'s range; iBOT's config, which the paper follows, adds (b).
# Single-scale test at (1333, 800), as iBOT.
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
backend_args = None
ms_scales = [(1333, s) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(1333, 400), (1333, 500), (1333, 600)],
              keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
    ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,   # x 8 GPUs = 16
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
