# Mask R-CNN + FPN, ViT-Adapter-Ti with LaPE, COCO 2017, ViT-Adapter's 1x schedule;
# everything else as mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py.
# Starts from the LaPE DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_lape_in1k.pth --pos-embed LaPE
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py']

pretrained = 'pretrained/deit-ti_lape_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='LaPE'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
