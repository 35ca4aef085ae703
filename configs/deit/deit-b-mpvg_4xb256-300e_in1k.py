# DeiT-B with MPVG and global average pooling (no class token).
# Everything else as deit-b-abs_4xb256-300e_in1k.py.
_base_ = ['./deit-b-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(pos_embed=dict(type='MPVG'), pooling='gap'))
