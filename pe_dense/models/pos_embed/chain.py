"""The layer-wise LayerNorm chain shared by LaPE, PVG and MPVG.

``pos_l = LNpe_l(pos_{l-1})`` for the blocks ``l >= first_block``, where the chain starts from the
learned table resampled to the input grid; ``pos_l`` is added to the attention input of block l:
``x' = x + Attn(LN1(x) + pos_l)``. With prefix tokens (a classifier's class token) the chain runs
over their slots too, in front of the grid rows, as LaPE's code does with DeiT's class slot: each
LayerNorm acts on every row. The chain depends only on the grid, so it is computed once per
forward, not once per block (and, with the fast path in eval mode, once per grid).
"""
import re
from typing import Dict, List, Optional

from torch import Tensor, nn

from .base import Grid, LearnedTable


class LayerNormChain(LearnedTable):
    """A learned table feeding one PE LayerNorm per block from ``first_block`` on.

    The norms live in ``norms[str(l)]`` for block l, so LaPE-style checkpoint keys
    ``blocks.{l}.pe_norm.*`` map one to one onto ``pos_embed.norms.{l}.*``.
    """

    first_block = 0

    def __init__(self, *, norm_eps: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.norms = nn.ModuleDict({
            str(i): nn.LayerNorm(self.embed_dim, eps=norm_eps)
            for i in range(self.first_block, self.depth)
        })

    def block_pos(self, grid: Grid) -> List[Optional[Tensor]]:
        return self.cached('block_pos', grid, [*self.table_params(), *self.norms.parameters()],
                           lambda: self._chain(grid))

    def _chain(self, grid: Grid) -> List[Optional[Tensor]]:
        pos = self.table(grid)
        out: List[Optional[Tensor]] = [None] * self.first_block
        for i in range(self.first_block, self.depth):
            pos = self.norms[str(i)](pos)
            out.append(pos)
        return out

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = {}
        for key, value in super().convert_checkpoint(state_dict).items():
            m = re.fullmatch(r'blocks\.(\d+)\.pe_norm\.(weight|bias)', key)
            if m and int(m.group(1)) >= self.first_block:
                key = f'pos_embed.norms.{m.group(1)}.{m.group(2)}'
            elif m:
                continue  # a LaPE norm for a block this method gives no PE
            out[key] = value
        return out
