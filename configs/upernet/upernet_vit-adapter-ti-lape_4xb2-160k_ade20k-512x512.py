# UperNet, ViT-Adapter-Ti with LaPE, ADE20K 160k, crop 512, 8 images per step;
# everything else as upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py.
# Published (Lee et al., Table 4): mIoU 41.42.
# Starts from the LaPE DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_lape_in1k.pth --pos-embed LaPE
_base_ = ['./upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py']

pretrained = 'pretrained/deit-ti_lape_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='LaPE'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
