# 1x schedule of ViT-Adapter: 12 epochs, lr x0.1 at epochs 8 and 11, linear warm-up over 500
# iterations from 0.001 x; AdamW lr 2e-4, wd 0.01, the same no-decay keys as the 3x schedule.
_base_ = ['./adamw_ms-3x.py']
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=0.01))
