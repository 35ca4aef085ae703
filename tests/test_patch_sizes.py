"""ViTAdapter with any patch size: the ViT token map is resized to each output's own size. Checked
against a written-out computation (the tokens captured after each interaction, resized with
F.interpolate to the size the padded image gives each stride, through the output BatchNorm's
affine map), for patch 8, 14 and 32, detection and segmentation variants, non-square inputs and
inputs that are not multiples of 32; patch 16 equals the published fixed factors (x4, x2, x1,
x0.5); timm's patch-14 layer-scale ViT loads and its blocks compute what timm's compute."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import randomize

from pe_dense.models import ViTAdapter

DIM = 48
VARIANTS = {
    'detection': dict(window_attn=[True, False] * 2, window_size=3, vit_feature='last'),
    'segmentation': dict(vit_feature='per_interaction'),
}


def backbone(patch, variant, pretrain_size=None):
    torch.manual_seed(0)
    model = ViTAdapter(embed_dim=DIM, depth=4, num_heads=2, deform_num_heads=6,
                       interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], patch_size=patch,
                       pretrain_size=pretrain_size or 4 * patch, drop_path_rate=0.0,
                       **VARIANTS[variant])
    return randomize(model.eval(), seed=patch)


def written_out(model, img, scale_factors=None):
    """The outputs computed from the tokens of each interaction and the outputs without ViT
    features: ``norm_i(c_i + resize(tokens))``, in eval mode ``BN(a + b) = BN(a) + w * b / s``."""
    tokens = []
    hooks = [blk.register_forward_hook(lambda m, a, out: tokens.append(out[0]))
             for blk in model.interactions]
    mode = model.vit_feature
    with torch.no_grad():
        outs = model(img)
        for h in hooks:
            h.remove()
        model.vit_feature = 'none'
        plain = model(img)
        model.vit_feature = mode
    h, w = (math.ceil(s / 32) * 32 for s in img.shape[-2:])
    grid = (math.ceil(h / model.patch_size), math.ceil(w / model.patch_size))
    tokens = tokens[-4:]
    if mode == 'last':
        tokens = [model.pos_embed.final(tokens[-1], grid)] * 4
    want = []
    for i, (stride, t, base) in enumerate(zip((4, 8, 16, 32), tokens, plain)):
        fmap = t.transpose(1, 2).reshape(img.shape[0], DIM, *grid)
        if scale_factors:
            if scale_factors[i] != 1:
                fmap = F.interpolate(fmap, scale_factor=scale_factors[i], mode='bilinear',
                                     align_corners=False)
        else:
            fmap = F.interpolate(fmap, size=(h // stride, w // stride), mode='bilinear',
                                 align_corners=False)
        norm = getattr(model, f'norm{i + 1}')
        gain = (norm.weight / torch.sqrt(norm.running_var + norm.eps))[None, :, None, None]
        want.append(base + gain * fmap)
    return outs, want, plain


def assert_rel_close(got, want, rel):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= rel * scale + 1e-7, (i, err, scale)


@pytest.mark.parametrize('variant', list(VARIANTS))
@pytest.mark.parametrize('patch', [8, 14, 32])
@pytest.mark.parametrize('size', [(64, 96), (70, 100)])
def test_any_patch_size_resizes_the_tokens_to_each_output(patch, variant, size):
    model = backbone(patch, variant)
    img = torch.randn(2, 3, *size)
    outs, want, plain = written_out(model, img)
    h, w = (math.ceil(s / 32) * 32 for s in size)
    assert [tuple(o.shape) for o in outs] == [(2, DIM, h // s, w // s) for s in (4, 8, 16, 32)]
    # The ViT part is not negligible: it moves every output by far more than the tolerance.
    for a, b in zip(outs, plain):
        assert (a - b).abs().max() > 0.05 * b.abs().max()
    assert_rel_close(outs, want, 1e-5)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_patch_16_equals_the_published_fixed_factors(variant):
    model = backbone(16, variant, pretrain_size=64)
    img = torch.randn(1, 3, 96, 64)
    outs, want, _ = written_out(model, img, scale_factors=(4, 2, 1, 0.5))
    assert_rel_close(outs, want, 1e-6)


def test_timm_patch14_layer_scale_vit_loads_and_its_blocks_match(tmp_path):
    """A DINOv2-style timm ViT (patch 14, layer scale ls1/ls2) as a plain timm state dict."""
    torch.manual_seed(1)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=56, patch_size=14, embed_dim=DIM, depth=4, num_heads=2, num_classes=0,
        init_values=0.5).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    path = tmp_path / 'vit_patch14_ls.pth'
    torch.save(ref.state_dict(), path)
    model = ViTAdapter(embed_dim=DIM, depth=4, num_heads=2, deform_num_heads=6,
                       interaction_indexes=[[0, 1], [2, 3]], patch_size=14, pretrain_size=56,
                       drop_path_rate=0.0,
                       init_cfg=dict(type='Pretrained', checkpoint=str(path))).eval()
    model.init_weights()
    for i in range(4):
        assert torch.equal(model.blocks[i].gamma1, ref.blocks[i].ls1.gamma)
        assert torch.equal(model.blocks[i].gamma2, ref.blocks[i].ls2.gamma)
    x = torch.randn(2, 16, DIM)
    with torch.no_grad():
        emb = model.pos_embed.embed(model.patch_embed(torch.randn(1, 3, 56, 56)).flatten(1, 2),
                                    (4, 4))
        assert emb.shape == (1, 16, DIM)
        for i in range(4):
            want = ref.blocks[i](x)
            torch.testing.assert_close(model.blocks[i](x, (4, 4)), want, rtol=1e-5,
                                       atol=1e-5 * want.abs().max().item())
            x = want
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
