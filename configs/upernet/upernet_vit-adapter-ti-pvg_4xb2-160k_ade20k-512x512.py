# UperNet, ViT-Adapter-Ti with PVG, ADE20K 160k, crop 512, 8 images per step;
# everything else as upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py.
# Published (Lee et al., Table 4): mIoU 41.07.
# Starts from the PVG DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_pvg_in1k.pth --pos-embed PVG
_base_ = ['./upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py']

pretrained = 'pretrained/deit-ti_pvg_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='PVG'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
