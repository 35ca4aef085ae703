"""The layer-wise lr decay optimizer constructor: registries, the published rule's (lr scale,
weight decay) of every parameter for every method against a written-out table, the 'exempt'
option, grouping, one AdamW step, AMP wrapper, frozen parameters, num_layers against the
backbone's depth and config errors."""
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

# The ADE20K 160k settings of ViT-Adapter.
LR, WD, RATE, DEPTH = 12e-5, 0.01, 0.95, 12
NAME = 'ViTAdapterLayerDecayOptimizerConstructor'
METHODS = ('AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG', 'MPVG', 'RoPEMixed')


class Segmentor(nn.Module):
    """The smallest whole model: a Tiny ViT-Adapter and a 1x1 conv as decode head."""

    def __init__(self, method: str, **backbone):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = ViTAdapter(pos_embed=dict(type=method), drop_path_rate=0.0, **backbone)
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


# ---------------------------------------------------------------------------------------------
# The published rule, written out. ViT-Adapter's constructor: id 0 for `backbone.pos_embed`,
# `backbone.cls_token` and `backbone.patch_embed.*`, i + 1 for `backbone.blocks.{i}.*`, 13 for
# the rest; scale 0.95^(13 - id); no decay iff 1-D or the name ends in `.bias` (its bare-name test
# never matches a `backbone.`-prefixed name). Every PE parameter, by method, under the names the
# published code gives it (the table is `backbone.pos_embed`; LaPE's chain norms are
# `blocks.{l}.pe_norm`, PVG/MPVG take that layout; PEG's conv and MPVG's Last LN pair keep their
# names and so fall into "the rest").

def chain(first):
    """(scale, weight decay) of the PE LayerNorms of blocks first..11: block l's scale, no decay."""
    return {f'backbone.pos_embed.norms.{block}.{leaf}': (RATE ** (12 - block), 0.0)
            for block in range(first, 12) for leaf in ('weight', 'bias')}


TABLE = {'backbone.pos_embed.weight': (RATE ** 13, WD)}
PUBLISHED_PE = {
    'AbsolutePE': dict(TABLE),
    'NoPE': {},
    'PEG': {'backbone.pos_embed.proj.weight': (1.0, WD),
            'backbone.pos_embed.proj.bias': (1.0, 0.0)},
    'LaPE': {**TABLE, **chain(0)},
    'PVG': {**TABLE, **chain(1)},
    'MPVG': {**TABLE, **chain(1),
             'backbone.pos_embed.last_norm.weight': (1.0, 0.0),
             'backbone.pos_embed.last_norm.bias': (1.0, 0.0),
             'backbone.pos_embed.last_pe_norm.weight': (1.0, 0.0),
             'backbone.pos_embed.last_pe_norm.bias': (1.0, 0.0)},
    # rope-vit: frequencies in no_weight_decay; block l's go with block l (scale of id l + 1).
    'RoPEMixed': {f'backbone.pos_embed.freqs.{block}': (RATE ** (12 - block), 0.0)
                  for block in range(12)},
}
# Parameters every method has, (scale, weight decay) by the same rule.
COMMON = {
    'backbone.patch_embed.proj.weight': (RATE ** 13, WD),
    'backbone.patch_embed.proj.bias': (RATE ** 13, 0.0),
    'backbone.level_embed': (1.0, WD),  # 2-D: decayed in the published runs
    'backbone.blocks.0.norm1.weight': (RATE ** 12, 0.0),
    'backbone.blocks.0.attn.qkv.weight': (RATE ** 12, WD),
    'backbone.blocks.0.attn.qkv.bias': (RATE ** 12, 0.0),
    'backbone.blocks.0.gamma1': (RATE ** 12, 0.0),
    'backbone.blocks.5.attn.proj.weight': (RATE ** 7, WD),
    'backbone.blocks.11.mlp.fc1.weight': (RATE ** 1, WD),
    'backbone.blocks.11.gamma2': (RATE ** 1, 0.0),
    'backbone.spm.stem.0.weight': (1.0, WD),
    'backbone.spm.stem.1.weight': (1.0, 0.0),
    'backbone.spm.fc4.bias': (1.0, 0.0),
    'backbone.interactions.0.injector.gamma': (1.0, 0.0),
    'backbone.interactions.0.injector.attn.sampling_offsets.weight': (1.0, WD),
    'backbone.interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight': (1.0, WD),
    'backbone.up.weight': (1.0, WD),
    'backbone.norm4.bias': (1.0, 0.0),
    'decode_head.weight': (1.0, WD),
    'decode_head.bias': (1.0, 0.0),
}


def published(name, ndim):
    """(scale, weight decay) of any parameter by the published rule, with the PE names mapped to
    the published ones by the table above."""
    if name.startswith('backbone.pos_embed'):
        return None  # every PE parameter is in PUBLISHED_PE
    if name.startswith('backbone.patch_embed.'):
        layer = 0
    elif name.startswith('backbone.blocks.'):
        layer = int(name.split('.')[2]) + 1
    else:
        layer = 13
    return RATE ** (13 - layer), 0.0 if ndim == 1 or name.endswith('.bias') else WD


def exempt(name, ndim):
    """(scale, weight decay) by pe-dense's exemption: every PE parameter at id 0 without decay,
    level_embed without decay."""
    if name.startswith('backbone.pos_embed'):
        return RATE ** 13, 0.0
    scale, wd = published(name, ndim)
    return scale, 0.0 if name == 'backbone.level_embed' else wd


def group_of(wrapper, name: str) -> dict:
    """The one param group that holds parameter ``name``."""
    groups = [g for g in wrapper.optimizer.param_groups if name in g['param_names']]
    assert len(groups) == 1, name
    return groups[0]


def check_every_parameter(wrapper, model, want):
    """Each param group's params match its names, and each parameter has the (lr, wd) of
    ``want(name, param)``; returns the number of parameters checked."""
    params = dict(model.named_parameters())
    seen = 0
    for group in wrapper.optimizer.param_groups:
        assert len(group['params']) == len(group['param_names'])
        for name, param in zip(group['param_names'], group['params']):
            assert param is params[name]
            scale, wd = want(name, param)
            assert group['lr'] == pytest.approx(LR * scale, rel=1e-12), name
            assert group['weight_decay'] == wd, name
            seen += 1
    return seen


@pytest.fixture(scope='module', params=METHODS)
def method_model(request):
    return request.param, Segmentor(request.param)


def test_registered_in_root_and_visible_from_mmdet_and_mmseg():
    for registry in (mmdet.registry.OPTIM_WRAPPER_CONSTRUCTORS,
                     mmseg.registry.OPTIM_WRAPPER_CONSTRUCTORS):
        assert registry.get(NAME) is ViTAdapterLayerDecayOptimizerConstructor


def test_layer_ids():
    assert get_layer_id('backbone.patch_embed.proj.weight', 12) == 0
    assert get_layer_id('backbone.pos_embed.weight', 12) == 0
    assert get_layer_id('backbone.cls_token', 12) == 0
    assert get_layer_id('backbone.pos_embed.norms.0.weight', 12) == 1
    assert get_layer_id('backbone.pos_embed.norms.11.bias', 12) == 12
    assert get_layer_id('backbone.pos_embed.last_norm.bias', 12) == 13
    assert get_layer_id('backbone.pos_embed.proj.weight', 12) == 13
    assert get_layer_id('backbone.pos_embed.last_norm.bias', 12, 'exempt') == 0
    assert get_layer_id('backbone.pos_embed.norms.11.bias', 12, 'exempt') == 0
    assert get_layer_id('backbone.blocks.0.attn.qkv.weight', 12) == 1
    assert get_layer_id('backbone.blocks.11.gamma2', 12) == 12
    assert get_layer_id('backbone.level_embed', 12) == 13
    assert get_layer_id('backbone.interactions.3.injector.gamma', 12) == 13
    assert get_layer_id('decode_head.conv_seg.weight', 12) == 13
    with pytest.raises(ValueError, match='block 12.*num_layers is 12'):
        get_layer_id('backbone.blocks.12.mlp.fc1.weight', 12)
    with pytest.raises(ValueError, match='block 12.*num_layers is 12'):
        get_layer_id('backbone.pos_embed.norms.12.weight', 12)
    assert get_layer_id('backbone.pos_embed.freqs.0', 12) == 1
    assert get_layer_id('backbone.pos_embed.freqs.11', 12) == 12
    assert get_layer_id('backbone.pos_embed.freqs.11', 12, 'exempt') == 0


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_published_rule_for_every_method_against_the_written_out_table(method_model, scope):
    method, model = method_model
    wrapper = build(model, scope, optim_cfg())
    params = dict(model.named_parameters())
    pe_names = {n for n in params if n.startswith('backbone.pos_embed')}
    assert pe_names == set(PUBLISHED_PE[method])  # the table lists every PE parameter
    for name, (scale, wd) in {**COMMON, **PUBLISHED_PE[method]}.items():
        group = group_of(wrapper, name)
        assert group['lr'] == pytest.approx(LR * scale, rel=1e-12), name
        assert group['weight_decay'] == wd, name

    def want(name, param):
        return PUBLISHED_PE[method].get(name) or published(name, param.ndim)
    assert check_every_parameter(wrapper, model, want) == len(params)


def test_exempt_option_keeps_the_earlier_rule(method_model):
    method, model = method_model
    wrapper = build(model, 'mmseg', optim_cfg(num_layers=DEPTH, layer_decay_rate=RATE,
                                              pos_embed_rule='exempt'))
    assert group_of(wrapper, 'backbone.level_embed')['weight_decay'] == 0.0
    for name in PUBLISHED_PE[method]:
        group = group_of(wrapper, name)
        assert (group['layer_id'], group['weight_decay']) == (0, 0.0), name
    assert check_every_parameter(wrapper, model, lambda n, p: exempt(n, p.ndim)) == len(
        list(model.parameters()))


def test_every_trainable_parameter_in_exactly_one_of_few_groups():
    model = Segmentor('MPVG')
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


@pytest.mark.parametrize('num_layers', [24, 6, 11, 13])
def test_num_layers_must_equal_the_backbone_depth(num_layers):
    with pytest.raises(ValueError, match=f'num_layers is {num_layers}, but the backbone has 12 '
                                         r'ViT blocks.*num_layers=12'):
        build(Segmentor('AbsolutePE'), 'mmseg', optim_cfg(num_layers=num_layers,
                                                          layer_decay_rate=RATE))


def test_num_layers_of_a_shallow_backbone():
    model = Segmentor('LaPE', depth=4, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
    with pytest.raises(ValueError, match='num_layers is 12, but the backbone has 4 ViT blocks'):
        build(model, 'mmseg', optim_cfg())
    wrapper = build(model, 'mmseg', optim_cfg(num_layers=4, layer_decay_rate=RATE))
    # 4 blocks: scale 0.95^(5 - id); block 0 and LaPE's norm of block 0 at id 1.
    for name, scale in (('backbone.patch_embed.proj.weight', RATE ** 5),
                        ('backbone.blocks.0.attn.qkv.weight', RATE ** 4),
                        ('backbone.pos_embed.norms.0.weight', RATE ** 4),
                        ('backbone.pos_embed.norms.3.weight', RATE ** 1),
                        ('backbone.blocks.3.mlp.fc2.weight', RATE ** 1),
                        ('decode_head.weight', 1.0)):
        assert group_of(wrapper, name)['lr'] == pytest.approx(LR * scale, rel=1e-12), name


def test_frozen_blocks_still_count_towards_the_depth():
    model = Segmentor('PEG')
    model.backbone.blocks[11].requires_grad_(False)
    wrapper = build(model, 'mmseg', optim_cfg())
    assert group_of(wrapper, 'backbone.blocks.10.attn.qkv.weight')['lr'] == pytest.approx(
        LR * RATE ** 2, rel=1e-12)
    with pytest.raises(ValueError, match='no backbone.blocks'):
        build(nn.Sequential(nn.Linear(2, 2)), 'mmseg', optim_cfg())


def test_one_step_matches_adamw_with_the_expected_lrs():
    model = Segmentor('MPVG')
    reference = copy.deepcopy(model)
    wrapper = build(model, 'mmdet', optim_cfg())

    def want(name, p):
        scale, wd = PUBLISHED_PE['MPVG'].get(name) or published(name, p.ndim)
        return LR * scale, wd
    ref_groups = [dict(params=[p], lr=lr, weight_decay=wd)
                  for name, p in reference.named_parameters() for lr, wd in [want(name, p)]]
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
    assert moved['backbone.pos_embed.norms.1.weight'] == pytest.approx(LR * 0.95 ** 11, rel=1e-2)
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
    assert group_of(wrapper, 'backbone.pos_embed.proj.weight')['weight_decay'] == WD


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
    assert sum('28 param groups' in line and 'pos_embed_rule=published' in line
               for line in handler.lines) == 1
    group_lines = [line for line in handler.lines if line.lstrip().startswith('layer ')]
    assert len(group_lines) == 28
    assert 'layer  0:   1 params, lr=6.16e-05' in group_lines[1]  # patch_embed.proj.weight


@pytest.mark.parametrize('paramwise, match', [
    (dict(num_layers=12), 'needs paramwise_cfg.layer_decay_rate'),
    (dict(layer_decay_rate=0.95), 'needs paramwise_cfg.num_layers'),
    (dict(num_layers=12, layer_decay_rate=0.95, decay_type='layer_wise'), 'decay_type'),
    (dict(num_layers=0, layer_decay_rate=0.95), 'num_layers must be a positive int'),
    (dict(num_layers=12, layer_decay_rate=1.5), r'layer_decay_rate must be in \(0, 1\]'),
    (dict(num_layers=12, layer_decay_rate=0.95, pos_embed_rule='none'),
     r"pos_embed_rule must be one of \('published', 'exempt'\)"),
])
def test_bad_paramwise_cfg_is_a_clear_error(paramwise, match):
    with pytest.raises(ValueError, match=match):
        build(nn.Linear(2, 2), 'mmseg', optim_cfg(**paramwise))
