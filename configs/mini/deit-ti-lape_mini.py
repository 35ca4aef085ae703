# The mini ViT classifier with LaPE and class-token pooling (as LaPE on DeiT);
# everything else as deit-ti-abs_mini.py.
_base_ = ['./deit-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='LaPE')))
