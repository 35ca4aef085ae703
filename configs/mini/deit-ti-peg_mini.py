# The mini ViT classifier with PEG and global average pooling (as CPVT-Ti-GAP);
# everything else as deit-ti-abs_mini.py.
_base_ = ['./deit-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='PEG'), pooling='gap'))
