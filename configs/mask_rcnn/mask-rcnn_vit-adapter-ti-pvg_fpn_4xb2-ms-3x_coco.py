# Mask R-CNN + FPN, ViT-Adapter-Ti with PVG, COCO 2017, 3x + multi-scale, 8 images
# per step; everything else as mask-rcnn_vit-adapter-ti-abs_fpn_4xb2-ms-3x_coco.py.
# Published (Lee et al., Table 3): box AP 46.1, mask AP 41.2.
# Starts from the PVG DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_pvg_in1k.pth --pos-embed PVG
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_4xb2-ms-3x_coco.py']

pretrained = 'pretrained/deit-ti_pvg_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='PVG'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
