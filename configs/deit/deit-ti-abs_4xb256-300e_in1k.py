# DeiT-Ti on ImageNet-1k, 300 epochs, 1024 images per step (4 GPUs x 256): the learned absolute PE
# and the class token (DeiT). Published top-1: 72.14 (Lee et al., Table 1; DeiT release: 72.2).
# Its hand-off file, work_dirs/<this config>/handoff_model.pth copied to
# pretrained/deit-ti_abs_in1k.pth, loads as it is (backbone.* keys) into the ViT-Adapter-Ti of
# configs/mask_rcnn/*-ti-abs_* and configs/upernet/*-ti-abs_*, whose default is the DeiT release
# itself.
#
# mmpretrain's own DeiT-tiny config with PEViT as the backbone and DeiT's recipe with DeiT's
# defaults (facebookresearch/deit main.py): AdamW lr 5e-4 x batch / 512, wd 0.05 (none on norms,
# biases, class token and every PE parameter), 5 warm-up epochs from 1e-6 then cosine to 1e-5, no
# gradient clipping, drop path 0.1, RandAugment m9 mstd 0.5, Mixup 0.8 / CutMix 1.0, label
# smoothing 0.1, random erasing 0.25, repeated augmentation (each image 3 times per epoch, on
# different GPUs) and an EMA of the weights (decay 0.99996 per iteration, mmengine momentum 4e-5);
# the last two are on by default in DeiT and absent from mmpretrain's config.
#
# DeiT reports and releases the model's own weights, not the EMA. Validation here reports both;
# checkpoints hold the EMA as state_dict and the model as ema_state_dict (mmengine's EMAHook), so
# they are not the hand-off: at the end of training PretrainHandOffHook writes
# work_dirs/<this config>/handoff_model.pth (the model's weights, what DeiT reports) and
# handoff_ema.pth (the EMA weights).
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']

custom_imports = dict(imports=['pe_dense'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PEViT',
        arch='tiny',
        img_size=224,
        patch_size=16,
        pos_embed=dict(type='AbsolutePE'),
        pooling='cls',
        final_norm='before_pool',
        drop_path_rate=0.1),
    head=dict(
        _delete_=True,
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)))

data_root = 'data/imagenet/'
train_dataloader = dict(
    batch_size=256,
    sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True),
    dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

# lr = 5e-4 x 1024 / 512; `--auto-scale-lr` rescales it for another total batch. No weight decay
# on norms, biases, the class token and every PE parameter (pos_embed.*: tables, PE LayerNorms,
# PEG's convolution), as DeiT and CPVT exclude them.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-4 * 1024 / 512, weight_decay=0.05, eps=1e-8,
                   betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'.cls_token': dict(decay_mult=0.0), '.pos_embed': dict(decay_mult=0.0)}),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3))
custom_hooks = [
    dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL', evaluate_on_origin=True,
         evaluate_on_ema=True),
    dict(type='PretrainHandOffHook'),
]
