"""Learned absolute PE (ViT/DeiT default): ``x_0 = patches + pos``, nothing inside the blocks."""
from torch import Tensor

from pe_dense.registry import POS_ENCODINGS

from .base import Grid, LearnedTable


@POS_ENCODINGS.register_module()
class AbsolutePE(LearnedTable):
    """``x_0 = patches + resample(pos, grid)``; the blocks are standard."""

    def embed(self, x: Tensor, grid: Grid) -> Tensor:
        return x + self.table(grid)
