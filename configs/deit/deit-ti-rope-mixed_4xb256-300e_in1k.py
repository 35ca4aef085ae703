# DeiT-Ti with RoPE-Mixed (rope-vit: q and k rotated in every block;
# learned frequencies per block and head, theta 10),
# no absolute table, class token unrotated (rope-vit's DeiT setting); the "+APE" variant is
# pos_embed=dict(type='RoPEMixed', with_ape=True). Everything else as
# deit-ti-abs_4xb256-300e_in1k.py, whose custom_keys '.pos_embed' already keep the
# frequencies out of weight decay, as rope-vit does. Its hand-off file (handoff_model.pth in
# its work dir), copied to pretrained/deit-ti_rope-mixed_in1k.pth, feeds
# configs/mask_rcnn/*-ti-rope-mixed_* and configs/upernet/*-ti-rope-mixed_*.
_base_ = ['./deit-ti-abs_4xb256-300e_in1k.py']

model = dict(backbone=dict(pos_embed=dict(type='RoPEMixed')))
