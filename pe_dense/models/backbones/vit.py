"""ViT blocks as ViT-Adapter uses them: pre-norm, layer scale, global or windowed attention, and an
optional PE added to the attention input only (``x' = x + Attn(LN1(x) + pos)``).

Parameter names follow DeiT/timm and the published ViT-Adapter (``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``gamma1``, ``gamma2``), so their checkpoints
load one to one.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (``window_size=0``) or within non-overlapping
    ``window_size`` x ``window_size`` windows of the token grid.

    Windowed attention follows the published ViT-Adapter exactly: q, k and v are computed first,
    then the grid is padded with zeros at the bottom and right to a multiple of the window, so
    padded positions take part in the softmax with zero keys and values (no mask).

    A rotary PE (``rope``, see :meth:`PositionEncoding.block_rope`) rotates q and k right after
    the qkv projection, before windows are cut: a window's tokens keep their coordinates on the
    whole grid, so logits inside a window depend on the same offsets as in global attention.

    Args:
        dim: channels C; num_heads: heads; qkv_bias: bias on the qkv projection.
        window_size: 0 for global attention, else the window side in tokens.
        fast_path: use ``F.scaled_dot_product_attention``; False computes softmax(q k^T / sqrt(d)) v
            explicitly (the reference path, kept for tests).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, window_size: int = 0, fast_path: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.fast_path = fast_path
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``(B', M, N, d)`` each (B' = batch, or batch x windows) -> ``(B', M, N, d)``."""
        drop = self.attn_drop.p if self.training else 0.0
        if self.fast_path:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v

    def forward(self, x: Tensor, grid: Tuple[int, int], rope: Optional[Tensor] = None) -> Tensor:
        """``x``: ``(B, P + N, C)`` with ``N = H * W`` patch tokens after ``P`` prefix tokens
        (P = 0 with windows); ``rope``: None or ``(M or 1, N, 2 * d)`` sines then cosines of the
        rotation of the patch tokens' q and k -> ``(B, P + N, C)``."""
        b, n, c = x.shape
        qkv = self.qkv(x)
        if rope is not None:
            qkv = self._rotate(qkv, rope)
        if self.window_size:
            out = self._windowed(qkv, grid)
        else:
            q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            out = self._attend(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

    def _rotate(self, qkv: Tensor, rope: Tensor) -> Tensor:
        """Rotates the channel pairs ``(2i, 2i + 1)`` of q and k of the last ``rope.shape[1]``
        tokens (the patch tokens; prefix tokens stay as they are): ``(B, P + N, 3C)`` -> same."""
        b, n, c3 = qkv.shape
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim)
        p = n - rope.shape[1]
        emb = rope.transpose(0, 1).unsqueeze(1)  # (N, 1, M or 1, 2d) against (B, N, 2, M, d)
        qk = apply_rot_embed_cat(qkv[:, p:, :2], emb)
        qk = torch.cat([qkv[:, :p, :2], qk], dim=1)
        return torch.cat([qk, qkv[:, :, 2:]], dim=2).reshape(b, n, c3)

    def _windowed(self, qkv: Tensor, grid: Tuple[int, int]) -> Tensor:
        b, n, c3 = qkv.shape
        h, w = grid
        ws = self.window_size
        hp, wp = h + (-h) % ws, w + (-w) % ws  # integer arithmetic: symbolic sizes stay exact
        qkv = F.pad(qkv.view(b, h, w, c3), (0, 0, 0, wp - w, 0, hp - h))
        nh, nw = hp // ws, wp // ws
        # (B, nh, ws, nw, ws, 3, M, d) -> (3, B*nh*nw, M, ws*ws, d): the windows fold into the
        # batch, so attention gets the 4-D (batch, heads, tokens, d) layout fused kernels take.
        qkv = qkv.view(b, nh, ws, nw, ws, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(
            3, b * nh * nw, self.num_heads, ws * ws, self.head_dim)
        out = self._attend(q, k, v)  # (B*nh*nw, M, ws*ws, d)
        out = out.reshape(b, nh, nw, self.num_heads, ws, ws, self.head_dim)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c3 // 3)
        return out[:, :h, :w].reshape(b, n, c3 // 3)

    def extra_repr(self) -> str:
        return (f'num_heads={self.num_heads}, window_size={self.window_size}, '
                f'fast_path={self.fast_path}')


def apply_fast_path(model: nn.Module, enabled: bool) -> None:
    """Hands ``model``'s fast-path switch to every submodule that has one (attention, deformable
    attention) and to its position encoding's per-grid cache, which it empties."""
    for m in model.modules():
        if m is not model and hasattr(m, 'fast_path'):
            m.fast_path = enabled
    model.pos_embed.cache_grid_tensors = enabled
    model.pos_embed.clear_grid_cache()


class Block(nn.Module):
    """Pre-norm ViT block with layer scale:
    ``x' = x + gamma1 * Attn(LN1(x) [+ pos])``, ``x'' = x' + gamma2 * MLP(LN2(x'))``.

    ``pos`` (``(1, N, C)``), when given, enters the attention input only, never the residual stream
    or the MLP; ``rope`` (see :meth:`Attention.forward`), when given, rotates q and k.
    ``fast_path`` is handed to the attention: fused attention (True) or the explicit reference
    computation (False), the same function.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 window_size: int = 0, layer_scale: bool = True, norm_eps: float = 1e-6,
                 fast_path: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=drop, window_size=window_size, fast_path=fast_path)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=drop)
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.ones(dim))
            self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, grid: Tuple[int, int], pos: Optional[Tensor] = None,
                rope: Optional[Tensor] = None) -> Tensor:
        """``x``: ``(B, N, C)``; ``pos``: ``(1, N, C)`` or None; ``rope``: ``(M or 1, N_patch,
        2 * d)`` or None -> ``(B, N, C)``."""
        y = self.norm1(x)
        if pos is not None:
            y = y + pos
        y = self.attn(y, grid, rope)
        x = x + self.drop_path(self.gamma1 * y if self.layer_scale else y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(self.gamma2 * y if self.layer_scale else y)
