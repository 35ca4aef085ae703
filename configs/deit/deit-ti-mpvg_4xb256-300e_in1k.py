# DeiT-Ti with MPVG (PVG and the Last LN y = LN(x_L) + LN''(pos_0), which is the final norm, per
# token before pooling) and global average pooling: the MPVG paper states MPVG is incompatible
# with the class token. Published top-1: 73.51 (Lee et al., Table 1).
# Everything else as deit-ti-abs_4xb256-300e_in1k.py. Its hand-off file
# (handoff_model.pth in its work dir), copied to pretrained/deit-ti_mpvg_in1k.pth,
# feeds configs/mask_rcnn/*-ti-mpvg_* and configs/upernet/*-ti-mpvg_*.
_base_ = ['./deit-ti-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(pos_embed=dict(type='MPVG'), pooling='gap'))
