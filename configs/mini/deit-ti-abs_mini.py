# DeiT-Ti-sized ViT classifier (PEViT: 192 wide, 12 blocks, 3 heads) pre-trained on the bundled
# mini ImageNet-layout data (tools/make_mini_data.py: 64 x 64 images, one shape each, 3 classes =
# circle / square / triangle, the colour drawn at random for every shape): on the CPU in about a
# minute. Its checkpoint is what the pre-trained mini Mask R-CNN / UperNet runs start from.
# Why this task (pe_dense/datasets/mini.py, docs/mini_pipeline.md): the classes are the dense
# tasks' classes and can only be told apart by shape, and the shapes have the pixel size (and the
# size in 16-pixel patches) of the shapes of the mini COCO / ADE20K images (128 x 128, 1-4 shapes),
# so what the classifier learns is what the detector and the segmenter need. The PE table is
# 4 x 4, the table of the mini dense configs (pretrain_size=64): the checkpoint loads as it is,
# and the dense models resample the table to their 8 x 8 grid in the forward pass, as ViT-Adapter
# resamples DeiT's 14 x 14 table. What differs from DeiT's ImageNet recipe is what the budget asks
# for: the resolution, no drop path, no RandAugment / Mixup / CutMix / random erasing / label
# smoothing, batch 32, a schedule of 300 iterations (top-1 87-88 % on seed 0:
# docs/mini_pipeline.md).
_base_ = ['mmpretrain::_base_/default_runtime.py']

custom_imports = dict(imports=['pe_dense'], allow_failed_imports=False)
default_scope = 'mmpretrain'

data_root = 'data/mini/imagenet'
classes = ('circle', 'square', 'triangle')
img_size = 64

model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        type='ClsDataPreprocessor', num_classes=len(classes),
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),
    backbone=dict(type='PEViT', arch='tiny', img_size=img_size, patch_size=16,
                  pos_embed=dict(type='AbsolutePE'), pooling='cls', drop_path_rate=0.0),
    neck=None,
    head=dict(type='LinearClsHead', num_classes=len(classes), in_channels=192,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size)),
    dict(type='PackInputs'),
]
# No worker processes (the images are tiny); mmpretrain's tools/train.py turns persistent workers
# on unless a config says otherwise, which needs workers.
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='ImageNet', data_root=data_root, split='train',
                 metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=48,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageNet', data_root=data_root, split='val',
                 metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                   fused=True),
    # DeiT's exceptions from weight decay: norms, biases, the class token and the PE.
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={
        'cls_token': dict(decay_mult=0.0),
        'pos_embed': dict(decay_mult=0.0),
    }),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', T_max=max_iters, by_epoch=False, begin=0, end=max_iters,
         eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
