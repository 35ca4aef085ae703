"""Multi-scale deformable attention (Deformable DETR) as ViT-Adapter uses it.

The sampling itself is mmcv's: its CUDA kernel (``MultiScaleDeformableAttnFunction``) for CUDA
tensors, its PyTorch form (``multi_scale_deformable_attn_pytorch``: bilinear ``grid_sample``,
zero padding, ``align_corners=False``) otherwise. This module holds the projections, with the
parameter names of the published code, and the adapter's ``ratio`` (value channels =
``ratio * d_model``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)
from torch import Tensor, nn


def ms_deform_attn_sample(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                          sampling_locations: Tensor, attention_weights: Tensor,
                          im2col_step: int = 64) -> Tensor:
    """Weighted bilinear sampling of multi-level values.

    Args:
        value: ``(B, S, M, D)``, S = sum of H_l * W_l over the levels, M heads of D channels.
        spatial_shapes: ``(L, 2)`` long, (H_l, W_l) per level.
        level_start_index: ``(L,)`` long, offset of each level in S.
        sampling_locations: ``(B, Q, M, L, P, 2)`` in [0, 1], (x, y).
        attention_weights: ``(B, Q, M, L, P)``.

    Returns:
        ``(B, Q, M * D)``.
    """
    if value.is_cuda:
        return MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index,
                                                      sampling_locations, attention_weights,
                                                      im2col_step)
    return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations,
                                               attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with ``n_heads`` heads, ``n_levels`` levels and
    ``n_points`` sampling points per head and level.

    Args:
        d_model: query/output channels.
        n_levels: number of value levels.
        n_heads: attention heads; ``ratio * d_model`` must be divisible by it.
        n_points: sampling points per head and level.
        ratio: value channels as a fraction of ``d_model`` (ViT-Adapter's ``deform_ratio``).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0) -> None:
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim % n_heads:
            raise ValueError(f'value channels {value_dim} (d_model {d_model} x ratio {ratio}) must '
                             f'be divisible by n_heads {n_heads}')
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.ratio = ratio
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on rays around the reference point
        (head h points at angle 2*pi*h/M, point p at distance p+1), uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            query: ``(B, Q, d_model)``.
            reference_points: ``(B or 1, Q, 1 or L, 2)``, (x, y) in [0, 1].
            input_flatten: ``(B, S, d_model)``, the levels flattened and concatenated.
            spatial_shapes: ``(L, 2)`` long; level_start_index: ``(L,)`` long.
            input_padding_mask: ``(B, S)`` bool, True where the value is padding.

        Returns:
            ``(B, Q, d_model)``.
        """
        b, q, _ = query.shape
        s = input_flatten.shape[1]
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(b, s, self.n_heads, self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels,
                                                    self.n_points, 2)
        weights = self.attention_weights(query).view(b, q, self.n_heads,
                                                     self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in cells of each level: divide by (W_l, H_l).
        normalizer = spatial_shapes.flip(-1).to(offsets.dtype)
        locations = (reference_points[:, :, None, :, None, :]
                     + offsets / normalizer[None, None, None, :, None, :])
        out = ms_deform_attn_sample(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (f'd_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, '
                f'n_points={self.n_points}, ratio={self.ratio}')
