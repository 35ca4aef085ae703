# The mini UperNet with RoPEAxial; everything else as upernet_vit-adapter-ti-abs_mini.py.
_base_ = ['./upernet_vit-adapter-ti-abs_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='RoPEAxial')))
