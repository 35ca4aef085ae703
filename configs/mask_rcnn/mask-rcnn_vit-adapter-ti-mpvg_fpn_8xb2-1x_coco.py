# Mask R-CNN + FPN, ViT-Adapter-Ti with MPVG, COCO 2017, ViT-Adapter's 1x schedule;
# everything else as mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py.
# Starts from the MPVG DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_mpvg_in1k.pth --pos-embed MPVG
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py']

pretrained = 'pretrained/deit-ti_mpvg_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='MPVG'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
