"""Multi-scale deformable attention against a slow, obviously-correct reference: loops over batch,
queries, heads, levels and points, with explicit bilinear sampling (zero outside the map,
align_corners=False), on random inputs, values and gradients."""
import math

import pytest
import torch

from pe_dense.models.ops import MSDeformAttn, ms_deform_attn_sample


def bilinear(level, x, y):
    """level: (H, W, D); x, y scalar tensors in [0, 1] -> (D,)."""
    h, w, _ = level.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px.item()), math.floor(py.item())
    out = torch.zeros(level.shape[-1], dtype=level.dtype)
    for yi in (y0, y0 + 1):
        for xi in (x0, x0 + 1):
            if 0 <= yi < h and 0 <= xi < w:
                weight = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
                out = out + weight * level[yi, xi]
    return out


def reference(value, shapes, locations, weights):
    b, _, m, d = value.shape
    _, q, _, n_levels, n_points, _ = locations.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, q, m, d, dtype=value.dtype)
    for bi in range(b):
        for qi in range(q):
            for mi in range(m):
                acc = torch.zeros(d, dtype=value.dtype)
                for li, (h, w) in enumerate(shapes):
                    level = value[bi, starts[li]:starts[li] + h * w, mi].reshape(h, w, d)
                    for pi in range(n_points):
                        x, y = locations[bi, qi, mi, li, pi]
                        acc = acc + weights[bi, qi, mi, li, pi] * bilinear(level, x, y)
                out[bi, qi, mi] = acc
    return out.reshape(b, q, m * d)


def random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (3, 4), (2, 2)]
    b, q, m, d, p = 2, 6, 2, 3, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    # Locations slightly outside [0, 1] too, to exercise the zero padding.
    loc = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=torch.float64)
    spatial = torch.tensor(shapes, dtype=torch.long)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    return shapes, value, spatial, start, loc, weights


@pytest.mark.parametrize('seed', [0, 1])
def test_sampling_matches_reference_values_and_gradients(seed):
    shapes, value, spatial, start, loc, weights = random_inputs(seed)
    inputs = [t.clone().requires_grad_() for t in (value, loc, weights)]
    ref_inputs = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn_sample(inputs[0], spatial, start, inputs[1], inputs[2])
    ref = reference(ref_inputs[0], shapes, ref_inputs[1], ref_inputs[2])
    assert out.shape == (2, 6, 6)
    assert torch.allclose(out, ref, atol=1e-10)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for got, want, name in zip(inputs, ref_inputs, ('value', 'locations', 'weights')):
        assert torch.allclose(got.grad, want.grad, atol=1e-9), name


def test_module_shapes_and_initial_offsets():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3, ratio=0.5)
    assert attn.value_proj.out_features == 8 and attn.output_proj.in_features == 8
    # Head h starts on the ray at angle 2*pi*h/4; point p at (p + 1) cells along it.
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(bias[0, 0, :, 0], torch.tensor([1., 2., 3.]))
    assert torch.allclose(bias[1, 1, :, 1], torch.tensor([1., 2., 3.]))
    assert torch.allclose(bias[2, 0, :, 0], torch.tensor([-1., -2., -3.]))
    shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.tensor([0, 16])
    query = torch.randn(2, 7, 16)
    ref = torch.rand(1, 7, 1, 2)
    feat = torch.randn(2, 20, 16)
    assert attn(query, ref, feat, shapes, start).shape == (2, 7, 16)
    with pytest.raises(ValueError, match='divisible'):
        MSDeformAttn(d_model=10, n_heads=4)
