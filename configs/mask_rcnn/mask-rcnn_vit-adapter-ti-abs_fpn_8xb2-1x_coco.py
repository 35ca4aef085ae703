# Mask R-CNN + FPN, ViT-Adapter-Ti with the learned absolute PE, COCO 2017, ViT-Adapter's 1x
# schedule (single-scale (1333, 800) training, AdamW lr 2e-4, 16 images per step).
# Published (ViT-Adapter-T, DeiT-Ti init): box AP 41.1, mask AP 37.5.
_base_ = [
    '../_base_/models/mask-rcnn_vit-adapter-ti_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
]

pretrained = 'pretrained/deit_tiny_patch16_224-a1311bcf.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='AbsolutePE'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

train_dataloader = dict(batch_size=2, num_workers=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
sync_bn = 'torch'
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3))
