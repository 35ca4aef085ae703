# UperNet + FCN auxiliary head, ViT-Adapter-Ti with the learned absolute PE, ADE20K, 160k
# iterations, 512 x 512 crops, 8 images per step (4 GPUs x 2) as Lee et al. ran it, fp16,
# sliding-window test (crop 512, stride 341) on images resized to a short side of 512 (long side
# at most 2048), then to multiples of 32, as ViT-Adapter's test pipeline does.
# Published (Lee et al., Table 4): mIoU 40.55.
_base_ = [
    '../_base_/models/upernet_vit-adapter-ti.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw-layer-decay_160k.py',
    'mmseg::_base_/default_runtime.py',
]

crop_size = (512, 512)
pretrained = 'pretrained/deit_tiny_patch16_224-a1311bcf.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        pos_embed=dict(type='AbsolutePE'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# ViT-Adapter's ADE20K test pipeline: mmseg's (2048, 512) resize, then each side rounded up to a
# multiple of 32 (ResizeToMultiple after Resize, as in the published config). The ground truth
# is loaded after the resizes and stays at the image's size; mmseg resizes the logits back to it.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=4)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# lr 12e-5 is for 8 images per step; scale it for another total batch.
auto_scale_lr = dict(enable=False, base_batch_size=8)
sync_bn = 'torch'
