# UperNet, ViT-Adapter-Ti with MPVG, ADE20K 160k, crop 512, 8 images per step;
# everything else as upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py.
# Published (Lee et al., Table 4): mIoU 41.69.
# Starts from the MPVG DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_mpvg_in1k.pth --pos-embed MPVG
_base_ = ['./upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py']

pretrained = 'pretrained/deit-ti_mpvg_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='MPVG'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
