# Mask R-CNN + FPN, ViT-Adapter-Ti with CPVT's PEG, COCO 2017, ViT-Adapter's 1x schedule;
# everything else as mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py.
# Starts from the PEG DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_peg_in1k.pth --pos-embed PEG
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py']

pretrained = 'pretrained/deit-ti_peg_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='PEG'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
