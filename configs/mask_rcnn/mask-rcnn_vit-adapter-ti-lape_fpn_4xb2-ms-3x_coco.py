# Mask R-CNN + FPN, ViT-Adapter-Ti with LaPE, COCO 2017, 3x + multi-scale, 8 images
# per step; everything else as mask-rcnn_vit-adapter-ti-abs_fpn_4xb2-ms-3x_coco.py.
# Published (Lee et al., Table 3): box AP 46.2, mask AP 41.2.
# Starts from the LaPE DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_lape_in1k.pth --pos-embed LaPE
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_4xb2-ms-3x_coco.py']

pretrained = 'pretrained/deit-ti_lape_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='LaPE'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
