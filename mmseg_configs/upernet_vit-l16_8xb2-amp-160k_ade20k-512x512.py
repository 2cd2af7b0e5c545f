# MixedAE ViT-L/16 -> UperNet, ADE20K 512x512, 160k iters, batch 16 (8 GPUs x 2)
# (paper Appendix B: lr 3e-4, layer decay 0.75 for ViT-L, single-scale evaluation, mIoU).
# Drop path 0.2: BEiT's ViT-L UperNet (beit/semantic_segmentation/configs/beit/upernet/
# upernet_beit_large_24_512_slide_160k_ade20k_*.py, drop_path_rate=0.2); the paper gives none.
_base_ = [
    '_base_/models/upernet_mixedae_vit.py', '_base_/datasets/ade20k.py',
    '_base_/default_runtime.py', '_base_/schedules/adamw_layer_decay_160k.py'
]
model = dict(
    backbone=dict(arch='large', out_indices=(7, 11, 15, 23), drop_path_rate=0.2),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.75))
