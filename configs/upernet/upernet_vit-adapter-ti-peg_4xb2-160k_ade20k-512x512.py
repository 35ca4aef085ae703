# UperNet, ViT-Adapter-Ti with CPVT's PEG, ADE20K 160k, crop 512, 8 images per step;
# everything else as upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py.
# Not in Lee et al.'s tables.
# Starts from the PEG DeiT-Ti ImageNet checkpoint, converted to pe-dense's format by
# tools/convert_checkpoint.py SRC pretrained/deit-ti_peg_in1k.pth --pos-embed PEG
_base_ = ['./upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py']

pretrained = 'pretrained/deit-ti_peg_in1k.pth'
model = dict(
    backbone=dict(
        pos_embed=dict(type='PEG'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
