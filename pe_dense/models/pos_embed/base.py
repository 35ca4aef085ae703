"""The interface between the ViT-Adapter backbone and a position encoding.

The backbone calls a position encoding at four fixed places and nowhere else:

1. :meth:`PositionEncoding.embed` on the patch tokens, right after the patch embedding;
2. :meth:`PositionEncoding.block_pos` once per forward, for the PE added to each block's attention
   input (``x' = x + Attn(LN1(x) + pos_l)``);
3. :meth:`PositionEncoding.after_block` on the tokens after each ViT block;
4. :meth:`PositionEncoding.final` on the ViT tokens after the last interaction.

Every hook defaults to "do nothing", so a method overrides only the places it acts at. Tokens are
``(B, N, C)`` with ``N = H * W`` in row-major order; ``grid`` is ``(H, W)``.

What depends only on the grid and the method's parameters (a resampled table, the PE chain) goes
through :meth:`PositionEncoding.cached`: with ``cache_grid_tensors`` on (the backbone's fast path),
in eval mode and when no gradient flows into those parameters, it is computed once per grid and
reused while the parameters are unchanged.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from pe_dense.registry import POS_ENCODINGS

from ..grid_cache import GridCache, grad_needed

Grid = Tuple[int, int]


class PositionEncoding(nn.Module):
    """Base class: a position encoding that does nothing at any of the four places.

    Args:
        embed_dim: token channels C.
        depth: number of ViT blocks.
        pretrain_grid: patch grid (H, W) of the pre-training resolution (14x14 for 224 / 16).

    Attributes:
        cache_grid_tensors: whether :meth:`cached` memoises (set by the backbone's ``fast_path``).
    """

    def __init__(self, *, embed_dim: int, depth: int, pretrain_grid: Grid = (14, 14)) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.pretrain_grid = tuple(pretrain_grid)
        self.cache_grid_tensors = False
        self._grid_cache = GridCache()

    def cached(self, name: str, grid: Grid, params: Sequence[Tensor],
               compute: Callable[[], Any]) -> Any:
        """``compute()``, a function of ``grid`` and ``params`` only, memoised per grid when
        ``cache_grid_tensors`` is on, the module is in eval mode and no gradient has to flow into
        ``params``; an entry is recomputed as soon as any of ``params`` changes."""
        if not self.cache_grid_tensors or self.training or grad_needed(params):
            return compute()
        return self._grid_cache.get((name, tuple(grid)), params, compute)

    def clear_grid_cache(self) -> None:
        """Drops what :meth:`cached` memoised (also done by ``train()`` and ``eval()``)."""
        self._grid_cache.clear()

    def train(self, mode: bool = True) -> 'PositionEncoding':
        self.clear_grid_cache()
        return super().train(mode)

    def embed(self, x: Tensor, grid: Grid) -> Tensor:
        """Patch tokens ``(B, N, C)`` -> tokens entering the first injector."""
        return x

    def block_pos(self, grid: Grid) -> List[Optional[Tensor]]:
        """PE added to the attention input of each block: ``depth`` entries, each ``(1, N, C)``
        or None."""
        return [None] * self.depth

    def after_block(self, index: int, x: Tensor, grid: Grid) -> Tensor:
        """Tokens after block ``index`` -> tokens entering the next block."""
        return x

    def final(self, x: Tensor, grid: Grid) -> Tensor:
        """ViT tokens after the last interaction -> tokens added to the feature pyramid."""
        return x

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Renames this method's parameters from foreign checkpoint layouts (DeiT, timm, LaPE,
        the released ViT-Adapter) to this module's names, relative to the backbone.

        ``state_dict`` holds backbone-relative keys; keys this method does not own are returned
        unchanged. The default drops a learned table this method does not use.
        """
        return {k: v for k, v in state_dict.items() if k != 'pos_embed'}

    def extra_repr(self) -> str:
        return f'embed_dim={self.embed_dim}, depth={self.depth}, pretrain_grid={self.pretrain_grid}'


class LearnedTable(PositionEncoding):
    """A position encoding that holds the learned absolute table ``(1, H0*W0, C)`` of the
    pre-training grid, resampled (bicubic) to each input grid. The class-token slot of DeiT/timm
    checkpoints is dropped on loading."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        h, w = self.pretrain_grid
        self.weight = nn.Parameter(torch.zeros(1, h * w, self.embed_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def table(self, grid: Grid) -> Tensor:
        """The table resampled to ``grid``: ``(1, H*W, C)``."""
        if tuple(grid) == self.pretrain_grid:
            return self.weight
        return self.cached('table', grid, [self.weight],
                           lambda: resample_pos_embed(self.weight, grid, self.pretrain_grid))

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = dict(state_dict)
        if 'pos_embed' in out:
            table = out.pop('pos_embed')
            out['pos_embed.weight'] = fit_table(table, self.pretrain_grid)
        return out


def resample_pos_embed(table: Tensor, grid: Grid, old_grid: Grid) -> Tensor:
    """Bicubic resampling of a ``(1, h*w, C)`` table to ``(1, H*W, C)`` (no anti-aliasing, as the
    published ViT-Adapter does)."""
    return resample_abs_pos_embed(table, list(grid), list(old_grid), num_prefix_tokens=0,
                                  interpolation='bicubic', antialias=False)


def fit_table(table: Tensor, grid: Grid) -> Tensor:
    """A checkpoint's PE table ``(1, [prefix +] h*w, C)`` -> ``(1, H*W, C)`` for ``grid``.

    Leading class/distillation-token slots are recognised as what is left over a square grid and
    dropped; a square grid other than ``grid`` is resampled.
    """
    if table.dim() != 3 or table.shape[0] != 1:
        raise ValueError(f'pos_embed in the checkpoint has shape {tuple(table.shape)}; '
                         'expected (1, N, C)')
    n = table.shape[1]
    side = math.isqrt(n)
    prefix = n - side * side
    if prefix > 2:
        raise ValueError(f'pos_embed in the checkpoint has {n} positions: neither a square grid '
                         'nor a square grid with one or two class/distillation tokens')
    table = table[:, prefix:]
    if (side, side) != tuple(grid):
        table = resample_pos_embed(table, grid, (side, side))
    return table


def build_pos_encoding(cfg: dict, **defaults) -> PositionEncoding:
    """Builds a position encoding from ``dict(type=NAME, **options)``; ``defaults`` (embed_dim,
    depth, pretrain_grid) come from the backbone. Unknown names or options raise an error that
    lists the valid ones."""
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'pos_embed must be a dict with a "type" key, got {cfg!r}')
    cfg = dict(cfg)
    name = cfg.pop('type')
    cls = POS_ENCODINGS.module_dict.get(name) if isinstance(name, str) else name
    if cls is None:
        valid = ', '.join(sorted(POS_ENCODINGS.module_dict))
        raise KeyError(f'unknown position encoding {name!r}; pos_embed.type must be one of: '
                       f'{valid}')
    options = []
    for klass in cls.__mro__:
        if klass is PositionEncoding:
            break
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.name not in defaults and p.name not in options:
                options.append(p.name)
    unknown = sorted(set(cfg) - set(options))
    if unknown:
        raise TypeError(f'{cls.__name__} got unknown option(s) {unknown}; '
                        f'its options are: {options or "none"}')
    return cls(**defaults, **cfg)
