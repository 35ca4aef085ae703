# The mini ViT classifier with PVG and global average pooling (as the PVG paper);
# everything else as deit-ti-abs_mini.py.
_base_ = ['./deit-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='PVG'), pooling='gap'))
