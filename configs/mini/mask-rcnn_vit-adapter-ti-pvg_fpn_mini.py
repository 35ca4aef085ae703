# The mini Mask R-CNN with PVG; everything else as mask-rcnn_vit-adapter-ti-abs_fpn_mini.py.
_base_ = ['./mask-rcnn_vit-adapter-ti-abs_fpn_mini.py']

model = dict(backbone=dict(pos_embed=dict(type='PVG')))
