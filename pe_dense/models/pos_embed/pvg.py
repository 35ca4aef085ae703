"""PVG (Lee et al., AAAI 2025): the absolute PE at the input and a LayerNorm chain from block 1 on.

``x_0 = patches + pos``; block 0 is standard; ``pos_0 = pos``, ``pos_l = LNpe_l(pos_{l-1})`` for
l >= 1, added to the attention input of block l.
"""
from torch import Tensor

from pe_dense.registry import POS_ENCODINGS

from .base import Grid
from .chain import LayerNormChain


@POS_ENCODINGS.register_module()
class PVG(LayerNormChain):
    """PVG: 11 PE LayerNorms for a 12-block ViT (blocks 1..11), the resampled table at the input."""

    first_block = 1

    def embed(self, x: Tensor, grid: Grid) -> Tensor:
        return x + self.table(grid)
