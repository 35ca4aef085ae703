# UperNet + FCN auxiliary head on ViT-Adapter-Ti (the full Tiny backbone, random init) on the
# bundled mini ADE20K-format data (tools/make_mini_data.py: 128 x 128 images, background plus
# circles / squares / triangles as ADE labels 1-4), trained on the CPU in a few minutes. Whole-image
# inference (the images are smaller than a 512 crop), a 256-channel decoder (512 in the ADE20K
# configs), a short schedule and pretrain_size=64 (the 4 x 4 PE table of the mini pre-training,
# configs/mini/deit-ti-*_mini.py, resampled to the 8 x 8 grid in the forward pass) are what
# differ; backbone and layer-decay AdamW are the same.
_base_ = [
    '../_base_/models/upernet_vit-adapter-ti.py',
    'mmseg::_base_/default_runtime.py',
]

data_root = 'data/mini/ade/ADEChallengeData2016'
crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(pos_embed=dict(type='AbsolutePE'), pretrain_size=64, drop_path_rate=0.0),
    # The decoder's 3x3 convolutions at 1/4 resolution cost most of a CPU step at 512 channels
    # (2.8 s vs 1.3 s per batch of 4 here); the backbone is untouched.
    decode_head=dict(channels=256),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
# The Resize at the images' own 128 x 128 leaves them as they are; tools/resolution_sweep.py
# scales it to evaluate at other resolutions (the ground truth, loaded after it, stays at 128).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ADE20KDataset', data_root=data_root,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ADE20KDataset', data_root=data_root,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 40
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.01, fused=True),
    constructor='ViTAdapterLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.8))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=20, end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2),
    visualization=dict(type='SegVisualizationHook', draw=False))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
