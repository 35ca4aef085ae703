# Mask R-CNN + FPN, ViT-Adapter-Ti with the learned absolute PE (DeiT default), COCO 2017,
# 3x schedule with multi-scale training, 8 images per step (4 GPUs x 2) as Lee et al. ran it.
# Published (Lee et al., Table 3): box AP 45.9, mask AP 41.0.
# Starts from the DeiT-Ti ImageNet release (read as it is; tools/convert_checkpoint.py also
# converts it to pe-dense's format).
_base_ = [
    '../_base_/models/mask-rcnn_vit-adapter-ti_fpn.py',
    '../_base_/datasets/coco-instance_ms-crop-1024.py',
    '../_base_/schedules/adamw_ms-3x.py',
    'mmdet::_base_/default_runtime.py',
]

pretrained = 'pretrained/deit_tiny_patch16_224-a1311bcf.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='AbsolutePE'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

train_dataloader = dict(batch_size=2, num_workers=2)
# lr 1e-4 is for 8 images per step; `--auto-scale-lr` rescales it for another total batch.
auto_scale_lr = dict(enable=False, base_batch_size=8)
# Multi-GPU training turns the backbone's BatchNorms into SyncBN (published setting).
sync_bn = 'torch'
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3))
