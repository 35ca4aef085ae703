"""The interface between the ViT-Adapter backbone and a position encoding.

The backbone calls a position encoding at four fixed places and nowhere else:

1. :meth:`PositionEncoding.embed` on the patch tokens, right after the patch embedding;
2. :meth:`PositionEncoding.block_pos` once per forward, for the PE added to each block's attention
   input (``x' = x + Attn(LN1(x) + pos_l)``);
3. :meth:`PositionEncoding.block_rope` once per forward, for a rotation of each block's queries
   and keys after the qkv projection (rotary PE; the prefix tokens are not rotated);
4. :meth:`PositionEncoding.after_block` on the tokens after each ViT block;
5. :meth:`PositionEncoding.final` on the ViT tokens after the last interaction.

Every hook defaults to "do nothing", so a method overrides only the places it acts at. Tokens are
``(B, P + N, C)``: ``P = num_prefix_tokens`` prefix tokens (a classifier's class token; none in
ViT-Adapter) followed by ``N = H * W`` patch tokens in row-major order; ``grid`` is ``(H, W)``.
A learned table has a slot of its own for each prefix token (``prefix_weight``, ``(1, P, C)``, as
DeiT's ``pos_embed`` has the class slot in front of the grid); it is never resampled. A classifier
calls :meth:`PositionEncoding.final` on the tokens after its last block, and leaves out its own
final LayerNorm when :attr:`PositionEncoding.replaces_final_norm` is set (MPVG's Last LN).

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
    """Base class: a position encoding that does nothing at any of the five places.

    Args:
        embed_dim: token channels C.
        depth: number of ViT blocks.
        pretrain_grid: patch grid (H, W) of the pre-training resolution (14x14 for 224 / 16).
        num_prefix_tokens: tokens in front of the patch tokens (1 for a class token, 0 in
            ViT-Adapter).
        num_heads: attention heads of the blocks (given by the backbone; the rotary methods need
            it, None where unknown).

    Attributes:
        cache_grid_tensors: whether :meth:`cached` memoises (set by the backbone's ``fast_path``).
        replaces_final_norm: the method applies a final LayerNorm of its own to the last tokens
            (after the last block or in :meth:`final`), so a classifier holds no ``norm`` (MPVG).
    """

    replaces_final_norm = False

    def __init__(self, *, embed_dim: int, depth: int, pretrain_grid: Grid = (14, 14),
                 num_prefix_tokens: int = 0, num_heads: Optional[int] = None) -> None:
        super().__init__()
        if num_prefix_tokens < 0:
            raise ValueError(f'num_prefix_tokens must be >= 0, got {num_prefix_tokens}')
        self.embed_dim = embed_dim
        self.depth = depth
        self.pretrain_grid = tuple(pretrain_grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.num_heads = num_heads
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
        """Embedded tokens ``(B, P + N, C)`` (prefix tokens, then patches) -> tokens entering the
        first block (ViT-Adapter: the first injector)."""
        return x

    def block_pos(self, grid: Grid) -> List[Optional[Tensor]]:
        """PE added to the attention input of each block: ``depth`` entries, each
        ``(1, P + N, C)`` or None."""
        return [None] * self.depth

    def block_rope(self, grid: Grid) -> List[Optional[Tensor]]:
        """Rotation of the queries and keys in each block's attention: ``depth`` entries, each
        None or ``(M or 1, N, 2 * d)`` (M heads of d channels, N = H * W patch tokens in row-major
        order): the sines, then the cosines, of each channel pair's angle, each repeated for the
        pair's two channels (timm's ``apply_rot_embed_cat`` layout, pairs ``(2i, 2i + 1)``).
        Prefix tokens are not rotated."""
        return [None] * self.depth

    def after_block(self, index: int, x: Tensor, grid: Grid) -> Tensor:
        """Tokens ``(B, P + N, C)`` after block ``index`` -> tokens entering the next block."""
        return x

    def final(self, x: Tensor, grid: Grid) -> Tensor:
        """Last ViT tokens ``(B, P + N, C)`` -> output tokens: in ViT-Adapter the tokens after the
        last interaction, added to the feature pyramid; in a classifier the tokens after the last
        block, before pooling."""
        return x

    def split_prefix(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(B, P + N, C)`` -> prefix tokens ``(B, P, C)`` and patch tokens ``(B, N, C)``."""
        return x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Renames this method's parameters from foreign checkpoint layouts (DeiT, timm, LaPE,
        the released ViT-Adapter) to this module's names, relative to the backbone.

        ``state_dict`` holds backbone-relative keys; keys this method does not own are returned
        unchanged. The default drops a learned table this method does not use.
        """
        return {k: v for k, v in state_dict.items() if k != 'pos_embed'}

    def extra_repr(self) -> str:
        text = f'embed_dim={self.embed_dim}, depth={self.depth}, pretrain_grid={self.pretrain_grid}'
        if self.num_prefix_tokens:
            text += f', num_prefix_tokens={self.num_prefix_tokens}'
        return text


class LearnedTable(PositionEncoding):
    """A position encoding that holds the learned absolute table of the pre-training grid,
    ``weight`` ``(1, H0*W0, C)``, resampled (bicubic) to each input grid, and, with prefix tokens,
    their own learned slots ``prefix_weight`` ``(1, P, C)``, never resampled.

    Checkpoint keys: ``pos_embed.weight`` and ``pos_embed.prefix_weight``. A DeiT/timm
    ``pos_embed`` ``(1, 1 + h*w, C)`` is split: its class slot becomes ``prefix_weight`` when this
    module has a prefix slot and is dropped otherwise (ViT-Adapter), as is a classifier's
    ``pos_embed.prefix_weight``.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        h, w = self.pretrain_grid
        self.weight = nn.Parameter(torch.zeros(1, h * w, self.embed_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.num_prefix_tokens:
            self.prefix_weight = nn.Parameter(
                torch.zeros(1, self.num_prefix_tokens, self.embed_dim))
            nn.init.trunc_normal_(self.prefix_weight, std=0.02)

    def table_params(self) -> List[Tensor]:
        """The parameters :meth:`table` reads."""
        return [self.weight, self.prefix_weight] if self.num_prefix_tokens else [self.weight]

    def table(self, grid: Grid) -> Tensor:
        """The prefix slots, then the table resampled to ``grid``: ``(1, P + H*W, C)``."""
        if self._is_pretrain_grid(grid) and not self.num_prefix_tokens:
            return self.weight
        return self.cached('table', grid, self.table_params(), lambda: self._table(grid))

    def _is_pretrain_grid(self, grid: Grid) -> bool:
        """Whether ``grid`` is the table's own grid (no resampling needed). Always False while
        ``torch.export`` traces: the comparison would fix the image size into the graph, so the
        resampling is traced (at the table's own size it returns the table unchanged)."""
        return not torch.compiler.is_exporting() and tuple(grid) == self.pretrain_grid

    def _table(self, grid: Grid) -> Tensor:
        table = self.weight
        if not self._is_pretrain_grid(grid):
            table = resample_pos_embed(table, grid, self.pretrain_grid)
        if self.num_prefix_tokens:
            table = torch.cat([self.prefix_weight, table], dim=1)
        return table

    def convert_checkpoint(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = dict(state_dict)
        if 'pos_embed' in out:
            prefix, out['pos_embed.weight'] = fit_table(out.pop('pos_embed'), self.pretrain_grid,
                                                        self.num_prefix_tokens)
            if prefix is not None:
                out['pos_embed.prefix_weight'] = prefix
        if not self.num_prefix_tokens:
            out.pop('pos_embed.prefix_weight', None)
        return out


def resample_pos_embed(table: Tensor, grid: Grid, old_grid: Grid) -> Tensor:
    """Bicubic resampling of a ``(1, h*w, C)`` table to ``(1, H*W, C)`` (no anti-aliasing, as the
    published ViT-Adapter does)."""
    return resample_abs_pos_embed(table, list(grid), list(old_grid), num_prefix_tokens=0,
                                  interpolation='bicubic', antialias=False)


def fit_table(table: Tensor, grid: Grid, num_prefix_tokens: int = 0
              ) -> Tuple[Optional[Tensor], Tensor]:
    """A checkpoint's PE table ``(1, [prefix +] h*w, C)`` -> the slots of the first
    ``num_prefix_tokens`` prefix tokens ``(1, P, C)`` (None when ``num_prefix_tokens`` is 0 or the
    checkpoint has fewer) and the grid table ``(1, H*W, C)`` for ``grid``.

    Leading class/distillation-token slots (at most two) are what is left over ``grid`` itself
    or, failing that, over a square grid; those beyond ``num_prefix_tokens`` are dropped. A square
    grid other than ``grid`` is resampled; prefix slots never are.
    """
    if table.dim() != 3 or table.shape[0] != 1:
        raise ValueError(f'pos_embed in the checkpoint has shape {tuple(table.shape)}; '
                         'expected (1, N, C)')
    n = table.shape[1]
    source = tuple(grid)
    if not 0 <= n - source[0] * source[1] <= 2:
        side = math.isqrt(n)
        source = (side, side)
    prefix = n - source[0] * source[1]
    if prefix > 2:
        raise ValueError(f'pos_embed in the checkpoint has {n} positions: neither the grid '
                         f'{tuple(grid)} nor a square grid, with at most two class/distillation '
                         'tokens')
    kept = table[:, :num_prefix_tokens] if 0 < num_prefix_tokens <= prefix else None
    table = table[:, prefix:]
    if source != tuple(grid):
        table = resample_pos_embed(table, grid, source)
    return kept, table


def build_pos_encoding(cfg: dict, **defaults) -> PositionEncoding:
    """Builds a position encoding from ``dict(type=NAME, **options)`` with ``POS_ENCODINGS.build``;
    ``defaults`` (embed_dim, depth, pretrain_grid, num_prefix_tokens, num_heads) come from the
    backbone.
    ``NAME`` is a registered name, plain (``'MPVG'``) or scoped (``'pe_dense.MPVG'``), or a
    :class:`PositionEncoding` subclass. Unknown names or options raise an error that lists the
    valid ones.

    The name is resolved by the registry's own ``get`` before building: ``build`` alone would
    look a string up in the registry of the current default scope (mmdet's or mmseg's
    ``MODELS`` inside their runners), which cannot see this sibling registry.
    """
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'pos_embed must be a dict with a "type" key, got {cfg!r}')
    cfg = dict(cfg)
    name = cfg['type']
    cls = POS_ENCODINGS.get(name) if isinstance(name, str) else name
    if not (inspect.isclass(cls) and issubclass(cls, PositionEncoding)):
        valid = ', '.join(sorted(POS_ENCODINGS.module_dict))
        raise KeyError(f'unknown position encoding {name!r}; pos_embed.type must be one of: '
                       f'{valid} (optionally scoped, e.g. \'pe_dense.MPVG\')')
    options = []
    for klass in cls.__mro__:
        if klass is PositionEncoding:
            break
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.name not in defaults and p.name not in options:
                options.append(p.name)
    unknown = sorted(set(cfg) - set(options) - {'type'})
    if unknown:
        raise TypeError(f'{cls.__name__} got unknown option(s) {unknown}; '
                        f'its options are: {options or "none"}')
    cfg['type'] = cls
    return POS_ENCODINGS.build(cfg, default_args=defaults)
