# Mask R-CNN + FPN, ViT-Adapter-Ti with CPVT's PEG, COCO 2017, 3x + multi-scale, 8 images
# per step; everything else as mask-rcnn_vit-adapter-ti-abs_fpn_4xb2-ms-3x_coco.py.
# Not in Lee et al.'s tables.
# Starts from the PEG DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_peg_in1k.pth --pos-embed PEG
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_4xb2-ms-3x_coco.py']

pretrained = 'pretrained/deit-ti_peg_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='PEG'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
