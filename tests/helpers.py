"""Small shared builders for the tests."""
import torch
from torch import nn

from pe_dense.models import ViTAdapter

METHODS = ('AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG', 'MPVG')
DETECTION = dict(window_attn=[True, True, False] * 4, window_size=3, vit_feature='last')
SEGMENTATION = dict(vit_feature='per_interaction')


def small_backbone(method='AbsolutePE', seed=0, **kwargs):
    """A full-width Tiny backbone (so the method's own modules are the real ones) in eval mode."""
    torch.manual_seed(seed)
    kwargs.setdefault('drop_path_rate', 0.0)
    model = ViTAdapter(pos_embed=dict(type=method) if isinstance(method, str) else method, **kwargs)
    return model.eval()


def randomize(model, seed=1):
    """Random values in every parameter and BN buffer, so that no piece hides a wrong wiring:
    norm weights 1 + N(0, 0.2^2) and every bias N(0, 0.2^2) (not the initial 1 and 0), linear and
    conv weights N(0, 1 / fan_in) (activations stay of order 1), layer-scale and injector gammas
    1 + N(0, 0.2^2) (the published injector gamma starts at 0), PE tables and level embeddings
    N(0, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * std + mean)

    with torch.no_grad():
        done = set()
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._NormBase)):
                normal(m.weight, 0.2, 1.0)
                normal(m.bias, 0.2)
                if getattr(m, 'running_var', None) is not None:
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                    normal(m.running_mean, 0.1)
            elif isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel()
                normal(m.weight, fan_in ** -0.5)
                if m.bias is not None:
                    normal(m.bias, 0.2)
            else:
                continue
            done.update(id(p) for p in m.parameters(recurse=False))
        for name, p in model.named_parameters():
            if id(p) in done:
                continue
            if p.dim() == 1:  # gamma1, gamma2 of the blocks, gamma of the injectors
                normal(p, 0.2, 1.0)
            else:  # position-encoding tables, level embeddings
                normal(p, 0.5)
    return model


def perturbed(method, seed=0, **kwargs):
    """A Tiny backbone with every parameter moved off its initial value by a little noise (so the
    zero-initialised attention weights, offsets and injector gamma all act), in eval mode."""
    model = small_backbone(method, seed=seed, init_values=0.5, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def rel_diff(a, b):
    """max |a - b| / max |b| over a sequence of tensor pairs (the error relative to b's scale)."""
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b))


def assert_close_to_scale(actual, expected, rel, floor=1e-6, msg=''):
    """``max |actual - expected| <= rel * max(max |expected|, floor)``, per tensor pair.

    The tolerance follows the magnitude of the values, so the check holds whatever the CPU's
    kernels (AVX2 or AVX-512, the thread count) do to fp32 rounding, which grows with the values;
    ``floor`` keeps it from shrinking to nothing for outputs near zero. A sequence of tensors is
    checked pair by pair."""
    if isinstance(actual, torch.Tensor):
        actual, expected = [actual], [expected]
    assert len(actual) == len(expected), (len(actual), len(expected))
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, (msg, i, a.shape, e.shape)
        scale = max(e.abs().max().item(), floor) if e.numel() else floor
        diff = (a - e).abs().max().item() if e.numel() else 0.0
        assert diff <= rel * scale, (
            f'{msg} [{i}]: max|diff| {diff:.3g} > {rel:g} x scale {scale:.3g}')
