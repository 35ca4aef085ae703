# The mini ViT classifier with NoPE and class-token pooling (as DeiT without its PE);
# everything else as deit-ti-abs_mini.py.
_base_ = ['./deit-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='NoPE')))
