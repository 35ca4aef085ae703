"""Every ImageNet pre-training config: DeiT's recipe (REFERENCE section 5), the method's PE and
pooling, and the model and its optimizer built in mmpretrain's scope."""
import glob
import os

import pytest
import torch
from mmengine.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {'abs': ('AbsolutePE', 'cls'), 'peg': ('PEG', 'gap'), 'lape': ('LaPE', 'cls'),
           'pvg': ('PVG', 'gap'), 'mpvg': ('MPVG', 'gap'), 'rope-axial': ('RoPEAxial', 'cls'),
           'rope-mixed': ('RoPEMixed', 'cls')}
ARCHS = {'ti': ('tiny', 192), 's': ('small', 384), 'b': ('base', 768)}
NAMES = ['ti-abs', 'ti-peg', 'ti-lape', 'ti-pvg', 'ti-mpvg', 'ti-rope-axial', 'ti-rope-mixed',
         's-abs', 's-mpvg', 'b-abs', 'b-mpvg']
CONFIGS = [f'deit-{n}_4xb256-300e_in1k.py' for n in NAMES]
# Parameters of timm's deit_{tiny,small,base}_patch16_224 (1000-class head included).
DEIT_PARAMS = {'tiny': 5_717_416, 'small': 22_050_664, 'base': 86_567_656}


def load(name):
    return Config.fromfile(os.path.join(ROOT, 'configs', 'deit', name))


def test_the_set_of_configs():
    found = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(ROOT, 'configs', 'deit', '*.py')))
    assert found == sorted(CONFIGS)


def find(pipeline, type_name):
    (step,) = [t for t in pipeline if t['type'] == type_name]
    return step


@pytest.mark.parametrize('name', CONFIGS)
def test_deit_recipe(name):
    cfg = load(name)
    size, method = name.split('_')[0].split('-', 2)[1:3]
    arch, channels = ARCHS[size]
    pe, pooling = METHODS[method]
    assert cfg.custom_imports == dict(imports=['pe_dense'], allow_failed_imports=False)
    b = cfg.model.backbone
    assert b.type == 'PEViT' and b.arch == arch and b.pos_embed == dict(type=pe)
    assert b.pooling == pooling and b.final_norm == 'before_pool'
    assert (b.img_size, b.patch_size, b.drop_path_rate) == (224, 16, 0.1)
    assert set(b) == {'type', 'arch', 'img_size', 'patch_size', 'pos_embed', 'pooling',
                      'final_norm', 'drop_path_rate'}  # nothing left of mmpretrain's ViT
    head = cfg.model.head
    assert (head.type, head.num_classes, head.in_channels) == ('LinearClsHead', 1000, channels)
    assert head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
    assert cfg.model.train_cfg.augments == [dict(type='Mixup', alpha=0.8),
                                            dict(type='CutMix', alpha=1.0)]

    opt = cfg.optim_wrapper
    assert opt.optimizer.type == 'AdamW' and opt.optimizer.lr == pytest.approx(5e-4 * 1024 / 512)
    assert (opt.optimizer.weight_decay, opt.optimizer.eps) == (0.05, 1e-8)
    assert opt.clip_grad is None
    assert opt.paramwise_cfg.norm_decay_mult == 0.0 and opt.paramwise_cfg.bias_decay_mult == 0.0
    assert opt.paramwise_cfg.custom_keys == {'.cls_token': dict(decay_mult=0.0),
                                             '.pos_embed': dict(decay_mult=0.0)}
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.begin, warmup.end, warmup.by_epoch) == ('LinearLR', 0, 5, True)
    assert warmup.start_factor * opt.optimizer.lr == pytest.approx(1e-6)
    assert (cosine.type, cosine.begin, cosine.end, cosine.eta_min) == (
        'CosineAnnealingLR', 5, 300, 1e-5)
    assert cfg.train_cfg.max_epochs == 300
    assert cfg.train_dataloader.batch_size == 256 and '4xb256' in name
    assert cfg.auto_scale_lr.base_batch_size == 1024

    pipe = cfg.train_dataloader.dataset.pipeline
    crop = find(pipe, 'RandomResizedCrop')
    assert (crop.scale, crop.interpolation) == (224, 'bicubic')
    assert find(pipe, 'RandomFlip').prob == 0.5
    ra = find(pipe, 'RandAugment')
    assert (ra.policies, ra.num_policies, ra.magnitude_level, ra.magnitude_std) == (
        'timm_increasing', 2, 9, 0.5)
    assert find(pipe, 'RandomErasing').erase_prob == 0.25
    test_pipe = cfg.val_dataloader.dataset.pipeline
    assert find(test_pipe, 'ResizeEdge').scale == 256
    assert find(test_pipe, 'CenterCrop').crop_size == 224
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.data_root == 'data/imagenet/'

    # DeiT's defaults: repeated augmentation (3 repeats) and an EMA (decay 0.99996); the hand-off
    # hook writes the model's weights (what DeiT reports) and the EMA's to files of their own.
    sampler = cfg.train_dataloader.sampler
    assert (sampler.type, sampler.num_repeats, sampler.shuffle) == ('RepeatAugSampler', 3, True)
    ema, hand_off = cfg.custom_hooks
    assert ema.type == 'EMAHook' and ema.momentum == pytest.approx(1 - 0.99996)
    assert ema.evaluate_on_origin and ema.evaluate_on_ema
    assert hand_off == dict(type='PretrainHandOffHook')


@pytest.fixture(scope='module')
def mmpretrain_scope():
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    return MODELS


@pytest.mark.parametrize('name', CONFIGS)
def test_model_builds_in_mmpretrain_scope(name, mmpretrain_scope):
    cfg = load(name)
    model = mmpretrain_scope.build(cfg.model)
    arch, c = ARCHS[name.split('-')[1]]
    # Against DeiT: a class token and its PE slot (c each), the 14x14 table, the PE LayerNorms
    # (2c each), PEG's depth-wise 3x3 conv with bias; MPVG's last_norm replaces DeiT's norm;
    # RoPE has no table (the class slot and 196 positions, c each), RoPE-Mixed has per block
    # (2, heads, head_dim / 2) frequencies, c numbers.
    extra = {'abs': 0, 'peg': -2 * c - 196 * c + 10 * c, 'lape': 12 * 2 * c,
             'pvg': -2 * c + 11 * 2 * c, 'mpvg': -2 * c + (11 + 1) * 2 * c,
             'rope-axial': -197 * c, 'rope-mixed': -197 * c + 12 * c}
    n = sum(p.numel() for p in model.parameters())
    assert n == DEIT_PARAMS[arch] + extra[name.split('_')[0].split('-', 2)[2]]
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224), mode='tensor')
    assert logits.shape == (1, 1000)


@pytest.mark.parametrize('name', ['deit-ti-peg_4xb256-300e_in1k.py',
                                  'deit-ti-mpvg_4xb256-300e_in1k.py',
                                  'deit-ti-rope-mixed_4xb256-300e_in1k.py'])
def test_no_weight_decay_on_any_pe_parameter_class_token_norm_or_bias(name, mmpretrain_scope):
    from mmengine.optim import build_optim_wrapper
    cfg = load(name)
    model = mmpretrain_scope.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in optim.optimizer.param_groups for p in g['params']}
    for pname, p in model.named_parameters():
        no_decay = ('.pos_embed.' in pname or pname.endswith('.bias') or 'norm' in pname
                    or 'cls_token' in pname)
        assert decay[id(p)] == (0.0 if no_decay else 0.05), pname
