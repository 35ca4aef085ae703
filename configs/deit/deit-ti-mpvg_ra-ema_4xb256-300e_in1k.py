# deit-ti-mpvg with the two parts of DeiT's recipe that mmpretrain's DeiT config leaves
# out: repeated augmentation (each image 3 times per epoch, on different GPUs) and an EMA of the
# weights (decay 0.99996 per iteration, mmengine momentum 4e-5). Validation reports the model and
# its EMA (DeiT reports the model); the saved state_dict holds the EMA weights, ema_state_dict the
# model's.
# Everything else as deit-ti-mpvg_4xb256-300e_in1k.py.
_base_ = ['./deit-ti-mpvg_4xb256-300e_in1k.py']

train_dataloader = dict(sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True))
custom_hooks = [
    dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL', evaluate_on_origin=True,
         evaluate_on_ema=True)
]
