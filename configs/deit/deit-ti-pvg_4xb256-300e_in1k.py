# DeiT-Ti with PVG (absolute PE at the input, PE LayerNorm chain from block 1) and global average
# pooling, no class token (Lee et al.). Published top-1: 73.17 (Lee et al., Table 1).
# Everything else as deit-ti-abs_4xb256-300e_in1k.py. Its hand-off file
# (handoff_model.pth in its work dir), copied to pretrained/deit-ti_pvg_in1k.pth,
# feeds configs/mask_rcnn/*-ti-pvg_* and configs/upernet/*-ti-pvg_*.
_base_ = ['./deit-ti-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(pos_embed=dict(type='PVG'), pooling='gap'))
