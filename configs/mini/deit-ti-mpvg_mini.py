# The mini ViT classifier with MPVG and global average pooling (as the MPVG paper);
# everything else as deit-ti-abs_mini.py.
_base_ = ['./deit-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='MPVG'), pooling='gap'))
