# DeiT-Ti with LaPE (a PE LayerNorm per block, over every row of the table including the class
# slot; no PE at the input) and the class token. Published top-1: 72.94 (Lee et al., Table 1).
# Everything else as deit-ti-abs_4xb256-300e_in1k.py. Its hand-off file
# (handoff_model.pth in its work dir), copied to pretrained/deit-ti_lape_in1k.pth,
# feeds configs/mask_rcnn/*-ti-lape_* and configs/upernet/*-ti-lape_*.
_base_ = ['./deit-ti-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(pos_embed=dict(type='LaPE'), pooling='cls'))
