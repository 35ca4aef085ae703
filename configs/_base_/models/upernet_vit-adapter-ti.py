# UperNet + FCN auxiliary head on ViT-Adapter-Ti, segmentation variant (ViT-Adapter's ADE20K
# settings): global attention in every block; the ViT tokens after interaction i are added to
# output i. Heads, losses and the encoder-decoder are mmseg's own.
_base_ = ['mmseg::_base_/models/upernet_r50.py']

custom_imports = dict(imports=['pe_dense'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    # Pad test images to a multiple of 32 as the backbone does, so the logits are resized back
    # over the padded image and mmseg crops the padding off; without it a whole-image (or a
    # smaller-than-crop slide) prediction of, e.g., a 100x150 image would be the 128x160 map
    # squeezed into 100x150.
    data_preprocessor=dict(test_cfg=dict(size_divisor=32)),
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
        window_attn=False,
        vit_feature='per_interaction',
        norm_cfg=dict(type='BN'),
        with_cp=False),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=512, pool_scales=(1, 2, 3, 6),
                     num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, in_index=2, channels=256, num_classes=150,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                         loss_weight=0.4),
                        norm_cfg=norm_cfg))
