"""Every published-experiment config: its model builds, and the hyper-parameters that matter
match the published settings (REFERENCE sections 2-3), without the datasets."""
import glob
import os

import pytest
import torch
from mmengine.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {'abs': 'AbsolutePE', 'peg': 'PEG', 'lape': 'LaPE', 'pvg': 'PVG', 'mpvg': 'MPVG',
           'rope-axial': 'RoPEAxial', 'rope-mixed': 'RoPEMixed'}
CHECKPOINTS = {'abs': 'pretrained/deit_tiny_patch16_224-a1311bcf.pth',
               'peg': 'pretrained/deit-ti_peg_in1k.pth', 'lape': 'pretrained/deit-ti_lape_in1k.pth',
               'pvg': 'pretrained/deit-ti_pvg_in1k.pth', 'mpvg': 'pretrained/deit-ti_mpvg_in1k.pth',
               'rope-axial': 'pretrained/deit-ti_rope-axial_in1k.pth',
               'rope-mixed': 'pretrained/deit-ti_rope-mixed_in1k.pth'}


def configs(pattern):
    found = sorted(glob.glob(os.path.join(ROOT, 'configs', pattern)))
    assert len(found) == len(METHODS), found
    return found


def method_of(path):
    return os.path.basename(path).split('vit-adapter-ti-')[1].split('_')[0]


def find(pipeline, type_name):
    return [t for t in pipeline if t['type'] == type_name]


@pytest.mark.parametrize('path', configs('mask_rcnn/*ms-3x_coco.py'))
def test_mask_rcnn_3x(path):
    cfg = Config.fromfile(path)
    m = method_of(path)
    b = cfg.model.backbone
    assert b.type == 'ViTAdapter' and b.pos_embed['type'] == METHODS[m]
    assert b.init_cfg == dict(type='Pretrained', checkpoint=CHECKPOINTS[m])
    assert (b.embed_dim, b.depth, b.num_heads, b.drop_path_rate) == (192, 12, 3, 0.1)
    assert b.window_attn == [True, True, False] * 4 and b.window_size == 14
    assert b.vit_feature == 'last'
    assert cfg.model.neck.in_channels == [192] * 4 and cfg.model.neck.num_outs == 5
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == 'AdamW' and opt.optimizer.lr == 1e-4
    assert opt.optimizer.weight_decay == 0.05
    assert {k: v['decay_mult'] for k, v in opt.paramwise_cfg.custom_keys.items()} == {
        'level_embed': 0.0, 'pos_embed': 0.0, 'norm': 0.0, 'bias': 0.0}
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == (
        'LinearLR', 0.001, 500, False)
    assert steps.milestones == [27, 33] and steps.gamma == 0.1
    assert cfg.train_dataloader.batch_size == 2 and '4xb2' in path  # 8 images per step
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=8)
    pipe = cfg.train_dataloader.dataset.pipeline
    choice = find(pipe, 'RandomChoice')[0]['transforms']
    assert [s[0] for s in choice[0][0]['scales']] == list(range(480, 801, 32))
    assert all(s[1] == 1333 for s in choice[0][0]['scales'])
    assert [s[0] for s in choice[1][0]['scales']] == [400, 500, 600]
    assert choice[1][1]['crop_size'] == (384, 600)
    assert find(pipe, 'RandomCrop')[0]['crop_size'] == (1024, 1024)
    assert find(pipe, 'RandomFlip')[0]['prob'] == 0.5
    assert cfg.model.data_preprocessor.pad_size_divisor == 32
    test_resize = find(cfg.test_dataloader.dataset.pipeline, 'Resize')[0]
    assert test_resize['scale'] == (1333, 800)
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.val_evaluator.metric == ['bbox', 'segm']
    assert cfg.sync_bn == 'torch'


@pytest.mark.parametrize('path', configs('mask_rcnn/*1x_coco.py'))
def test_mask_rcnn_1x(path):
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.pos_embed['type'] == METHODS[method_of(path)]
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.param_scheduler[1].milestones == [8, 11]
    assert cfg.optim_wrapper.optimizer.lr == 2e-4
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.01
    assert cfg.auto_scale_lr.base_batch_size == 16 and '8xb2' in path


@pytest.mark.parametrize('path', configs('upernet/*160k_ade20k-512x512.py'))
def test_upernet_160k(path):
    cfg = Config.fromfile(path)
    m = method_of(path)
    b = cfg.model.backbone
    assert b.pos_embed['type'] == METHODS[m]
    assert b.init_cfg.checkpoint == CHECKPOINTS[m]
    assert b.window_attn is False and b.vit_feature == 'per_interaction'
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert head.type == 'UPerHead' and head.in_channels == [192] * 4
    assert head.channels == 512 and head.pool_scales == (1, 2, 3, 6) and head.num_classes == 150
    assert aux.type == 'FCNHead' and aux.in_index == 2 and aux.channels == 256
    assert aux.loss_decode.loss_weight == 0.4 and aux.num_classes == 150
    opt = cfg.optim_wrapper
    # The published fp16 = dict(loss_scale=dict(init_scale=512)): dynamic, starting at 512.
    assert opt.type == 'AmpOptimWrapper' and opt.loss_scale == dict(init_scale=512.0)
    assert opt.optimizer.type == 'AdamW' and opt.optimizer.lr == 12e-5
    assert opt.optimizer.betas == (0.9, 0.999) and opt.optimizer.weight_decay == 0.01
    assert opt.constructor == 'ViTAdapterLayerDecayOptimizerConstructor'
    assert opt.paramwise_cfg == dict(num_layers=12, layer_decay_rate=0.95)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR', 1e-6, 1500)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == (
        'PolyLR', 1.0, 0.0, 1500, 160000)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size == 2 and '4xb2' in path
    assert cfg.auto_scale_lr.base_batch_size == 8
    pipe = cfg.train_dataloader.dataset.pipeline
    crop = find(pipe, 'RandomCrop')[0]
    assert crop['crop_size'] == (512, 512) and crop['cat_max_ratio'] == 0.75
    resize = find(pipe, 'RandomResize')[0]
    assert resize['scale'] == (2048, 512) and resize['ratio_range'] == (0.5, 2.0)
    assert find(pipe, 'PhotoMetricDistortion') and find(pipe, 'RandomFlip')
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    # ViT-Adapter's test pipeline: ResizeToMultiple(32) right after the (2048, 512) resize.
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.pipeline == [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(2048, 512), keep_ratio=True),
            dict(type='ResizeToMultiple', size_divisor=32),
            dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='PackSegInputs')]
    assert cfg.model.data_preprocessor.size == (512, 512)
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'


@pytest.mark.parametrize('pattern,scope', [('mask_rcnn/*ms-3x_coco.py', 'mmdet'),
                                           ('upernet/*.py', 'mmseg')])
def test_every_model_builds(pattern, scope):
    from mmengine.registry import MODELS, init_default_scope
    import pe_dense  # noqa: F401
    init_default_scope(scope)
    for path in configs(pattern):
        cfg = Config.fromfile(path)
        model = MODELS.build(cfg.model)
        n = sum(p.numel() for p in model.backbone.parameters())
        assert type(model.backbone.pos_embed).__name__ == METHODS[method_of(path)]
        assert 7.9e6 < n < 8.0e6


UPERNET_ABS = os.path.join(ROOT, 'configs', 'upernet',
                           'upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py')


@pytest.mark.parametrize('hw', [(375, 500), (480, 640), (300, 1500), (700, 333)])
def test_ade20k_test_resize_gives_multiples_of_32(hw):
    """The test pipeline's two resizes, run by mmseg: the short side to 512 unless the long side
    would pass 2048 (keep ratio, sides rounded), then each side rounded up to a multiple of 32."""
    import math

    import numpy as np
    from mmcv.transforms import Compose
    from mmseg.registry import TRANSFORMS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(UPERNET_ABS)
    resizes = [t for t in cfg.test_dataloader.dataset.pipeline if 'Resize' in t['type']]
    pipeline = Compose([TRANSFORMS.build(t) for t in resizes])
    h, w = hw
    out = pipeline(dict(img=np.zeros((h, w, 3), np.uint8), img_shape=(h, w), ori_shape=(h, w)))
    scale = min(2048 / max(h, w), 512 / min(h, w))
    resized = [int(side * scale + 0.5) for side in (h, w)]
    want = tuple(math.ceil(side / 32) * 32 for side in resized)
    assert out['img'].shape[:2] == want and out['img_shape'] == want
    assert out['ori_shape'] == (h, w)
    assert want != tuple(resized) or hw == (300, 1500)  # the second resize acts


def test_fp16_loss_scale_is_dynamic_from_512(monkeypatch):
    """mmengine's AmpOptimWrapper built from the config (its CUDA scaler swapped for torch's CPU
    one, same arguments): the scale starts at 512 and halves after an overflowing step, which is
    skipped; the earlier static loss_scale=512.0 stays at 512."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    built = []

    def cpu_scaler(**kwargs):
        built.append(kwargs)
        return torch.amp.GradScaler('cpu', **kwargs)
    monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler', cpu_scaler)
    published = Config.fromfile(UPERNET_ABS).optim_wrapper.to_dict()
    for loss_scale, after in ((published['loss_scale'], 256.0), (512.0, 512.0)):
        cfg = dict(type='AmpOptimWrapper', loss_scale=loss_scale,
                   optimizer=dict(type='SGD', lr=0.1))
        param = torch.nn.Parameter(torch.ones(2))
        wrapper = build_optim_wrapper(torch.nn.ParameterList([param]), cfg)
        assert built[-1] == dict(init_scale=512.0)
        assert wrapper.loss_scaler.get_scale() == 512.0
        wrapper.update_params(param.sum() * float('inf'))
        assert wrapper.loss_scaler.get_scale() == after, loss_scale
        assert torch.equal(param.detach(), torch.ones(2))  # the overflowing step was skipped
        wrapper.update_params(param.sum())
        assert torch.allclose(param.detach(), torch.full((2,), 0.9))
