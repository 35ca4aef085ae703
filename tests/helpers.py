"""Small shared builders for the tests."""
import torch

from pe_dense.models import ViTAdapter

METHODS = ('AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG', 'MPVG')


def small_backbone(method='AbsolutePE', seed=0, **kwargs):
    """A full-width Tiny backbone (so the method's own modules are the real ones) in eval mode."""
    torch.manual_seed(seed)
    kwargs.setdefault('drop_path_rate', 0.0)
    model = ViTAdapter(pos_embed=dict(type=method) if isinstance(method, str) else method, **kwargs)
    return model.eval()


def randomize(model, seed=1):
    """Random values in every parameter and BN buffer, so that zero-initialised pieces (the
    injector's gamma, LayerNorm biases) do not hide a wrong wiring."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.2)
                    + (1.0 if name.endswith('norm.weight') or 'gamma' in name else 0.0))
        for name, b in model.named_buffers():
            if name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model
