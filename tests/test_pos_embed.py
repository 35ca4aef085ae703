"""Position encodings: parameter bookkeeping, errors, and each method's attention input checked
against the equations computed by hand (REFERENCE section 1)."""
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize, small_backbone

from pe_dense.models.pos_embed import build_pos_encoding


def pe_params(method, **opts):
    pe = build_pos_encoding(dict(type=method, **opts), embed_dim=192, depth=12,
                            pretrain_grid=(14, 14))
    return pe, sum(p.numel() for p in pe.parameters())


def test_parameter_bookkeeping():
    _, none = pe_params('NoPE')
    assert none == 0
    peg, n_peg = pe_params('PEG')
    assert n_peg - none == 192 * 3 * 3 + 192 == 1920
    table = 14 * 14 * 192
    assert pe_params('AbsolutePE')[1] == table
    lape, n = pe_params('LaPE')
    assert len(lape.norms) == 12 and sorted(map(int, lape.norms)) == list(range(12))
    assert n == table + 12 * 2 * 192
    pvg, n = pe_params('PVG')
    assert len(pvg.norms) == 11 and sorted(map(int, pvg.norms)) == list(range(1, 12))
    assert n == table + 11 * 2 * 192
    mpvg, n = pe_params('MPVG')
    assert len(mpvg.norms) == 11
    assert n == table + 11 * 2 * 192 + 2 * 2 * 192  # + the Last LN pair


def test_unknown_name_and_option_are_clear_errors():
    with pytest.raises(KeyError, match='AbsolutePE.*LaPE.*MPVG.*NoPE.*PEG.*PVG'):
        pe_params('RoPE')
    with pytest.raises(TypeError, match=r"\['window'\].*after_block"):
        pe_params('PEG', window=3)
    with pytest.raises(TypeError, match='last_norm_at.*norm_eps'):
        pe_params('MPVG', last_norm='output')
    with pytest.raises(ValueError, match='last_norm_at'):
        pe_params('MPVG', last_norm_at='head')
    with pytest.raises(ValueError, match='after_block'):
        pe_params('PEG', after_block=12)


# A 64 x 96 image on a model pre-trained at 64: a non-square 4 x 6 grid, the 4 x 4 table resampled.
IMG = (64, 96)
GRID = (4, 6)


def capture(model):
    """Hooks: patch tokens, each block's input and output, each attention's input, each
    injector's query and output, each extractor's (and extra extractor's) ViT-token input, and
    the input and output of the position encoding's ``final``."""
    rec = {key: {} for key in ('block_in', 'block_out', 'attn_in', 'inject_in', 'inject_out',
                               'extract_feat')}
    model.patch_embed.register_forward_hook(
        lambda m, a, out: rec.__setitem__('patches', out.flatten(1, 2)))
    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(lambda m, a, i=i: rec['block_in'].__setitem__(i, a[0]))
        blk.register_forward_hook(lambda m, a, out, i=i: rec['block_out'].__setitem__(i, out))
        blk.attn.register_forward_pre_hook(lambda m, a, i=i: rec['attn_in'].__setitem__(i, a[0]))
    for k, inter in enumerate(model.interactions):
        inter.injector.register_forward_pre_hook(
            lambda m, a, k=k: rec['inject_in'].__setitem__(k, a[0]))
        inter.injector.register_forward_hook(
            lambda m, a, out, k=k: rec['inject_out'].__setitem__(k, out))
        extractors = [inter.extractor, *(inter.extra_extractors or [])]
        for j, ext in enumerate(extractors):
            ext.register_forward_pre_hook(
                lambda m, a, key=(k, j): rec['extract_feat'].__setitem__(key, a[1]))
    pe = model.pos_embed
    original_final = pe.final

    def final(x, grid):
        y = original_final(x, grid)
        rec['final'] = (x, y)
        return y
    pe.final = final
    return rec


def ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def close(got, want, tol=1e-5):
    """Equal up to ``tol`` relative to the scale of ``want``."""
    return (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())


def resampled_table(pe):
    """The 4 x 4 table resampled by hand to the 4 x 6 grid (bicubic, align_corners=False)."""
    table = pe.weight.reshape(1, 4, 4, 192).permute(0, 3, 1, 2)
    return F.interpolate(table, size=GRID, mode='bicubic',
                         align_corners=False).flatten(2).transpose(1, 2)


def peg_by_hand(pe, x):
    """x + DWConv3x3(x as the 4 x 6 map), tokens in row-major order."""
    fmap = x.transpose(1, 2).reshape(x.shape[0], 192, *GRID)
    return x + F.conv2d(fmap, pe.proj.weight, pe.proj.bias, padding=1,
                        groups=192).flatten(2).transpose(1, 2)


def expected_block_pos(method, pe, pos):
    """pos_l by hand: LaPE's chain from block 0, PVG's and MPVG's from block 1."""
    first = {'LaPE': 0, 'PVG': 1, 'MPVG': 1}.get(method)
    out = {}
    if first is not None:
        for i in range(first, 12):
            pos = ln(pos, pe.norms[str(i)])
            out[i] = pos
    return out


VARIANTS = [('AbsolutePE', {}), ('NoPE', {}), ('PEG', {}), ('PEG', {'after_block': -1}),
            ('LaPE', {}), ('PVG', {}), ('MPVG', {}), ('MPVG', {'last_norm_at': 'output'})]


@pytest.mark.parametrize('method,opts', VARIANTS)
def test_every_block_follows_the_equations(method, opts):
    """Follows the tokens through the whole backbone on a non-square grid with non-zero injector
    gammas: the tokens entering the first injector, each block's input and attention input (all
    12 blocks), what comes between two blocks and between a block and the next injector, the
    extractors' ViT input, and the tokens handed to the pyramid. An extra PEG or Last LN anywhere,
    a PE added before instead of after an injector (or the other way round), a swapped grid in
    the PEG, or a chain off by one block fails one of these."""
    model = randomize(small_backbone(dict(type=method, **opts), pretrain_size=64))
    assert all((inter.injector.gamma.abs() > 0.1).all() for inter in model.interactions)
    rec = capture(model)
    with torch.no_grad():
        model(torch.randn(2, 3, *IMG))
        pe = model.pos_embed
        pos = resampled_table(pe) if hasattr(pe, 'weight') else None
        patches = rec['patches']
        if method in ('AbsolutePE', 'PVG', 'MPVG'):
            x = patches + pos
        elif method == 'PEG' and opts.get('after_block') == -1:
            x = peg_by_hand(pe, patches)
        else:
            x = patches
        block_pos = expected_block_pos(method, pe, pos)
        last_norm = method == 'MPVG' and opts.get('last_norm_at', 'last_block') == 'last_block'

        for k, (start, end) in enumerate(model.interaction_indexes):
            assert close(rec['inject_in'][k], x), (method, 'injector', k)
            x = rec['inject_out'][k]
            assert not close(x, rec['inject_in'][k], 1e-2)  # the injector acts
            for i in range(start, end + 1):
                assert close(rec['block_in'][i], x), (method, 'block input', i)
                want = ln(x, model.blocks[i].norm1) + block_pos.get(i, 0)
                assert close(rec['attn_in'][i], want), (method, 'attention input', i)
                x = rec['block_out'][i]
                if method == 'PEG' and i == opts.get('after_block', 0):
                    x = peg_by_hand(pe, x)
                if last_norm and i == 11:
                    x = ln(x, pe.last_norm) + ln(pos, pe.last_pe_norm)
            extractors = 3 if k == 3 else 1
            for j in range(extractors):
                assert close(rec['extract_feat'][(k, j)], x), (method, 'extractor', k, j)
        final_in, final_out = rec['final']
        assert close(final_in, x)
        if method == 'MPVG' and not last_norm:
            assert close(final_out, ln(x, pe.last_norm) + ln(pos, pe.last_pe_norm))
        else:
            assert torch.equal(final_out, final_in)
    assert set(block_pos) == {'LaPE': set(range(12)), 'PVG': set(range(1, 12)),
                              'MPVG': set(range(1, 12))}.get(method, set())


@pytest.mark.parametrize('method', ['AbsolutePE', 'LaPE', 'PVG', 'MPVG'])
def test_table_is_resampled_to_the_grid(method):
    model = small_backbone(method)
    pe = model.pos_embed
    grid = (6, 9)
    table = pe.table(grid)
    assert table.shape == (1, 54, 192)
    want = F.interpolate(pe.weight.reshape(1, 14, 14, 192).permute(0, 3, 1, 2), size=grid,
                         mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(table, want, atol=1e-6)
    assert pe.table((14, 14)) is pe.weight
