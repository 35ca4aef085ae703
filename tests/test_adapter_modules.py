"""The adapter's modules where they act in training or are read only through the backbone: the
spatial prior module against a written-out conv / BN / ReLU / max-pool computation, and the
extractor's stochastic depth (training: whole samples of the ConvFFN branch dropped, the kept
ones scaled by 1 / (1 - p), as timm's DropPath draws them; eval: identity)."""
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize
from timm.layers import DropPath

from pe_dense.models.adapters import SpatialPriorModule
from pe_dense.models.adapters.modules import Extractor
from pe_dense.models.backbones.vit_adapter import deform_inputs


def ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def batch_norm_by_hand(x, bn):
    """Eval-mode BatchNorm: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    def per_channel(t):
        return t.view(1, -1, 1, 1)
    return ((x - per_channel(bn.running_mean)) / torch.sqrt(per_channel(bn.running_var) + bn.eps)
            * per_channel(bn.weight) + per_channel(bn.bias))


def conv1x1_by_hand(x, conv):
    return torch.einsum('bchw,oc->bohw', x, conv.weight[:, :, 0, 0]) + conv.bias.view(1, -1, 1, 1)


def test_spatial_prior_module_matches_a_written_out_computation():
    """ViT-Adapter's stem: three (3x3 conv without bias -> BN -> ReLU), the first with stride 2,
    then a 3x3 max-pool with stride 2 (c1, stride 4); c2, c3, c4 each one more (3x3 conv stride 2
    -> BN -> ReLU); each level projected by a 1x1 conv with bias. Non-square 64 x 96 input,
    randomised BN statistics, float64."""
    torch.manual_seed(0)
    spm = randomize(SpatialPriorModule(inplanes=8, embed_dim=12)).double().eval()
    img = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    negatives = []

    def conv_bn_relu(x, conv, bn, stride):
        pre = batch_norm_by_hand(F.conv2d(x, conv.weight, None, stride=stride, padding=1), bn)
        negatives.append((pre < 0).double().mean().item())
        return torch.where(pre > 0, pre, torch.zeros_like(pre))

    with torch.no_grad():
        outs = spm(img)
        s = spm.stem
        x = conv_bn_relu(img, s[0], s[1], 2)
        x = conv_bn_relu(x, s[3], s[4], 1)
        x = conv_bn_relu(x, s[6], s[7], 1)
        c1 = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        c2 = conv_bn_relu(c1, spm.conv2[0], spm.conv2[1], 2)
        c3 = conv_bn_relu(c2, spm.conv3[0], spm.conv3[1], 2)
        c4 = conv_bn_relu(c3, spm.conv4[0], spm.conv4[1], 2)
        want = [conv1x1_by_hand(c, fc)
                for c, fc in zip((c1, c2, c3, c4), (spm.fc1, spm.fc2, spm.fc3, spm.fc4))]
    # The ReLUs act: a good share of every pre-activation is negative.
    assert min(negatives) > 0.2, negatives
    assert [tuple(o.shape) for o in outs] == [(2, 12, 16, 24), (2, 12, 8, 12), (2, 12, 4, 6),
                                              (2, 12, 2, 3)]
    for out, ref in zip(outs, want):
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


def drop_masks(p, batch, count, seed, dtype):
    """The per-sample factors timm's DropPath(p) multiplies ``count`` successive branches of a
    ``batch``-sample input by, drawn from the global generator after ``manual_seed(seed)``:
    0 (dropped) or 1 / (1 - p) (kept), each ``(batch, 1, 1)``."""
    torch.manual_seed(seed)
    drop = DropPath(p).train()
    return [drop(torch.ones(batch, 1, 1, dtype=dtype)) for _ in range(count)]


def test_extractor_stochastic_depth_drops_whole_samples_of_the_ffn_branch():
    """c' = c + MSDA(LN(c), LN(x)); out = c' + DropPath(ConvFFN(LN(c'))): in training each
    sample's FFN branch is dropped with probability p or kept and scaled by 1 / (1 - p), with
    the masks timm's DropPath draws under the same generator state; in eval the branch is
    always added, unscaled."""
    p, batch, dim = 0.4, 64, 24
    torch.manual_seed(0)
    ext = randomize(Extractor(dim, num_heads=3, n_points=2, n_levels=1, cffn_ratio=0.5,
                              drop_path=p)).double()
    grid, levels = (2, 3), [(4, 6), (2, 3), (1, 2)]
    _, deform = deform_inputs(grid, levels, torch.device('cpu'))
    query = torch.randn(batch, sum(h * w for h, w in levels), dim, dtype=torch.float64)
    feat = torch.randn(batch, grid[0] * grid[1], dim, dtype=torch.float64)
    with torch.no_grad():
        attn = ext.attn(ln(query, ext.query_norm), deform[0], ln(feat, ext.feat_norm), deform[1],
                        deform[2], shapes=deform[3])
        mid = query + attn
        branch = ext.ffn(ln(mid, ext.ffn_norm), levels)
        assert branch.abs().max() > 0.1 * mid.abs().max()

        ext.train()
        torch.manual_seed(7)
        out = ext(query, feat, deform, levels)
        (mask,) = drop_masks(p, batch, 1, seed=7, dtype=torch.float64)
        want = mid + branch * mask
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())
        dropped = (mask == 0).double().mean().item()
        assert 0.2 < dropped < 0.6, dropped  # about p of the samples (fixed seed)
        kept = mask[mask != 0]
        assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)))

        ext.eval()
        out = ext(query, feat, deform, levels)
        want = mid + branch
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())


@pytest.mark.parametrize('drop_path', [0.0, 0.3])
def test_extractor_without_stochastic_depth_is_deterministic_in_training(drop_path):
    """p = 0 adds the branch for every sample in training too; p > 0 drops some."""
    torch.manual_seed(0)
    ext = randomize(Extractor(24, num_heads=3, n_points=2, n_levels=1, cffn_ratio=0.5,
                              drop_path=drop_path)).double()
    levels, grid = [(4, 6), (2, 3), (1, 2)], (2, 3)
    _, deform = deform_inputs(grid, levels, torch.device('cpu'))
    query = torch.randn(32, 32, 24, dtype=torch.float64)
    feat = torch.randn(32, 6, 24, dtype=torch.float64)
    with torch.no_grad():
        trained = ext.train()(query, feat, deform, levels)
        evaluated = ext.eval()(query, feat, deform, levels)
    same = [torch.equal(a, b) for a, b in zip(trained, evaluated)]
    assert all(same) if drop_path == 0 else not all(same)
