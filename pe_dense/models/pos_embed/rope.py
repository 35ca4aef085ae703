"""Rotary position embedding for ViTs (Heo et al., "Rotary Position Embedding for Vision
Transformer", ECCV 2024; official code naver-ai/rope-vit): RoPE-Axial and RoPE-Mixed.

In every block the queries and keys (not the values) are rotated after the qkv projection: channel
pairs ``(2i, 2i + 1)`` of each head, read as complex numbers ``q_i``, become
``q_i * exp(j * angle_i(t))`` for patch token ``t``, so that ``Re(q_i(t) conj(k_i(s)))`` depends on
the positions only through ``angle_i(t) - angle_i(s)``, a function of the offset ``t - s``.
Patch positions are integer indices ``x = t mod W``, ``y = t div W`` (rope-vit; a larger grid
extrapolates); with ``coords='rescale'`` they are scaled to the pre-training grid,
``x * W0 / W`` and ``y * H0 / H`` (EVA-02's interpolation). Prefix tokens (a class token) are not
rotated.

- **RoPE-Axial** (no parameters, ``theta=100``): frequencies ``f_k = 1 / theta^(4k / d)``,
  k = 0 .. d/4 - 1 (d the head channels); pair k is rotated by ``x * f_k``, pair ``d/4 + k`` by
  ``y * f_k``.
- **RoPE-Mixed** (``theta=10``): per block and head, learned frequency vectors ``f_x``, ``f_y``
  (``d/2`` each); pair i is rotated by ``x * f_x[i] + y * f_y[i]``. Initialised as rope-vit does
  (timm's ``init_random_2d_freqs``): at a random angle ``a`` per block and head, the first d/4
  pairs along ``(cos a, sin a) * f_k``, the others along the orthogonal direction
  ``(cos(a + pi/2), sin(a + pi/2)) * f_k``. Checkpoint keys ``pos_embed.freqs.{l}``
  ``(2, M, d/2)`` (``f_x``, ``f_y``) for block l; exempt from weight decay as in rope-vit (see
  :mod:`pe_dense.engine.layer_decay`).

``with_ape=True`` adds the learned absolute table at the input as well (rope-vit's "+APE" rows;
keys ``pos_embed.weight`` and, with a class token, ``pos_embed.prefix_weight``, as AbsolutePE).

Windowed attention (ViT-Adapter's detection blocks) rotates q and k before the windows are cut,
so each token keeps its global coordinates on the whole grid; inside a window the offsets between
tokens, and so the attention logits, are exactly those of the global grid. (Since the logits
depend only on offsets, coordinates local to each window would give the same attention; the
zero q and k of the padded positions stay zero under any rotation.)
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from timm.layers.pos_embed_sincos import get_mixed_freqs, init_random_2d_freqs
from torch import Tensor, nn

from pe_dense.registry import POS_ENCODINGS

from .base import Grid, LearnedTable, PositionEncoding

COORDS = ('extrapolate', 'rescale')


def axial_frequencies(head_dim: int, theta: float) -> Tensor:
    """RoPE-Axial's frequencies as ``(2, 1, d/2)`` (``f_x``, ``f_y``) vectors: ``f_x`` holds
    ``1 / theta^(4k / d)`` in its first d/4 entries and zeros after, ``f_y`` the reverse."""
    mag = 1.0 / theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim)
    zeros = torch.zeros_like(mag)
    return torch.stack([torch.cat([mag, zeros]), torch.cat([zeros, mag])])[:, None]


class RotaryPE(LearnedTable):
    """Base of the rotary methods: token coordinates, the optional absolute table, and
    :meth:`block_rope` from per-block ``(2, M or 1, d/2)`` frequencies (:meth:`frequencies`).

    Args:
        theta: base of the frequencies ``1 / theta^(4k / d)``.
        coords: ``'extrapolate'`` (rope-vit: integer patch indices on any grid) or
            ``'rescale'`` (EVA-02: indices scaled to the pre-training grid).
        with_ape: also add the learned absolute table at the input ("+APE").

    Raises:
        ValueError: for an unknown ``coords``, a ``theta`` that is not a finite number > 1, a
            ``with_ape`` that is not a bool, a missing ``num_heads`` or head channels that are
            not a multiple of 4.
    """

    def __init__(self, *, theta: float = 100.0, coords: str = 'extrapolate',
                 with_ape: bool = False, **kwargs) -> None:
        # The table exists only with with_ape; without it this is a plain PositionEncoding.
        if with_ape:
            LearnedTable.__init__(self, **kwargs)
        else:
            PositionEncoding.__init__(self, **kwargs)
        if coords not in COORDS:
            raise ValueError(f'coords must be one of {COORDS}, got {coords!r}')
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) \
                or not math.isfinite(theta) or theta <= 1:
            raise ValueError(f'{type(self).__name__}: theta must be a number > 1 (the base of the '
                             f'frequencies 1 / theta^(4k/d); rope-vit uses 100 for RoPE-Axial, 10 '
                             f'for RoPE-Mixed), got {theta!r}')
        if not isinstance(with_ape, bool):
            raise ValueError(f'{type(self).__name__}: with_ape must be True or False, got '
                             f'{with_ape!r}')
        if not self.num_heads:
            raise ValueError(f'{type(self).__name__} needs num_heads (the backbone passes it); '
                             'build it through ViTAdapter or PEViT or pass num_heads=')
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            raise ValueError(f'{type(self).__name__} needs head channels (embed_dim / num_heads '
                             f'= {self.embed_dim} / {self.num_heads}) that are a multiple of 4')
        self.head_dim = self.embed_dim // self.num_heads
        self.theta = float(theta)
        self.coords = coords
        self.with_ape = with_ape

    def frequencies(self, index: int) -> Tensor:
        """``(2, M or 1, d/2)``: ``f_x`` and ``f_y`` of block ``index``."""
        raise NotImplementedError

    def frequency_params(self) -> List[Tensor]:
        """The parameters :meth:`frequencies` reads."""
        return []

    def coordinates(self, grid: Grid, device: torch.device) -> tuple:
        """``(x, y)``, each ``(H*W,)`` float32, of the patch tokens in row-major order."""
        h, w = grid
        # x = t mod W, y = t div W for token t, built from the two axes (no modulo, which ONNX
        # export of a free grid size does not take).
        y, x = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                              torch.arange(w, device=device, dtype=torch.float32), indexing='ij')
        x, y = x.reshape(-1), y.reshape(-1)
        if self.coords == 'rescale':
            x = x * (self.pretrain_grid[1] / w)
            y = y * (self.pretrain_grid[0] / h)
        return x, y

    def block_rope(self, grid: Grid) -> List[Optional[Tensor]]:
        return self.cached('rope', grid, self.frequency_params(), lambda: self._rope(grid))

    def _rope(self, grid: Grid) -> List[Tensor]:
        x, y = self.coordinates(grid, self.frequencies(0).device)
        # get_mixed_freqs: (2, M, d/2) frequencies -> (M, N, 2d) sines then cosines, computed in
        # float32 (also under autocast).
        return [get_mixed_freqs(self.frequencies(i), x, y, dtype=torch.float32)
                for i in range(self.depth)]

    def embed(self, x: Tensor, grid: Grid) -> Tensor:
        return x + self.table(grid) if self.with_ape else x

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        if self.with_ape:
            return super().convert_checkpoint(state_dict)
        return PositionEncoding.convert_checkpoint(self, state_dict)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_heads={self.num_heads}, theta={self.theta}, '
                f'coords={self.coords!r}, with_ape={self.with_ape}')


@POS_ENCODINGS.register_module()
class RoPEAxial(RotaryPE):
    """RoPE-Axial: fixed frequencies ``1 / theta^(4k / d)``, the first half of each head's channel
    pairs rotated by x, the second by y; no parameters (besides the "+APE" table).
    Default ``theta=100`` (rope-vit's DeiT setting)."""

    def __init__(self, *, theta: float = 100.0, **kwargs) -> None:
        super().__init__(theta=theta, **kwargs)
        self.register_buffer('axial_freqs', axial_frequencies(self.head_dim, self.theta),
                             persistent=False)

    def frequencies(self, index: int) -> Tensor:
        return self.axial_freqs


@POS_ENCODINGS.register_module()
class RoPEMixed(RotaryPE):
    """RoPE-Mixed: learned frequencies per block and head, ``pos_embed.freqs.{l}``
    ``(2, M, d/2)``; the angle of pair i is ``x * f_x[i] + y * f_y[i]``.
    Default ``theta=10`` (rope-vit's setting for RoPE-Mixed)."""

    def __init__(self, *, theta: float = 10.0, **kwargs) -> None:
        super().__init__(theta=theta, **kwargs)
        init = init_random_2d_freqs(self.head_dim, self.depth, self.num_heads,
                                    temperature=self.theta, rotate=True)
        self.freqs = nn.ParameterList([nn.Parameter(init[:, i].clone())
                                       for i in range(self.depth)])

    def frequencies(self, index: int) -> Tensor:
        return self.freqs[index]

    def frequency_params(self) -> List[Tensor]:
        return list(self.freqs)
