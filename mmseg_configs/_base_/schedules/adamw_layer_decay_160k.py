# AdamW lr 3e-4 (batch 16), wd 0.05, betas (0.9, 0.999), layer decay (0.65 ViT-B / 0.75 ViT-L),
# AMP; linear warmup 1500 iters then poly (power 1, eta_min 0) to 160k iters.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='MixedAELayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.65))   # depth: from the backbone
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
