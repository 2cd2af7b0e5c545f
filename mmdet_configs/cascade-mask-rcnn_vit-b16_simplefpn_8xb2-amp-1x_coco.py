# MixedAE ViT-B/16 -> Cascade Mask R-CNN with ViTDet's simple feature pyramid instead of the
# BEiT/iBOT 4-scale adapter + FPN: the same backbone (the last block's stride-16 map only), the
# same heads, schedule and layer decay (0.75; the neck, like the heads, at lr scale 1). For
# comparing with ViTDet-style results; the paper's numbers use the adapter + FPN config.
#   python tools/train.py THIS --pretrained <pretraining run dir or converted backbone>
_base_ = ['./cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py']
model = dict(
    backbone=dict(out_indices=(11,), with_adapter=False),
    neck=dict(_delete_=True, type='SimpleFPN', in_channels=768, out_channels=256, in_stride=16,
              out_strides=(4, 8, 16, 32), num_outs=5))
