# DeiT-S with MPVG and global average pooling (no class token).
# Everything else as deit-s-abs_4xb256-300e_in1k.py.
_base_ = ['./deit-s-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(pos_embed=dict(type='MPVG'), pooling='gap'))
