# COCO 2017 instance segmentation with ViT-Adapter's 3x multi-scale training pipeline: flip, then
# either (a) resize the short side to 480..800 (step 32, long side <= 1333) or (b) resize to
# {400, 500, 600}, random-crop 384..600, then (a); then crop to at most 1024 x 1024. The data
# preprocessor pads batches to a multiple of 32. Test: resize to (1333, 800).
_base_ = ['mmdet::_base_/datasets/coco_instance.py']

multi_scale = [(s, 1333) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True),
            ],
        ]),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=(1024, 1024),
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
