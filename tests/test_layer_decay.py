"""The layer-wise lr decay optimizer constructor: registries, per-parameter lr and weight decay,
grouping, one AdamW step, AMP wrapper, frozen parameters and config errors."""
import copy
import logging

import mmdet.registry
import mmseg.registry
import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.registry import DefaultScope
from torch import nn

import pe_dense  # noqa: F401  (registers the constructor)
from pe_dense.engine import ViTAdapterLayerDecayOptimizerConstructor, get_layer_id
from pe_dense.models import ViTAdapter

LR, WD, RATE, DEPTH = 1e-4, 0.05, 0.95, 12
NAME = 'ViTAdapterLayerDecayOptimizerConstructor'


class Segmentor(nn.Module):
    """The smallest whole model: a Tiny ViT-Adapter and a 1x1 conv as decode head."""

    def __init__(self, method: str):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = ViTAdapter(pos_embed=dict(type=method), drop_path_rate=0.0)
        self.decode_head = nn.Conv2d(192, 4, 1)


def optim_cfg(wrapper: str = 'OptimWrapper', **paramwise) -> dict:
    """The published ViT-Adapter optimizer settings (``paramwise`` overrides the paramwise_cfg)."""
    return dict(type=wrapper,
                optimizer=dict(type='AdamW', lr=LR, betas=(0.9, 0.999), weight_decay=WD),
                constructor=NAME,
                paramwise_cfg=paramwise or dict(num_layers=DEPTH, layer_decay_rate=RATE))


def build(model: nn.Module, scope: str, cfg: dict):
    """Builds the optim wrapper as a runner of ``scope`` (mmdet or mmseg) would."""
    if scope == 'mmdet':
        from mmdet.utils import register_all_modules
    else:
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        assert DefaultScope.get_current_instance().scope_name == scope
        return build_optim_wrapper(model, cfg)


def expected(name: str, param: torch.Tensor):
    """(lr, weight decay) of a parameter by the published rules, spelled out independently."""
    if name.startswith(('backbone.patch_embed.', 'backbone.pos_embed')):
        lr = LR * RATE ** 13
    elif name.startswith('backbone.blocks.'):
        lr = LR * RATE ** (DEPTH - int(name.split('.')[2]))
    else:
        lr = LR
    no_decay = (param.ndim == 1 or name.endswith('.bias') or name == 'backbone.level_embed'
                or name.startswith('backbone.pos_embed'))
    return lr, 0.0 if no_decay else WD


def group_of(wrapper, name: str) -> dict:
    """The one param group that holds parameter ``name``."""
    groups = [g for g in wrapper.optimizer.param_groups if name in g['param_names']]
    assert len(groups) == 1, name
    return groups[0]


@pytest.fixture(scope='module', params=['PEG', 'MPVG'])
def model(request):
    return Segmentor(request.param)


def test_registered_in_root_and_visible_from_mmdet_and_mmseg():
    for registry in (mmdet.registry.OPTIM_WRAPPER_CONSTRUCTORS,
                     mmseg.registry.OPTIM_WRAPPER_CONSTRUCTORS):
        assert registry.get(NAME) is ViTAdapterLayerDecayOptimizerConstructor


def test_layer_ids():
    assert get_layer_id('backbone.patch_embed.proj.weight', 12) == 0
    assert get_layer_id('backbone.pos_embed', 12) == 0
    assert get_layer_id('backbone.pos_embed.last_norm.bias', 12) == 0
    assert get_layer_id('backbone.blocks.0.attn.qkv.weight', 12) == 1
    assert get_layer_id('backbone.blocks.11.gamma2', 12) == 12
    assert get_layer_id('backbone.level_embed', 12) == 13
    assert get_layer_id('backbone.interactions.3.injector.gamma', 12) == 13
    assert get_layer_id('decode_head.conv_seg.weight', 12) == 13
    with pytest.raises(ValueError, match='block 12.*num_layers is 12'):
        get_layer_id('backbone.blocks.12.mlp.fc1.weight', 12)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_lrs_and_weight_decays(model, scope):
    wrapper = build(model, scope, optim_cfg())
    lrs = {
        'backbone.blocks.0.attn.qkv.weight': LR * 0.95 ** 12,
        'backbone.blocks.11.mlp.fc1.weight': LR * 0.95 ** 1,
        'backbone.patch_embed.proj.weight': LR * 0.95 ** 13,
        'backbone.spm.stem.0.weight': LR,
        'decode_head.weight': LR,
    }
    wds = {
        'backbone.level_embed': 0.0,
        'backbone.blocks.3.norm1.weight': 0.0,
        'backbone.blocks.3.attn.qkv.bias': 0.0,
        'backbone.blocks.3.gamma1': 0.0,
        'backbone.blocks.3.attn.qkv.weight': 0.05,
        'backbone.spm.stem.0.weight': 0.05,
        'decode_head.weight': 0.05,
    }
    params = dict(model.named_parameters())
    if 'backbone.pos_embed.proj.weight' in params:  # PEG: a 4-D conv weight, still no decay
        assert params['backbone.pos_embed.proj.weight'].ndim == 4
        pos_names = ['backbone.pos_embed.proj.weight', 'backbone.pos_embed.proj.bias']
    else:  # MPVG: the table and its Last LNs
        assert params['backbone.pos_embed.weight'].ndim == 3
        pos_names = ['backbone.pos_embed.weight', 'backbone.pos_embed.last_norm.weight',
                     'backbone.pos_embed.last_pe_norm.weight']
    for name in pos_names:
        lrs[name], wds[name] = LR * 0.95 ** 13, 0.0
    for name, lr in lrs.items():
        assert group_of(wrapper, name)['lr'] == pytest.approx(lr, rel=1e-12), name
    for name, wd in wds.items():
        assert group_of(wrapper, name)['weight_decay'] == wd, name
    # Every parameter: the rules, and the group's params match its names.
    for group in wrapper.optimizer.param_groups:
        assert len(group['params']) == len(group['param_names'])
        for name, param in zip(group['param_names'], group['params']):
            assert param is params[name]
            lr, wd = expected(name, param)
            assert group['lr'] == pytest.approx(lr, rel=1e-12), name
            assert group['weight_decay'] == wd, name


def test_every_trainable_parameter_in_exactly_one_of_few_groups(model):
    wrapper = build(model, 'mmseg', optim_cfg())
    groups = wrapper.optimizer.param_groups
    names = [n for g in groups for n in g['param_names']]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    # Layers 0..13, each with a decay and a no-decay group.
    assert len(groups) == 2 * (DEPTH + 2)
    assert {(g['layer_id'], g['weight_decay']) for g in groups} == {
        (k, wd) for k in range(DEPTH + 2) for wd in (0.0, WD)}


def test_one_step_matches_adamw_with_the_expected_lrs(model):
    model = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    wrapper = build(model, 'mmdet', optim_cfg())
    ref_groups = [dict(params=[p], lr=lr, weight_decay=wd)
                  for name, p in reference.named_parameters()
                  for lr, wd in [expected(name, p)]]
    ref_optim = torch.optim.AdamW(ref_groups, lr=LR, betas=(0.9, 0.999), weight_decay=WD)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        p.grad = torch.randn(p.shape, generator=g)
        q.grad = p.grad.clone()
    wrapper.step()
    ref_optim.step()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert not torch.equal(p, before[name]), name
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # The first AdamW step moves each entry by about lr (and decays by lr * wd): the lrs differ.
    moved = {n: (p - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved['backbone.blocks.0.attn.qkv.weight'] == pytest.approx(LR * 0.95 ** 12, rel=1e-2)
    assert moved['backbone.patch_embed.proj.weight'] == pytest.approx(LR * 0.95 ** 13, rel=1e-2)
    assert moved['decode_head.weight'] == pytest.approx(LR, rel=1e-2)
    # Resuming: a fresh wrapper takes the state dict, groups and names included.
    resumed = build(model, 'mmdet', optim_cfg())
    resumed.load_state_dict(wrapper.state_dict())
    for old, new in zip(wrapper.optimizer.param_groups, resumed.optimizer.param_groups):
        assert (new['lr'], new['weight_decay'], new['param_names']) == (
            old['lr'], old['weight_decay'], old['param_names'])
    state = resumed.optimizer.state[model.decode_head.weight]
    torch.testing.assert_close(state['exp_avg'], 0.1 * model.decode_head.weight.grad)


@pytest.mark.filterwarnings('ignore:.*GradScaler')
def test_amp_optim_wrapper(monkeypatch):
    if not torch.cuda.is_available():  # the wrapper refuses CPU-only machines; groups do not care
        monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    model = Segmentor('PEG')
    wrapper = build(model, 'mmdet', optim_cfg('AmpOptimWrapper'))
    assert isinstance(wrapper, amp_optimizer_wrapper.AmpOptimWrapper)
    assert group_of(wrapper, 'backbone.blocks.5.attn.proj.weight')['lr'] == pytest.approx(
        LR * 0.95 ** 7, rel=1e-12)
    assert group_of(wrapper, 'backbone.pos_embed.proj.weight')['weight_decay'] == 0.0


def test_frozen_parameters_are_left_out():
    model = Segmentor('PEG')
    model.backbone.patch_embed.requires_grad_(False)
    model.backbone.blocks[0].requires_grad_(False)
    wrapper = build(model, 'mmseg', optim_cfg())
    names = {n for g in wrapper.optimizer.param_groups for n in g['param_names']}
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(('backbone.patch_embed.', 'backbone.blocks.0.')) for n in names)
    assert 'backbone.blocks.1.attn.qkv.weight' in names


class _Collect(logging.Handler):
    """Keeps the messages it is handed."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_summary_is_logged():
    logger, handler = MMLogger.get_current_instance(), _Collect()
    logger.addHandler(handler)  # an MMLogger has no parent for caplog's root handler to see
    try:
        build(Segmentor('PEG'), 'mmseg', optim_cfg())
    finally:
        logger.removeHandler(handler)
    assert sum('28 param groups' in line for line in handler.lines) == 1
    group_lines = [line for line in handler.lines if line.lstrip().startswith('layer ')]
    assert len(group_lines) == 28
    assert 'layer  0:   1 params, lr=5.133e-05' in group_lines[1]  # patch_embed.proj.weight


@pytest.mark.parametrize('paramwise, match', [
    (dict(num_layers=12), 'needs paramwise_cfg.layer_decay_rate'),
    (dict(layer_decay_rate=0.95), 'needs paramwise_cfg.num_layers'),
    (dict(num_layers=12, layer_decay_rate=0.95, decay_type='layer_wise'), 'decay_type'),
    (dict(num_layers=0, layer_decay_rate=0.95), 'num_layers must be a positive int'),
    (dict(num_layers=12, layer_decay_rate=1.5), r'layer_decay_rate must be in \(0, 1\]'),
])
def test_bad_paramwise_cfg_is_a_clear_error(paramwise, match):
    with pytest.raises(ValueError, match=match):
        build(nn.Linear(2, 2), 'mmseg', optim_cfg(**paramwise))
