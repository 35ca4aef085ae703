# DeiT-B (768 channels, 12 blocks, 12 heads) with the learned absolute PE and the class token.
# Published top-1: 81.8 (DeiT paper). Everything else as deit-ti-abs_4xb256-300e_in1k.py.
_base_ = ['./deit-ti-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(arch='base'), head=dict(in_channels=768))
