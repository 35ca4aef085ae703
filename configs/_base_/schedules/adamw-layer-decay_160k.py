# 160k-iteration schedule of ViT-Adapter's ADE20K UperNet: AdamW lr 12e-5, betas (0.9, 0.999),
# wd 0.01, layer-wise lr decay 0.95 over 12 blocks with the parameter groups of ViT-Adapter's
# LayerDecayOptimizerConstructor (patch embedding and PE table 0.95^13, block i 0.95^(12-i), LaPE-
# style PE LayerNorms with their block, adapter and heads 1.0; no decay on 1-D parameters and
# biases only: see pe_dense/engine/layer_decay.py); linear warm-up over 1500 iterations from
# 1e-6 x, then poly decay (power 1, to 0); fp16 with a dynamic loss scale starting at 512 (the
# published fp16 = dict(loss_scale=dict(init_scale=512)); mmengine's AmpOptimWrapper needs a GPU:
# without CUDA, tools/train.py trains in fp32 with OptimWrapper and says so); validation and
# checkpoints every 16k iterations.
max_iters = 160000
warmup_iters = 1500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=dict(init_scale=512.0),
    optimizer=dict(type='AdamW', lr=12e-5, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='ViTAdapterLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.95))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters,
         end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=2))
