# Mask R-CNN + FPN, ViT-Adapter-Ti with RoPEAxial, COCO 2017, ViT-Adapter's 1x schedule;
# everything else as mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py.
# Windowed blocks rotate q and k with each token's coordinates on the whole grid (integer patch
# indices, extrapolated beyond the 14x14 pre-training grid as rope-vit does); the frequencies
# of RoPE-Mixed are exempt from weight decay by the optimizer settings of the base.
# Starts from the RoPEAxial DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_rope-axial_in1k.pth --pos-embed RoPEAxial
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_8xb2-1x_coco.py']

pretrained = 'pretrained/deit-ti_rope-axial_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='RoPEAxial'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
