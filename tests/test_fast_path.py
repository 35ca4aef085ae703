"""The fast path against the reference path: the gather-based deformable-attention sampler against
mmcv's PyTorch form, the whole backbone (every method, odd sizes, eval and train mode, outputs and
gradients), windowed attention in the 4-D layout fused kernels take, and the per-grid cache
(hits, an O(1) validity check, recomputed after each kind of weight change, never used where
gradients flow)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import DETECTION, METHODS, SEGMENTATION, assert_close_to_scale, perturbed, rel_diff
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
from torch import nn
from torch.overrides import TorchFunctionMode

from pe_dense.models import ViTAdapter
from pe_dense.models.backbones import Attention
from pe_dense.models.grid_cache import GridCache
from pe_dense.models.ops import MSDeformAttn, ms_deform_attn_gather


def reference_copy(model):
    ref = copy.deepcopy(model)
    ref.fast_path = False
    return ref


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
    assert not any(m.fast_path for m in attns + deform)
    assert not model.pos_embed.cache_grid_tensors
    model.fast_path = True
    assert all(m.fast_path for m in attns + deform)
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
        # Outputs of scale 15-25; measured relative differences 4e-7 to 8e-7 with AVX-512 and
        # AVX2 kernels, 1 and 2 threads.
        assert_close_to_scale(fast_out, ref_out, rel=1e-5, msg=f'{method} {size}')
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
    assert_close_to_scale(*outs, rel=1e-5, msg=method)  # measured 8e-7 to 1.2e-6
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(model.named_parameters(), ref.parameters())]
    assert all(g is not None for _, g, _ in grads)
    for name, got, want in grads:
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), name


def cached_param(model, method):
    """One parameter that ``method`` reads into its grid cache."""
    pe = model.pos_embed
    return {'AbsolutePE': lambda: pe.weight, 'LaPE': lambda: pe.norms['3'].weight,
            'PVG': lambda: pe.norms['7'].bias, 'MPVG': lambda: pe.last_pe_norm.weight}[method]()


def set_param(model, name, value):
    owner, _, leaf = name.rpartition('.')
    setattr(model.get_submodule(owner), leaf, value)


def change_weight(model, method, how):
    """Changes one grid-cached parameter of ``method`` in one of the ways :class:`GridCache`
    documents as seen."""
    target = cached_param(model, method)
    name = next(n for n, p in model.named_parameters() if p is target)
    if how == 'in_place':
        with torch.no_grad():
            target.mul_(-1.5)
    elif how.startswith('optimizer'):
        kind = how.split('_')[1]
        opt = torch.optim.AdamW([target], lr=0.5, foreach=kind == 'foreach',
                                fused=True if kind == 'fused' else None)
        target.grad = torch.randn_like(target)
        opt.step()
        target.grad = None
    elif how == 'load_state_dict':
        state = model.state_dict()
        state[name] = state[name].flip(-1) * 2 + 0.5
        model.load_state_dict(state)
    elif how == 'replaced':
        set_param(model, name, nn.Parameter(target.detach().flip(-1) * 2 + 0.5))
    else:  # .data assignment: the version counter stays, the storage changes
        target.data = target.detach().flip(-1) * 2 + 0.5


HOW = ('in_place', 'optimizer_single', 'optimizer_foreach', 'optimizer_fused',
       'load_state_dict', 'replaced', 'data_assignment')
# The other methods share the cache machinery: a write, a fused step and a storage swap suffice.
SOME_HOW = ('in_place', 'optimizer_fused', 'data_assignment')


@pytest.mark.parametrize('method', ['AbsolutePE', 'LaPE', 'PVG', 'MPVG'])
def test_cache_hits_and_follows_weight_changes(method):
    # 64 x 96: a 4 x 6 grid, not the 14 x 14 table, so the table is resampled and cached.
    model = perturbed(method, **SEGMENTATION)
    img = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    cache, deform_cache = model.pos_embed._grid_cache, model._deform_cache
    with torch.no_grad():
        before = model(img)
        hits = cache.hits, deform_cache.hits
        again = model(img)
    assert cache.hits > hits[0] and deform_cache.hits > hits[1]
    assert all(torch.equal(a, b) for a, b in zip(before, again))
    for how in HOW if method == 'AbsolutePE' else SOME_HOW:
        misses = cache.misses
        change_weight(model, method, how)
        with torch.no_grad():
            after = model(img)
            want = reference_copy(model)(img)
        assert cache.misses > misses, how
        assert rel_diff(after, want) <= 1e-5, how
        assert rel_diff(after, before) > 1e-3, how
        before = after


def test_writes_through_data_need_a_clear():
    """In-place writes through the ``.data`` alias keep the parameter's version counter and
    storage: documented as not seen, until ``clear`` or a ``train()`` / ``eval()`` switch."""
    model = perturbed('AbsolutePE', **SEGMENTATION)
    img = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        before = model(img)
        model.pos_embed.weight.data.mul_(-1.0)
        stale = model(img)
        model.eval()
        fresh = model(img)
        want = reference_copy(model)(img)
    assert all(torch.equal(a, b) for a, b in zip(before, stale))
    assert rel_diff(fresh, want) <= 1e-5 and rel_diff(fresh, before) > 1e-3


class Recorder(TorchFunctionMode):
    """Records the name of every torch function and tensor method called."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, '__name__', str(func)))
        return func(*args, **(kwargs or {}))


def test_grid_cache_check_reads_no_values():
    params = [nn.Parameter(torch.randn(1, 196, 192)), nn.Parameter(torch.randn(192))]
    cache = GridCache()
    calls = []
    cache.get('table', params, lambda: calls.append(1) or 'value')
    with Recorder() as recorder:
        assert cache.get('table', params, lambda: calls.append(1) or 'other') == 'value'
    assert calls == [1] and (cache.hits, cache.misses) == (1, 1)
    # Only metadata: no comparison, copy or reduction of the values (no device sync on a GPU).
    assert set(recorder.names) <= {'data_ptr', 'shape', '_version', 'device', 'dtype', '__get__'}


def test_grid_cache_keys_on_device_dtype_and_autocast():
    p = torch.randn(3, 4)
    cache = GridCache()
    values = iter(range(10))

    def get(tensor):
        return cache.get('k', [tensor], lambda: next(values))

    assert get(p) == 0 and get(p) == 0
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert get(p) == 1 and get(p) == 1
    with torch.autocast('cpu', dtype=torch.float16):
        assert get(p) == 2
    with torch.inference_mode():
        assert get(p) == 3
    q = p.double()
    assert get(q) == 4 and get(p) == 0 and len(cache) == 5
    p.add_(1)  # an in-place write bumps the version counter
    assert get(p) == 5 and get(p) == 5


def test_grid_cache_entries_from_tensors_end_at_any_optimizer_step():
    p, other = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
    cache = GridCache()
    values = iter(range(10))

    def get(params):
        return cache.get('k', params, lambda: next(values))

    assert get([p]) == 0 and get([]) == 1
    opt = torch.optim.SGD([other], lr=0.1, fused=True)  # a fused step, of another parameter
    other.grad = torch.ones(4)
    opt.step()
    assert p._version == 0  # nothing in p says it could have changed
    assert get([p]) == 2 and get([]) == 1  # an entry read from no tensor stays


def test_windowed_attention_hands_sdpa_4d_tensors(monkeypatch):
    shapes = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        shapes.append((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return sdpa(q, k, v, **kwargs)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    attn = Attention(24, 3, window_size=4, fast_path=True).eval()
    x = torch.randn(2, 6 * 9, 24)
    with torch.no_grad():
        attn(x, (6, 9))
    # 6 x 9 padded to 8 x 12: 2 x 3 windows of 16 tokens per image.
    assert shapes == [((12, 3, 16, 8),) * 3]


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
