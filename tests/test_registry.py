"""Position encodings through mmengine's registry: plain and scoped names (``'pe_dense.MPVG'``),
outside any default scope and inside mmdet's and mmseg's (where their runners build models), with
the backbone's defaults passed in and the same clear errors for unknown names and options."""
import pytest
from mmengine.registry import MODELS, DefaultScope

import mmdet.registry  # noqa: F401  (the scoped registries the runners switch to)
import mmseg.registry  # noqa: F401
from pe_dense.models.pos_embed import MPVG, PEG, build_pos_encoding

DEFAULTS = dict(embed_dim=24, depth=5, pretrain_grid=(3, 4))


@pytest.mark.parametrize('scope', [None, 'mmdet', 'mmseg'])
@pytest.mark.parametrize('name', ['MPVG', 'pe_dense.MPVG'])
def test_plain_and_scoped_names_build_with_the_backbone_defaults(scope, name):
    with DefaultScope.overwrite_default_scope(scope):
        pe = build_pos_encoding(dict(type=name, last_norm_at='output', norm_eps=1e-3), **DEFAULTS)
    assert type(pe) is MPVG and pe.last_norm_at == 'output'
    assert (pe.embed_dim, pe.depth, pe.pretrain_grid) == (24, 5, (3, 4))
    assert pe.weight.shape == (1, 12, 24)  # the 3 x 4 table of the given defaults
    assert sorted(map(int, pe.norms)) == [1, 2, 3, 4] and pe.last_norm.eps == 1e-3


def test_scoped_name_in_a_config_reaches_the_backbone():
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(dict(type='ViTAdapter', depth=2, interaction_indexes=[[0, 0], [1, 1]],
                                  pos_embed=dict(type='pe_dense.PEG', after_block=1)))
    assert type(model.pos_embed) is PEG and model.pos_embed.after_block_index == 1
    assert model.pos_embed.embed_dim == 192 and model.pos_embed.depth == 2


@pytest.mark.parametrize('name', ['RoPE', 'pe_dense.RoPE', 'torch.nn.Linear', 'mmdet.MPVG'])
def test_unknown_names_list_the_valid_ones(name):
    valid = r'AbsolutePE.*LaPE.*MPVG.*NoPE.*PEG.*PVG.*pe_dense\.MPVG'
    with DefaultScope.overwrite_default_scope('mmdet'), pytest.raises(KeyError, match=valid):
        build_pos_encoding(dict(type=name), **DEFAULTS)


def test_unknown_option_of_a_scoped_name_lists_the_options():
    with pytest.raises(TypeError, match=r"MPVG got unknown option\(s\) \['last_norm'\].*"
                                        r"last_norm_at.*norm_eps"):
        build_pos_encoding(dict(type='pe_dense.MPVG', last_norm='output'), **DEFAULTS)
    with pytest.raises(TypeError, match=r"\['embed_dim'\]"):  # a backbone default, not an option
        build_pos_encoding(dict(type='pe_dense.PEG', embed_dim=8), **DEFAULTS)
