"""LaPE (Yu et al., ICCV 2023): layer-wise PE through a LayerNorm per block, none at the input.

``x_0 = patches``; ``pos_l = LNpe_l(pos_{l-1})`` with ``pos_{-1} = pos``, for l = 0 .. L-1;
``x' = x + Attn(LN1(x) + pos_l)``.
"""
from pe_dense.registry import POS_ENCODINGS

from .chain import LayerNormChain


@POS_ENCODINGS.register_module()
class LaPE(LayerNormChain):
    """LaPE: 12 PE LayerNorms for a 12-block ViT, every block gets a PE, the input none."""

    first_block = 0
