# DeiT-Ti with CPVT's PEG (depth-wise 3x3 conv after block 0, no absolute table) and global
# average pooling, no class token: CPVT-Ti-GAP. Published top-1: 74.9 (CPVT paper).
# Everything else as deit-ti-abs_4xb256-300e_in1k.py. Its hand-off file
# (handoff_model.pth in its work dir), copied to pretrained/deit-ti_peg_in1k.pth,
# feeds configs/mask_rcnn/*-ti-peg_* and configs/upernet/*-ti-peg_*.
_base_ = ['./deit-ti-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(pos_embed=dict(type='PEG'), pooling='gap'))
