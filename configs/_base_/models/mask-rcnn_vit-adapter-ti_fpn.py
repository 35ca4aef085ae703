# Mask R-CNN + FPN on ViT-Adapter-Ti, detection variant (ViT-Adapter's COCO settings): 14x14
# windows in blocks 0,1,3,4,6,7,9,10 and global attention in 2,5,8,11; the final ViT tokens are
# added to all four outputs. Heads, losses and train/test settings are mmdet's own.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']

custom_imports = dict(imports=['pe_dense'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ViTAdapter',
        pos_embed=dict(type='AbsolutePE'),
        pretrain_size=224,
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mlp_ratio=4,
        drop_path_rate=0.1,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=6,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        window_attn=[True, True, False] * 4,
        window_size=14,
        vit_feature='last',
        norm_cfg=dict(type='BN'),
        with_cp=False),
    neck=dict(type='FPN', in_channels=[192, 192, 192, 192], out_channels=256, num_outs=5))
