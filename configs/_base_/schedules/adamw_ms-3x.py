# 3x schedule of ViT-Adapter / Lee et al.: 36 epochs, lr x0.1 at epochs 27 and 33, linear warm-up
# over 500 iterations from 0.001 x; AdamW lr 1e-4, wd 0.05, no decay on the position encoding
# (every method's parameters live under `backbone.pos_embed`), level embedding, norms and biases.
max_epochs = 36
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'level_embed': dict(decay_mult=0.0),
        'pos_embed': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
        'bias': dict(decay_mult=0.0),
    }))
