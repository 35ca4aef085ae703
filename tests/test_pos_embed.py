"""Position encodings: parameter bookkeeping, errors, and each method's attention input checked
against the equations computed by hand (REFERENCE section 1)."""
import pytest
import torch
import torch.nn.functional as F
from helpers import METHODS, randomize, small_backbone

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


def capture(model):
    """Hooks: patch tokens, each block's input and output, each attention's input."""
    rec = {'block_in': {}, 'block_out': {}, 'attn_in': {}}
    model.patch_embed.register_forward_hook(
        lambda m, a, out: rec.__setitem__('patches', out.flatten(1, 2)))
    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(lambda m, a, i=i: rec['block_in'].__setitem__(i, a[0]))
        blk.register_forward_hook(lambda m, a, out, i=i: rec['block_out'].__setitem__(i, out))
        blk.attn.register_forward_pre_hook(lambda m, a, i=i: rec['attn_in'].__setitem__(i, a[0]))
    last = model.interactions[-1].extractor
    last.register_forward_pre_hook(lambda m, a: rec.__setitem__('extract_feat', a[1]))
    return rec


def ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def expected_pos_chain(pe, first):
    """pos_l by hand: start from the table (the grid is the pre-training grid: no resampling)."""
    pos, out = pe.weight, {}
    for i in range(first, 12):
        pos = ln(pos, pe.norms[str(i)])
        out[i] = pos
    return out


@pytest.mark.parametrize('method', METHODS)
def test_attention_input_follows_the_equations(method):
    # A 64x64 image on a model pre-trained at 64: the 4x4 grid is the table's own grid.
    # init_values=0 (published): the injector adds nothing, so block 0 sees the embedded tokens.
    model = randomize(small_backbone(method, pretrain_size=64))
    with torch.no_grad():
        for inter in model.interactions:
            inter.injector.gamma.zero_()
    rec = capture(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    pe = model.pos_embed
    patches = rec['patches']
    x0 = rec['block_in'][0]
    table = getattr(pe, 'weight', None)
    if method in ('AbsolutePE', 'PVG', 'MPVG'):
        assert torch.allclose(x0, patches + table, atol=1e-6)
    else:
        assert torch.allclose(x0, patches, atol=1e-6)

    first = {'LaPE': 0, 'PVG': 1, 'MPVG': 1}.get(method)
    chain = expected_pos_chain(pe, first) if first is not None else {}
    for i in range(12):
        blk = model.blocks[i]
        want = ln(rec['block_in'][i], blk.norm1) + (chain[i] if i in chain else 0)
        assert torch.allclose(rec['attn_in'][i], want, atol=1e-5), (method, i)
    if method == 'LaPE':
        assert len(chain) == 12
    if method in ('PVG', 'MPVG'):
        assert 0 not in chain and len(chain) == 11

    # Within an interaction, block i+1 starts from block i's output, except where the method acts.
    out0 = rec['block_out'][0]
    if method == 'PEG':
        w, b = pe.proj.weight, pe.proj.bias
        fmap = out0.transpose(1, 2).reshape(1, 192, 4, 4)
        want = out0 + F.conv2d(fmap, w, b, padding=1, groups=192).flatten(2).transpose(1, 2)
        assert torch.allclose(rec['block_in'][1], want, atol=1e-5)
    else:
        assert torch.allclose(rec['block_in'][1], out0, atol=1e-6)

    # The last extractor reads the last block's tokens; MPVG's Last LN (default: after the last
    # block) gives it LN(x_L) + LN''(pos_0).
    x_last = rec['block_out'][11]
    if method == 'MPVG':
        want = ln(x_last, pe.last_norm) + ln(table, pe.last_pe_norm)
        assert torch.allclose(rec['extract_feat'], want, atol=1e-5)
    else:
        assert torch.allclose(rec['extract_feat'], x_last, atol=1e-6)


def test_mpvg_last_norm_at_output_leaves_the_extractor_alone():
    model = randomize(small_backbone(dict(type='MPVG', last_norm_at='output'), pretrain_size=64))
    rec = capture(model)
    finals = []
    orig_final = model.pos_embed.final

    def spy(x, grid):
        y = orig_final(x, grid)
        finals.append((x, y))
        return y
    model.pos_embed.final = spy
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert torch.allclose(rec['extract_feat'], rec['block_out'][11], atol=1e-6)
    x, y = finals[0]
    pe = model.pos_embed
    assert torch.allclose(y, ln(x, pe.last_norm) + ln(pe.weight, pe.last_pe_norm), atol=1e-5)


def test_peg_before_first_injector():
    model = randomize(small_backbone(dict(type='PEG', after_block=-1), pretrain_size=64))
    with torch.no_grad():
        for inter in model.interactions:
            inter.injector.gamma.zero_()
    rec = capture(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    p = rec['patches']
    fmap = p.transpose(1, 2).reshape(1, 192, 4, 4)
    pe = model.pos_embed
    want = p + F.conv2d(fmap, pe.proj.weight, pe.proj.bias, padding=1,
                        groups=192).flatten(2).transpose(1, 2)
    assert torch.allclose(rec['block_in'][0], want, atol=1e-5)
    assert torch.allclose(rec['block_in'][1], rec['block_out'][0], atol=1e-6)


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
