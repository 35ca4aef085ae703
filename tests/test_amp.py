"""Mixed precision on the CPU (bfloat16 autocast): the deformable attention samples in float32 as
the published kernel requires, the gather sampler's row indices stay integers, every method's
forward stays close to float32, a training step gives finite gradients, and the per-grid cache
keeps autocast and float32 values apart."""
import pytest
import torch
from helpers import DETECTION, METHODS, perturbed, rel_diff

from pe_dense.models.ops import MSDeformAttn, ms_deform_attn_gather
from pe_dense.models.ops import ms_deform_attn as msda_module

BF16 = dict(device_type='cpu', dtype=torch.bfloat16)
# Error of a bfloat16-autocast forward, max |amp - fp32| over max |fp32| per output map, measured
# on the backbone below (70 x 100 input, 3 x 3 windows): 0.006 to 0.012 for the six methods, with
# AVX-512 and with AVX2 kernels, 1 and 2 threads (bfloat16 rounding, not the kernels, sets it).
BACKBONE_TOL = 0.02


@pytest.mark.parametrize('method', METHODS)
def test_bf16_autocast_forward_is_close_to_fp32(method):
    model = perturbed(method, **DETECTION)
    img = torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(img)
        with torch.autocast(**BF16):
            got = model(img)
    assert all(o.dtype == torch.float32 for o in got)  # the output BatchNorms run in float32
    assert rel_diff(got, want) <= BACKBONE_TOL, method


def test_deformable_attention_samples_in_float32(monkeypatch):
    seen = []
    gather = msda_module.ms_deform_attn_gather

    def spy(value, spatial_shapes, locations, weights):
        seen.append((value.dtype, locations.dtype, weights.dtype,
                     torch.is_autocast_enabled('cpu')))
        return gather(value, spatial_shapes, locations, weights)
    monkeypatch.setattr(msda_module, 'ms_deform_attn_gather', spy)

    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    shapes = torch.tensor([[6, 9], [3, 5]])
    start = torch.tensor([0, 54])
    query = torch.randn(2, 7, 32)
    ref = torch.rand(1, 7, 1, 2)
    feat = torch.randn(2, 69, 32)
    want = attn(query, ref, feat, shapes, start)
    with torch.autocast(**BF16):
        got = attn(query, ref, feat, shapes, start)
    assert seen == [(torch.float32,) * 3 + (False,)] * 2
    assert got.dtype == torch.bfloat16  # output_proj under autocast
    # bfloat16 projections and output: 0.020 measured.
    assert ((got.float() - want).abs().max() / want.abs().max()).item() <= 0.04
    # Called directly with bfloat16 inputs, the sampler works in float32 and answers in bfloat16.
    value = torch.randn(2, 69, 4, 8).bfloat16()
    locations = torch.rand(2, 7, 4, 2, 3, 2).bfloat16()
    weights = torch.rand(2, 7, 4, 2, 3).bfloat16()
    out = msda_module.ms_deform_attn_sample(value, shapes, start, locations, weights)
    assert out.dtype == torch.bfloat16 and seen[-1][:3] == (torch.float32,) * 3
    exact = ms_deform_attn_gather(value.float(), shapes, locations.float(), weights.float())
    torch.testing.assert_close(out.float(), exact, rtol=1e-2, atol=1e-2)


def test_sampling_keeps_its_precision_on_a_large_map():
    # A 100 x 168 map, as at stride 8 of an 800 x 1344 image: a bfloat16 location in [0.5, 1)
    # is a multiple of 1/256, more than half a cell of 168. Measured: 0.006 with the sampling in
    # float32, 1.39 with the locations left in bfloat16.
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=1, n_heads=4, n_points=4)
    with torch.no_grad():
        attn.attention_weights.weight.normal_(0, 0.3)
    h, w = 100, 168
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                            indexing='ij')
    ref = torch.stack([xs.flatten(), ys.flatten()], -1)[None, :, None]
    feat = torch.randn(1, h * w, 32, generator=torch.Generator().manual_seed(1))
    shapes, start = torch.tensor([[h, w]]), torch.tensor([0])
    with torch.no_grad():
        want = attn(feat, ref, feat, shapes, start)
        with torch.autocast(**BF16):
            got = attn(feat, ref, feat, shapes, start).float()
    assert ((got - want).abs().max() / want.abs().max()).item() <= 0.02


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_gather_rows_are_integers_whatever_the_dtype(dtype):
    # Levels of 40 x 50 and 20 x 25 cells: rows run into the thousands, past the integers that
    # bfloat16 (256) and float16 (2048) hold exactly; corner coordinates (< 52) are exact in both.
    shapes = [(40, 50), (20, 25)]
    g = torch.Generator().manual_seed(0)
    corner = torch.stack([torch.randint(-1, 51, (2, 5, 3, 2, 4), generator=g),
                          torch.randint(-1, 41, (2, 5, 3, 2, 4), generator=g)], -1)
    rows = msda_module._corner_rows(corner.to(dtype), shapes, b=2, m=3)
    want = msda_module._corner_rows(corner.double(), shapes, b=2, m=3)
    assert rows.dtype == torch.int64 and torch.equal(rows, want)
    # Spot check of the formula: batch 1, query 4, head 2, level 1, point 3.
    x0, y0 = corner[1, 4, 2, 1, 3].tolist()
    padded = [(h + 3) * (w + 3) for h, w in shapes]
    row = sum(padded) + padded[0] + (y0 + 1) * (25 + 3) + (x0 + 1)
    assert rows[1, 4, 2, 1, 3].item() == row * 3 + 2


def test_bf16_autocast_training_step_has_finite_gradients():
    model = perturbed('MPVG', with_cp=False, **DETECTION).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    img = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast(**BF16):
        outs = model(img)
        loss = sum((o.float() ** 2).mean() for o in outs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    # The deformable attention's offsets and attention weights learn through the sampler.
    attn = model.interactions[1].injector.attn
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
    assert attn.attention_weights.weight.grad.abs().sum() > 0
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    with torch.no_grad(), torch.autocast(**BF16):
        assert all(torch.isfinite(o).all() for o in model.eval()(img))


def test_grid_cache_keeps_autocast_and_fp32_apart():
    model = perturbed('LaPE', **DETECTION)
    img = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    cache = model.pos_embed._grid_cache
    with torch.no_grad():
        fp32 = model(img)
        n_fp32 = len(cache)
        with torch.autocast(**BF16):
            amp = model(img)
        assert len(cache) == 2 * n_fp32  # own entries under autocast
        again = model(img)
    assert all(torch.equal(a, b) for a, b in zip(fp32, again))
    assert rel_diff(amp, fp32) <= BACKBONE_TOL
