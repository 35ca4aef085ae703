# The mini UperNet with RoPEMixed; everything else as upernet_vit-adapter-ti-abs_mini.py.
_base_ = ['./upernet_vit-adapter-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='RoPEMixed')))
