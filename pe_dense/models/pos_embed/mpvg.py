"""MPVG: PVG plus the initial PE in the Last LN, ``y = LN(x_L) + LN''(pos_0)``.

ViT-Adapter has no final LayerNorm, so where the Last LN sits is a choice (``last_norm_at``):

- ``'last_block'`` (default): right after the last ViT block, where DeiT's final norm sits. Every
  consumer of the ViT's last tokens sees it: the last interaction's extractors and the tokens added
  to the feature pyramid, and the pre-trained ``norm`` weights act on the tokens they were
  trained on.
- ``'output'``: on the ViT tokens after the last interaction only, the tokens added to the pyramid;
  the extractors see the raw tokens.

In a classifier the Last LN is the final LayerNorm (``replaces_final_norm``): it acts per token on
the tokens after the last block, before global average pooling, and both places are that same
place. MPVG takes no class token: the MPVG paper states that it is incompatible with the class
token, and pools with GAP.
"""
from typing import Dict

from torch import Tensor, nn

from pe_dense.registry import POS_ENCODINGS

from .base import Grid
from .pvg import PVG

LAST_NORM_PLACES = ('last_block', 'output')


@POS_ENCODINGS.register_module()
class MPVG(PVG):
    """MPVG: PVG's chain and a Last LN pair, ``last_norm`` (tokens) and ``last_pe_norm``
    (initial PE)."""

    replaces_final_norm = True

    def __init__(self, *, last_norm_at: str = 'last_block', **kwargs) -> None:
        super().__init__(**kwargs)
        if self.num_prefix_tokens:
            raise ValueError(
                f'MPVG cannot take a class token (num_prefix_tokens={self.num_prefix_tokens}): '
                'the MPVG paper states that MPVG is incompatible with the class token and pools '
                "with global average pooling; use pooling='gap' (PEViT)")
        if last_norm_at not in LAST_NORM_PLACES:
            raise ValueError(f'MPVG last_norm_at must be one of {LAST_NORM_PLACES}, '
                             f'got {last_norm_at!r}')
        self.last_norm_at = last_norm_at
        eps = self.norms[str(self.first_block)].eps
        self.last_norm = nn.LayerNorm(self.embed_dim, eps=eps)
        self.last_pe_norm = nn.LayerNorm(self.embed_dim, eps=eps)

    def _last_norm(self, x: Tensor, grid: Grid) -> Tensor:
        params = [*self.table_params(), *self.last_pe_norm.parameters()]
        pe = self.cached('last_pe', grid, params, lambda: self.last_pe_norm(self.table(grid)))
        return self.last_norm(x) + pe

    def after_block(self, index: int, x: Tensor, grid: Grid) -> Tensor:
        if self.last_norm_at == 'last_block' and index == self.depth - 1:
            return self._last_norm(x, grid)
        return x

    def final(self, x: Tensor, grid: Grid) -> Tensor:
        return self._last_norm(x, grid) if self.last_norm_at == 'output' else x

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = super().convert_checkpoint(state_dict)
        # DeiT's final LayerNorm `norm.*` is MPVG's Last LN; `pe_norm_last.*` / `norm_pe.*` are
        # the names MPVG ImageNet checkpoints may give LN''.
        for key in list(out):
            head, _, leaf = key.rpartition('.')
            if head == 'norm':
                out[f'pos_embed.last_norm.{leaf}'] = out.pop(key)
            elif head in ('pe_norm_last', 'norm_pe', 'last_pe_norm'):
                out[f'pos_embed.last_pe_norm.{leaf}'] = out.pop(key)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f', last_norm_at={self.last_norm_at!r}'
