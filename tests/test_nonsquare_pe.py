"""A PE table of a non-square pre-training grid, used on a square grid with the same number of
tokens: it must be resampled, never reused as it is. timm releases before 1.0.29 returned the
table unchanged from ``resample_abs_pos_embed`` in this case (the lower bound in setup.py); and
the declared lower bounds cover the APIs the code calls."""
import re

import torch
import torch.nn.functional as F

from pe_dense.models import PEViT

ROOT_SETUP = __file__.rsplit('/tests/', 1)[0] + '/setup.py'


def written_out_resample(table, old, new):
    """Bicubic, align_corners False, no anti-aliasing: ``(1, h*w, C)`` -> ``(1, H*W, C)``."""
    c = table.shape[-1]
    grid = table.reshape(1, *old, c).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=new, mode='bicubic', align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(1, -1, c)


def test_non_square_table_on_a_square_grid_of_the_same_token_count():
    torch.manual_seed(0)
    # img_size 48 x 192 -> a 3 x 12 table (36 positions); a 96 x 96 input -> a 6 x 6 grid (36).
    model = PEViT(arch=dict(embed_dim=32, depth=1, num_heads=2), img_size=(48, 192),
                  pooling='gap', drop_path_rate=0.0).eval()
    with torch.no_grad():
        model.pos_embed.weight.copy_(torch.randn(1, 36, 32))
        want = written_out_resample(model.pos_embed.weight, (3, 12), (6, 6))
        assert (want - model.pos_embed.weight).abs().max() > 0.1  # a different table
        torch.testing.assert_close(model.pos_embed.table((6, 6)), want, rtol=0, atol=1e-5)
        tokens = torch.zeros(1, 36, 32)
        torch.testing.assert_close(model.pos_embed.embed(tokens, (6, 6)), want, rtol=0,
                                   atol=1e-5)
        # The forward pass uses it: the patch tokens entering block 0 are patches + that table.
        seen = []
        model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        img = torch.randn(1, 3, 96, 96)
        model(img)
        patches = model.patch_embed(img).flatten(1, 2)
        torch.testing.assert_close(seen[0], patches + want, rtol=0, atol=1e-5)


def test_declared_lower_bounds_cover_what_the_code_uses():
    """timm: the resampling fix above (1.0.29); torch: ``torch.compiler.is_exporting``, called in
    every forward, exists from 2.7 on (timm's own helper says the same)."""
    text = open(ROOT_SETUP).read()

    def bound(name):
        return tuple(int(p) for p in re.search(rf"'{name}>=([0-9.]+)'", text).group(1).split('.'))

    assert bound('timm') >= (1, 0, 29)
    assert bound('torch') >= (2, 7)
