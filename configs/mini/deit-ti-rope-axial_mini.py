# The mini ViT classifier with RoPEAxial (class token unrotated); everything else as
# deit-ti-abs_mini.py.
_base_ = ['./deit-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='RoPEAxial')))
