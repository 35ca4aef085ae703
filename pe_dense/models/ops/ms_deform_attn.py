"""Multi-scale deformable attention (Deformable DETR) as ViT-Adapter uses it.

Three implementations of the sampling, all bilinear with zero padding and ``align_corners=False``:

- CUDA tensors: mmcv's kernel (``MultiScaleDeformableAttnFunction``) when mmcv was built with
  CUDA ops (and :func:`pytorch_sampler_on_cuda` is not in force), else the gather path below
  (which runs on any device);
- CPU, fast path (default): :func:`ms_deform_attn_gather`, one gather over all levels at once;
- CPU, reference path: mmcv's PyTorch form (``multi_scale_deformable_attn_pytorch``: one
  ``grid_sample`` per level on ``(B*M, D, H, W)`` values), kept for tests and comparisons, and
  what ``torch.export`` (hence ONNX export) traces on either path.

The sampling runs in float32 whatever the precision around it, as the published CUDA kernel
requires (its autograd function casts its inputs to float32 under autocast): half-precision
locations lose the position inside a cell on large maps, and row indices computed in half precision
point at wrong rows.

This module holds the projections, with the parameter names of the published code, and the
adapter's ``ratio`` (value channels = ``ratio * d_model``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)
from torch import Tensor, nn

# (H_l, W_l) of each level: an ``(L, 2)`` long tensor or a sequence of pairs of Python ints.
Shapes = Union[Tensor, Sequence[Tuple[int, int]]]
# Set by pytorch_sampler_on_cuda(): CUDA tensors then skip mmcv's kernel.
_KERNEL_OFF = [False]


def level_shapes(spatial_shapes: Shapes) -> List[Tuple[int, int]]:
    """The levels' (H, W) as Python ints. Read from a tensor (a device-to-host copy for CUDA
    tensors, and values that ``torch.export`` cannot keep symbolic) unless given as pairs, which
    are passed through as they are (symbolic sizes included)."""
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def ms_deform_attn_sample(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                          sampling_locations: Tensor, attention_weights: Tensor,
                          im2col_step: int = 64, fast_path: bool = True,
                          shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
    """Weighted bilinear sampling of multi-level values.

    Args:
        value: ``(B, S, M, D)``, S = sum of H_l * W_l over the levels, M heads of D channels.
        spatial_shapes: ``(L, 2)`` long, (H_l, W_l) per level.
        level_start_index: ``(L,)`` long, offset of each level in S.
        sampling_locations: ``(B, Q, M, L, P, 2)``, (x, y), [0, 1] inside the map; points outside
            read zeros.
        attention_weights: ``(B, Q, M, L, P)``.
        im2col_step: batch chunk of the CUDA kernel.
        fast_path: on the CPU, :func:`ms_deform_attn_gather` (True) or mmcv's per-level
            ``grid_sample`` form (False). CUDA tensors use mmcv's kernel (either path) when mmcv
            has its CUDA ops, outside :func:`pytorch_sampler_on_cuda`.
        shapes: the same (H_l, W_l) as Python ints, if the caller has them: the CPU paths then
            read no tensor values, which keeps sizes symbolic under ``torch.export``.

    Returns:
        ``(B, Q, M * D)`` in the dtype of ``value``. Half-precision inputs (float16, bfloat16) are
        sampled in float32 with autocast off.
    """
    dtype = value.dtype
    with torch.autocast(value.device.type, enabled=False):
        value, sampling_locations, attention_weights = _at_least_float32(
            value, sampling_locations, attention_weights)
        if value.is_cuda and not _KERNEL_OFF[0] and mmcv_has_cuda_ops():
            out = MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index,
                                                         sampling_locations, attention_weights,
                                                         im2col_step)
        else:
            levels = level_shapes(spatial_shapes if shapes is None else shapes)
            # torch.export traces the per-level grid_sample form: it maps onto ONNX GridSample,
            # while the gather form's custom autograd function and strided views do not export.
            gather = fast_path and not torch.compiler.is_exporting()
            sampler = ms_deform_attn_gather if gather else multi_scale_deformable_attn_pytorch
            out = sampler(value, levels, sampling_locations, attention_weights)
    return out.to(dtype)


@functools.lru_cache(maxsize=None)
def mmcv_has_cuda_ops() -> bool:
    """Whether the installed mmcv was compiled with its CUDA kernels."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


@contextlib.contextmanager
def pytorch_sampler_on_cuda() -> Iterator[None]:
    """Within this context CUDA tensors take the PyTorch samplers (the gather form on the fast
    path, mmcv's per-level ``grid_sample`` form on the reference path) even when mmcv has its CUDA
    kernel: what an mmcv built without CUDA ops runs, for timing the two against each other
    (``tools/benchmark.py --cuda-sampler pytorch``). Not thread-local; restores the previous
    setting on exit."""
    before = _KERNEL_OFF[0]
    _KERNEL_OFF[0] = True
    try:
        yield
    finally:
        _KERNEL_OFF[0] = before


def _at_least_float32(*tensors: Tensor) -> Tuple[Tensor, ...]:
    """float16 and bfloat16 tensors cast to float32; float32 and float64 ones unchanged."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


def ms_deform_attn_gather(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor,
                          attention_weights: Tensor) -> Tensor:
    """The sampling of :func:`ms_deform_attn_sample` as one weighted gather over all levels.

    Each level is copied into a zero border (one cell before, two after), so that every corner of
    a clamped sampling point is a valid row and corners outside the map read zeros. A point's four
    corner rows and bilinear weights, times its attention weight, make ``K = 4 * L * P`` (row,
    weight) pairs per query and head; ``F.embedding_bag`` sums the weighted rows without
    materialising the ``(B, Q, M, K, D)`` samples. Gradients reach the values, the attention
    weights and, through the bilinear weights, the locations (see :class:`_BilinearGather`).

    Args and returns: as :func:`ms_deform_attn_sample` (no ``level_start_index``: the levels are
    contiguous in ``value`` in the order of ``spatial_shapes``, a tensor or (H, W) pairs).
    """
    b, _, m, d = value.shape
    _, q, _, n_levels, _, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)
    # (L, 1, 2) sizes (W, H), the right/bottom clamp of the pixel coordinates.
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=sampling_locations.dtype,
                         device=sampling_locations.device).view(n_levels, 1, 2)
    # Pixel coordinates (x, y) = location * size - 0.5, clamped to [-1, size]: beyond that every
    # corner lies in the zero border, so the clamp changes neither values nor gradients.
    pix = torch.minimum(torch.clamp(sampling_locations * sizes - 0.5, min=-1.0), sizes)
    corner = pix.detach().floor()
    with torch.no_grad():
        base = _corner_rows(corner, shapes, b, m)
    out = _BilinearGather.apply(value, pix - corner, attention_weights, base, shapes)
    return out.view(b, q, m * d)


def _padded_starts(shapes: List[Tuple[int, int]]) -> List[int]:
    """Start row of each level in the padded layout (levels of ``(H + 3) x (W + 3)`` cells)."""
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + (h + 3) * (w + 3))
    return starts


def _corner_rows(corner: Tensor, shapes: List[Tuple[int, int]], b: int, m: int) -> Tensor:
    """Row of each point's top-left corner in the padded value matrix ``(B * S' * M, D)``.

    ``corner``: ``(B, Q, M, L, P, 2)``, integer-valued (x0, y0) in [-1, size] -> ``(B, Q, M, L,
    P)`` long. The other corners are ``M``, ``(W + 3) * M`` and ``(W + 4) * M`` rows further.
    """
    n_levels = len(shapes)
    padded_rows = sum((h + 3) * (w + 3) for h, w in shapes)
    device = corner.device
    # Integer arithmetic whatever the dtype of the locations: rows run past what half-precision
    # floats represent exactly (257 and up for bfloat16, 2049 for float16).
    corner = corner.long()
    width = torch.tensor([w + 3 for _, w in shapes], dtype=torch.long, device=device)
    # Cell (x0, y0) of level l is cell (x0 + 1, y0 + 1) of its padded level.
    origin = torch.tensor([s + w + 4 for s, (_, w) in zip(_padded_starts(shapes), shapes)],
                          dtype=torch.long, device=device)
    rows = corner[..., 1] * width.view(n_levels, 1) + corner[..., 0] + origin.view(n_levels, 1)
    rows += torch.arange(b, device=device).view(b, 1, 1, 1, 1) * padded_rows
    return rows * m + torch.arange(m, device=device).view(1, 1, m, 1, 1)


def _corner_steps(shapes: List[Tuple[int, int]], m: int, device: torch.device) -> Tensor:
    """``(4, L, 1)`` row offsets of the corners (x0, y0), (x0 + 1, y0), (x0, y0 + 1),
    (x0 + 1, y0 + 1) from the first, per level."""
    return torch.tensor([[0, m, (w + 3) * m, (w + 4) * m] for _, w in shapes],
                        device=device).t().reshape(4, len(shapes), 1)


def _planar(frac: Tensor, attention_weights: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``frac (B, Q, M, L, P, 2)``, ``attention_weights (B, Q, M, L, P)`` -> fx, fy and the
    attention weight, each a contiguous ``(B * Q * M, L * P)``."""
    n = attention_weights[..., 0, 0].numel()
    return (frac[..., 0].reshape(n, -1), frac[..., 1].reshape(n, -1),
            attention_weights.reshape(n, -1))


def _corner_weights(fx: Tensor, fy: Tensor, attn: Tensor) -> Tensor:
    """Bilinear weight times attention weight of each corner: ``(N, 4, L * P)`` from
    ``(N, L * P)`` each, corners in :func:`_corner_steps` order."""
    wy0, wy1 = (1 - fy) * attn, fy * attn
    return torch.stack([wy0 * (1 - fx), wy0 * fx, wy1 * (1 - fx), wy1 * fx], 1)


class _BilinearGather(torch.autograd.Function):
    """Bilinear sampling of padded levels, weighted and summed over levels and points.

    Forward: ``value (B, S, M, D)``, ``frac (B, Q, M, L, P, 2)`` the position of each point inside
    its cell, ``attention_weights (B, Q, M, L, P)``, ``base (B, Q, M, L, P)`` long the row of each
    point's top-left corner (:func:`_corner_rows`), ``shapes`` the levels' (H, W) ->
    ``(B * Q * M, D)``. Each query-head ``n`` reads ``K = 4 * L * P`` rows, corner-major.

    Backward, with ``u[n, k] = grad[n] . row[k]`` for those rows (a sampled dense-dense product,
    no ``(N, K, D)`` intermediate): the attention weight and position gradients are sums of ``u``
    times the bilinear weights and their derivatives. The value gradient scatters each point's
    ``weight * grad[n]`` to its four corners: points are sorted by their top-left row once, and
    each corner's contributions are summed per row by ``F.embedding_bag`` over that order, then
    shifted by the corner's row offset.
    """

    @staticmethod
    def forward(ctx, value: Tensor, frac: Tensor, attention_weights: Tensor, base: Tensor,
                shapes: List[Tuple[int, int]]) -> Tensor:
        b, _, m, _ = value.shape
        rows = _pad_levels(value, shapes)
        n_levels = len(shapes)
        n = base[..., 0, 0].numel()
        index = base.new_empty(n, 4, *base.shape[-2:])
        torch.add(base.reshape(n, 1, n_levels, -1), _corner_steps(shapes, m, base.device),
                  out=index)
        index = index.view(n, -1)
        fx, fy, attn = _planar(frac, attention_weights)
        weights = _corner_weights(fx, fy, attn).view(n, -1).to(rows.dtype)
        ctx.save_for_backward(rows, index, frac, attention_weights)
        ctx.shapes, ctx.batch_heads = shapes, (b, m)
        return F.embedding_bag(index, rows, per_sample_weights=weights, mode='sum')

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, index, frac, attention_weights = ctx.saved_tensors
        grad = grad.contiguous()
        fx, fy, attn = _planar(frac, attention_weights)
        grad_value = grad_frac = grad_attn = None
        if ctx.needs_input_grad[0]:
            grad_rows = _scatter_corners(grad, index, _corner_weights(fx, fy, attn), ctx.shapes,
                                         ctx.batch_heads, rows.shape[0])
            grad_value = _unpad_levels(grad_rows, ctx.shapes, *ctx.batch_heads)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            u00, u01, u10, u11 = _row_dots(grad, rows, index).to(fx.dtype).view(
                fx.shape[0], 4, -1).unbind(1)
            top = u00 + (u01 - u00) * fx  # u interpolated along x, upper and lower corner row
            bottom = u10 + (u11 - u10) * fx
            grad_attn = (top + (bottom - top) * fy).view(attention_weights.shape)
            grad_fx = ((u01 - u00) * (1 - fy) + (u11 - u10) * fy) * attn
            grad_frac = torch.stack([grad_fx, (bottom - top) * attn], -1).view(frac.shape)
        return grad_value, grad_frac, grad_attn, None, None


def _scatter_corners(grad: Tensor, index: Tensor, weights: Tensor,
                     shapes: List[Tuple[int, int]], batch_heads: Tuple[int, int],
                     n_rows: int) -> Tensor:
    """``out[index[n, k]] += weights[n, k] * grad[n]`` over all (n, k): ``grad (N, D)``,
    ``index (N, 4 * L * P)`` the padded rows of the corners and ``weights (N, 4, L * P)``, both
    corner-major as in :class:`_BilinearGather` -> ``(n_rows, D)``."""
    b, m = batch_heads
    n = index.shape[0]
    first = index.view(n, 4, -1)[:, 0].reshape(-1)
    order = torch.argsort(first)
    counts = torch.bincount(first, minlength=n_rows)
    offsets = counts.cumsum(0) - counts
    queries = torch.div(order, first.numel() // n, rounding_mode='floor')
    # parts[c][r]: the contributions of the points whose top-left corner is row r to corner c.
    parts = [F.embedding_bag(queries, grad, offsets, mode='sum',
                             per_sample_weights=w.reshape(-1)[order].to(grad.dtype)).view(
        b, -1, grad.shape[1]) for w in weights.unbind(1)]
    out = parts[0]
    for (h, w), start in zip(shapes, _padded_starts(shapes)):
        lo, hi = start * m, (start + (h + 3) * (w + 3)) * m
        for part, step in zip(parts[1:], (m, (w + 3) * m, (w + 4) * m)):
            out[:, lo + step:hi] += part[:, lo:hi - step]
    return out.view(n_rows, -1)


def _pad_levels(value: Tensor, shapes: List[Tuple[int, int]]) -> Tensor:
    """``(B, S, M, D)`` -> ``(B * S' * M, D)``: each level inside a zero border of one cell before
    and two after, in both directions."""
    b, _, m, d = value.shape
    padded = value.new_zeros(b, sum((h + 3) * (w + 3) for h, w in shapes), m, d)
    start = 0
    for (h, w), pstart in zip(shapes, _padded_starts(shapes)):
        inner = padded[:, pstart:pstart + (h + 3) * (w + 3)].view(b, h + 3, w + 3, m, d)
        inner[:, 1:h + 1, 1:w + 1] = value[:, start:start + h * w].view(b, h, w, m, d)
        start += h * w
    return padded.view(-1, d)


def _unpad_levels(rows: Tensor, shapes: List[Tuple[int, int]], b: int, m: int) -> Tensor:
    """Inverse of :func:`_pad_levels`: ``(B * S' * M, D)`` -> ``(B, S, M, D)``, border dropped."""
    padded = rows.view(b, -1, m, rows.shape[-1])
    levels = []
    for (h, w), pstart in zip(shapes, _padded_starts(shapes)):
        inner = padded[:, pstart:pstart + (h + 3) * (w + 3)].unflatten(1, (h + 3, w + 3))
        levels.append(inner[:, 1:h + 1, 1:w + 1].flatten(1, 2))
    return torch.cat(levels, 1)


def _row_dots(grad: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    """``out[n, k] = grad[n] . rows[index[n, k]]``: ``grad (N, D)``, ``rows (R, D)``,
    ``index (N, K)`` -> ``(N, K)``, as ``sampled_addmm`` on the CSR pattern of ``index`` (in
    float32 for half types, which it does not take)."""
    if grad.dtype not in (torch.float32, torch.float64):
        grad, rows = grad.float(), rows.float()
    n, k = index.shape
    crow = torch.arange(0, n * k + 1, k, device=index.device)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # sparse CSR is flagged as a beta feature
        pattern = torch.sparse_csr_tensor(crow, index.view(-1), grad.new_zeros(n * k),
                                          (n, rows.shape[0]), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, grad, rows.t(), beta=0.0)
    return dots.values().view(n, k)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with ``n_heads`` heads, ``n_levels`` levels and
    ``n_points`` sampling points per head and level.

    Args:
        d_model: query/output channels.
        n_levels: number of value levels.
        n_heads: attention heads; ``ratio * d_model`` must be divisible by it.
        n_points: sampling points per head and level.
        ratio: value channels as a fraction of ``d_model`` (ViT-Adapter's ``deform_ratio``).
        fast_path: CPU sampling by :func:`ms_deform_attn_gather` (True) or mmcv's
            ``grid_sample`` form (False); see :func:`ms_deform_attn_sample`.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0, fast_path: bool = True) -> None:
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
        self.fast_path = fast_path
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
                input_padding_mask: Optional[Tensor] = None,
                shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
        """
        Args:
            query: ``(B, Q, d_model)``.
            reference_points: ``(B or 1, Q, 1 or L, 2)``, (x, y) in [0, 1].
            input_flatten: ``(B, S, d_model)``, the levels flattened and concatenated.
            spatial_shapes: ``(L, 2)`` long; level_start_index: ``(L,)`` long.
            input_padding_mask: ``(B, S)`` bool, True where the value is padding.
            shapes: ``spatial_shapes`` as Python ints (see :func:`ms_deform_attn_sample`).

        Returns:
            ``(B, Q, d_model)``.
        """
        b, q, _ = query.shape
        s = input_flatten.shape[1]
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        offsets = self.sampling_offsets(query)
        logits = self.attention_weights(query)
        out_dtype = value.dtype
        # Softmax, locations and sampling in float32 (under autocast the projections above give
        # half precision); the result goes back to the projections' dtype for output_proj.
        with torch.autocast(query.device.type, enabled=False):
            value, offsets, logits = _at_least_float32(value, offsets, logits)
            value = value.view(b, s, self.n_heads, self.value_dim // self.n_heads)
            offsets = offsets.view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
            weights = F.softmax(logits.view(b, q, self.n_heads, self.n_levels * self.n_points),
                                -1).view(b, q, self.n_heads, self.n_levels, self.n_points)
            # Offsets are in cells of each level: divide by (W_l, H_l).
            normalizer = spatial_shapes.flip(-1).to(offsets.dtype)
            locations = (reference_points[:, :, None, :, None, :].to(offsets.dtype)
                         + offsets / normalizer[None, None, None, :, None, :])
            out = ms_deform_attn_sample(value, spatial_shapes, level_start_index, locations,
                                        weights, fast_path=self.fast_path, shapes=shapes)
        return self.output_proj(out.to(out_dtype))

    def extra_repr(self) -> str:
        return (f'd_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, '
                f'n_points={self.n_points}, ratio={self.ratio}, fast_path={self.fast_path}')
