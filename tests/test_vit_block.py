"""The ViT block that ViTAdapter and PEViT share, where it acts only in training: stochastic depth
on both residual branches (each sample's branch dropped with probability p or kept and scaled by
1 / (1 - p), with the masks timm's DropPath draws under the same generator state; identity in
eval), and the PE entering the attention input only."""
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize
from timm.layers import DropPath

from pe_dense.models.backbones import Block


def ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def drop_masks(p, batch, count, seed, dtype):
    """timm DropPath(p)'s factors for ``count`` successive branches after ``manual_seed(seed)``:
    0 or 1 / (1 - p) per sample, each ``(batch, 1, 1)``."""
    torch.manual_seed(seed)
    drop = DropPath(p).train()
    return [drop(torch.ones(batch, 1, 1, dtype=dtype)) for _ in range(count)]


@pytest.mark.parametrize('layer_scale', [True, False])
@pytest.mark.parametrize('with_pos', [False, True])
def test_stochastic_depth_on_both_branches(layer_scale, with_pos):
    """x' = x + m1 * gamma1 * Attn(LN1(x) [+ pos]), out = x' + m2 * gamma2 * MLP(LN2(x')), the
    masks m1, m2 drawn per sample in that order (training); m1 = m2 = 1 in eval."""
    p, batch, dim, grid = 0.4, 64, 24, (2, 5)
    torch.manual_seed(0)
    block = randomize(Block(dim, 3, drop_path=p, layer_scale=layer_scale)).double()
    x = torch.randn(batch, grid[0] * grid[1], dim, dtype=torch.float64)
    pos = torch.randn(1, grid[0] * grid[1], dim, dtype=torch.float64) if with_pos else None

    def attn_branch(t):
        y = ln(t, block.norm1) + (pos if with_pos else 0)
        y = block.attn(y, grid)
        return block.gamma1 * y if layer_scale else y

    def mlp_branch(t):
        y = block.mlp(ln(t, block.norm2))
        return block.gamma2 * y if layer_scale else y

    with torch.no_grad():
        block.train()
        torch.manual_seed(3)
        out = block(x, grid, pos=pos)
        m1, m2 = drop_masks(p, batch, 2, seed=3, dtype=torch.float64)
        mid = x + attn_branch(x) * m1
        want = mid + mlp_branch(mid) * m2
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())
        # Both branches are dropped for about p of the samples, independently (fixed seed).
        for mask in (m1, m2):
            assert 0.2 < (mask == 0).double().mean().item() < 0.6
        assert not torch.equal(m1, m2)
        full_mid = x + attn_branch(x)
        full = full_mid + mlp_branch(full_mid)
        assert (out - full).abs().max() > 0.1 * full.abs().max()  # dropping matters

        block.eval()
        out = block(x, grid, pos=pos)
        torch.testing.assert_close(out, full, rtol=1e-9, atol=1e-9 * full.abs().max().item())


def test_no_stochastic_depth_is_identity_in_training():
    torch.manual_seed(0)
    block = randomize(Block(24, 3, drop_path=0.0)).double()
    x = torch.randn(8, 10, 24, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(block.train()(x, (2, 5)), block.eval()(x, (2, 5)))
