# 1x schedule: 12 epochs, batch 16, AdamW lr 1e-4 wd 0.05, layer decay 0.75, AMP.
# lr x0.1 at the milestones [8, 11]: epochs 9-11 (1-based) run at 0.1x, epoch 12 at 0.01x — the
# standard mmdet 1x used by iBOT (step=[8, 11]), which the paper calls "decrease at epoch 9 and
# 11". Linear warmup over the first 500 iterations.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='MixedAELayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.75))   # depth: from the backbone
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
