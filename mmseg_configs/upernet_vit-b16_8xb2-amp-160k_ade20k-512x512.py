# MixedAE ViT-B/16 -> UperNet, ADE20K 512x512, 160k iters, batch 16 (8 GPUs x 2)
# (paper Appendix B: lr 3e-4, layer decay 0.65, single-scale evaluation, mIoU). Drop path 0.1:
# BEiT's ViT-B UperNet (upernet_beit_base_12_512_slide_160k_ade20k_pt.py); the paper gives none.
#   python tools/train.py THIS --pretrained <pretraining run dir or converted backbone>
_base_ = [
    '_base_/models/upernet_mixedae_vit.py', '_base_/datasets/ade20k.py',
    '_base_/default_runtime.py', '_base_/schedules/adamw_layer_decay_160k.py'
]
model = dict(
    backbone=dict(arch='base', out_indices=(3, 5, 7, 11), drop_path_rate=0.1),
    decode_head=dict(in_channels=[768, 768, 768, 768], channels=768),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65))
