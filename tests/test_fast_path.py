"""The fast path against the reference path: the gather-based deformable-attention sampler against
mmcv's PyTorch form, the whole backbone (every method, odd sizes, eval and train mode, outputs and
gradients), and the per-grid cache (reused while the weights are unchanged, recomputed after any
change, never used where gradients flow)."""
import copy

import pytest
import torch
from helpers import METHODS, small_backbone
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

from pe_dense.models import ViTAdapter
from pe_dense.models.backbones import Attention
from pe_dense.models.ops import MSDeformAttn, ms_deform_attn_gather

DETECTION = dict(window_attn=[True, True, False] * 4, window_size=3, vit_feature='last')
SEGMENTATION = dict(vit_feature='per_interaction')


def perturbed(method, seed=0, **kwargs):
    """A Tiny backbone with every parameter moved off its initial value by a little noise (so the
    zero-initialised attention weights, offsets and injector gamma all act), in eval mode."""
    model = small_backbone(method, seed=seed, init_values=0.5, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def reference_copy(model):
    ref = copy.deepcopy(model)
    ref.fast_path = False
    return ref


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def sampler_inputs(seed, shapes, b=2, q=9, m=3, d=4, p=3):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    # Locations from -0.6 to 1.6: inside, across the border and far outside the maps.
    loc = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 2.2 - 0.6
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=torch.float64)
    return value, torch.tensor(shapes), loc, weights


@pytest.mark.parametrize('seed,shapes', [(0, [(6, 5), (3, 3), (2, 1)]), (1, [(4, 7)]),
                                         (2, [(1, 1), (5, 2)])])
def test_gather_sampler_matches_mmcv_values_and_gradients(seed, shapes):
    value, spatial, loc, weights = sampler_inputs(seed, shapes)
    ours = [t.clone().requires_grad_() for t in (value, loc, weights)]
    mmcv = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn_gather(ours[0], spatial, ours[1], ours[2])
    want = multi_scale_deformable_attn_pytorch(mmcv[0], spatial, mmcv[1], mmcv[2])
    assert out.shape == want.shape == (2, 9, 12)
    assert torch.allclose(out, want, atol=1e-12)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    (out * upstream).sum().backward()
    (want * upstream).sum().backward()
    for got, exp, name in zip(ours, mmcv, ('value', 'locations', 'weights')):
        assert torch.allclose(got.grad, exp.grad, atol=1e-10), name


def test_gather_sampler_gradient_to_part_of_the_inputs():
    value, spatial, loc, weights = sampler_inputs(3, [(5, 4), (2, 3)])
    value.requires_grad_()
    out = ms_deform_attn_gather(value, spatial, loc, weights)
    (grad,) = torch.autograd.grad(out.square().sum(), value)
    value_ref = value.detach().clone().requires_grad_()
    want = multi_scale_deformable_attn_pytorch(value_ref, spatial, loc, weights)
    (grad_ref,) = torch.autograd.grad(want.square().sum(), value_ref)
    assert torch.allclose(grad, grad_ref, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda v, lo, w: ms_deform_attn_gather(v, spatial, lo, w),
        [t.detach()[:1, ..., :2].clone().requires_grad_() if t.dim() == 4 else
         t.detach()[:1].clone().requires_grad_() for t in (value, loc, weights)])


def test_fast_path_switch_reaches_every_module():
    model = ViTAdapter(fast_path=False, depth=3, interaction_indexes=[[0, 0], [1, 1], [2, 2]])
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    deform = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    assert len(attns) == 3 and len(deform) == 3 * 2 + 2
    assert not any(m.fused for m in attns) and not any(m.fast for m in deform)
    assert not model.pos_embed.cache_grid_tensors
    model.fast_path = True
    assert all(m.fused for m in attns) and all(m.fast for m in deform)
    assert model.pos_embed.cache_grid_tensors and ViTAdapter().fast_path


@pytest.mark.parametrize('method', METHODS)
def test_fast_equals_reference_in_eval_mode(method):
    # Non-square (64 x 96, global attention) and not a multiple of 32 (70 x 100, 3 x 3 windows
    # over a 5 x 7 grid, so windows are padded).
    for variant, size in ((SEGMENTATION, (64, 96)), (DETECTION, (70, 100))):
        model = perturbed(method, **variant)
        ref = reference_copy(model)
        img = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            fast_out, ref_out = model(img), ref(img)
            again = model(img)  # served from the per-grid cache
        assert max_diff(fast_out, ref_out) <= 1e-4, (method, size)
        assert all(torch.equal(a, b) for a, b in zip(fast_out, again))


@pytest.mark.parametrize('method', METHODS)
def test_fast_equals_reference_in_train_mode_outputs_and_gradients(method):
    model = perturbed(method, **DETECTION).train()
    ref = reference_copy(model)
    assert all(getattr(b.drop_path, 'drop_prob', 0.0) == 0.0 for b in model.blocks)
    img = torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(6))
    outs = []
    for m in (model, ref):
        out = m(img)
        sum((o ** 2).mean() for o in out).backward()
        outs.append(out)
    assert max_diff(*outs) <= 1e-4
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(model.named_parameters(), ref.parameters())]
    assert all(g is not None for _, g, _ in grads)
    for name, got, want in grads:
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), name


def change_in_place(model, method, how):
    """Changes one grid-cached parameter of ``method`` in place, in one of three ways."""
    pe = model.pos_embed
    target = {'AbsolutePE': pe.weight, 'LaPE': pe.norms['3'].weight if method == 'LaPE' else None,
              'PVG': pe.norms['7'].bias if method == 'PVG' else None,
              'MPVG': pe.last_pe_norm.weight if method == 'MPVG' else None}[method]
    with torch.no_grad():
        if how == 'in_place':
            target.mul_(-1.5)
        elif how == 'data':
            target.data.add_(0.3)  # .data writes do not bump the version counter
        else:
            state = model.state_dict()
            state['pos_embed.weight'] = state['pos_embed.weight'].flip(1)
            model.load_state_dict(state)


@pytest.mark.parametrize('method', ['AbsolutePE', 'LaPE', 'PVG', 'MPVG'])
def test_cache_follows_weight_changes(method):
    # 64 x 96: a 4 x 6 grid, not the 14 x 14 table, so the table is resampled and cached.
    model = perturbed(method, **SEGMENTATION)
    img = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = model(img)
    cache = model.pos_embed._grid_cache
    assert len(cache) > 0
    for how in ('in_place', 'data', 'load_state_dict'):
        change_in_place(model, method, how)
        with torch.no_grad():
            after = model(img)
            want = reference_copy(model)(img)
        assert max_diff(after, want) <= 1e-4, how
        assert max_diff(after, before) > 1e-2, how
        before = after


def test_no_cache_where_gradients_flow():
    model = perturbed('LaPE', **SEGMENTATION)
    img = torch.randn(1, 3, 64, 64)
    cache = model.pos_embed._grid_cache
    model(img)  # eval mode, but autograd records: nothing may be cached
    assert len(cache) == 0
    model.train()
    with torch.no_grad():
        model(img)
    assert len(cache) == 0
    model.eval()
    with torch.no_grad():
        model(img)
    assert len(cache) > 0
    model.train()
    assert len(cache) == 0
    # In training the chain is differentiated: the PE norms get gradients.
    sum(o.mean() for o in model(img)).backward()
    assert model.pos_embed.norms['0'].weight.grad is not None
