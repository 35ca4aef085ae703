# The mini Mask R-CNN with RoPEAxial (windowed blocks rotate with each token's global grid
# coordinates); everything else as mask-rcnn_vit-adapter-ti-abs_fpn_mini.py.
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='RoPEAxial')))
