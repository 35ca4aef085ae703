"""CPVT's positional encoding generator (PEG): a depth-wise 3x3 convolution of the token map,
added back to the tokens, after one block; no absolute table. Prefix tokens (a class token) are not
part of the map and pass through unchanged."""
import math
from typing import Dict

import torch
from torch import Tensor, nn

from pe_dense.registry import POS_ENCODINGS

from .base import Grid, PositionEncoding


@POS_ENCODINGS.register_module()
class PEG(PositionEncoding):
    """``x = DWConv3x3(x as an H x W map) + x`` after block ``after_block``.

    Args:
        after_block: the block after which the PEG acts. 0 (default) is CPVT's placement, after the
            first encoder block; inside ViT-Adapter that is after the first injector, so the first
            injector's query carries no position. -1 places the PEG on the patch tokens before the
            first injector instead.

    The conv starts as in the released CPVT/Twins code: weights normal(0, sqrt(2 / fan_out)),
    fan_out = 3 * 3 * out_channels / groups, bias 0.
    """

    def __init__(self, *, after_block: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not -1 <= after_block < self.depth:
            raise ValueError(f'PEG after_block must be -1 (before the first injector) or a block '
                             f'index in [0, {self.depth - 1}], got {after_block}')
        self.after_block_index = after_block
        self.proj = nn.Conv2d(self.embed_dim, self.embed_dim, 3, padding=1, groups=self.embed_dim)
        self._init_proj()

    def _init_proj(self) -> None:
        """The released CPVT/Twins initialisation of the PEG conv (Twins' ``_init_weights``):
        weight ~ normal(0, sqrt(2 / fan_out)) with fan_out = 3 * 3 * out_channels / groups
        (9 for the depth-wise conv, std 0.471), bias 0."""
        conv = self.proj
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(conv.bias)

    def _generate(self, x: Tensor, grid: Grid) -> Tensor:
        """``(B, P + N, C)`` -> the same, with the PEG added to the N patch tokens."""
        prefix, patches = self.split_prefix(x)
        b, n, c = patches.shape
        fmap = patches.transpose(1, 2).reshape(b, c, grid[0], grid[1])
        patches = patches + self.proj(fmap).flatten(2).transpose(1, 2)
        return torch.cat([prefix, patches], dim=1) if self.num_prefix_tokens else patches

    def embed(self, x: Tensor, grid: Grid) -> Tensor:
        return self._generate(x, grid) if self.after_block_index == -1 else x

    def after_block(self, index: int, x: Tensor, grid: Grid) -> Tensor:
        return self._generate(x, grid) if index == self.after_block_index else x

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = super().convert_checkpoint(state_dict)
        # CPVT / Twins release: pos_block.0.proj.0.{weight,bias} (or pos_block.proj.0.*).
        for key in list(out):
            for prefix in ('pos_block.0.proj.0.', 'pos_block.proj.0.'):
                if key.startswith(prefix):
                    out['pos_embed.proj.' + key[len(prefix):]] = out.pop(key)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f', after_block={self.after_block_index}'
