"""ViT-Adapter's adapter: spatial prior module, injector, extractor and interaction block.

Parameter names follow the published ViT-Adapter, so its checkpoints load one to one.
Shapes: ViT tokens ``x`` are ``(B, H*W, C)`` on the stride-16 grid; adapter tokens ``c`` are the
stride-8, 16 and 32 maps flattened and concatenated, ``(B, 4HW + HW + HW/4, C)``.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from mmcv.cnn import build_norm_layer
from timm.layers import DropPath
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops import MSDeformAttn

# (reference_points (1, Q, 1, 2), spatial_shapes (L, 2), level_start_index (L,), the same
# (H, W) per level as Python ints)
DeformInputs = Tuple[Tensor, Tensor, Tensor, List[Tuple[int, int]]]


def maybe_checkpoint(fn: Callable, *args: Tensor, enabled: bool) -> Tensor:
    """Runs ``fn(*args)``, recomputing it in the backward pass when ``enabled`` and training."""
    if enabled and torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class SpatialPriorModule(nn.Module):
    """Convolutional stem: c1 at stride 4 (a map) and c2, c3, c4 at strides 8, 16, 32, each
    projected to ``embed_dim`` by a 1x1 conv. Returns four ``(B, embed_dim, h, w)`` maps."""

    def __init__(self, inplanes: int = 64, embed_dim: int = 192,
                 norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()

        def conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                    build_norm_layer(norm_cfg, cout)[1], nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(3, inplanes, 2),
                                  *conv_bn_relu(inplanes, inplanes, 1),
                                  *conv_bn_relu(inplanes, inplanes, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)


class MultiLevelDWConv(nn.Module):
    """A depth-wise 3x3 conv (shared weights) applied to each level of the adapter tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, shapes: Sequence[Tuple[int, int]]) -> Tensor:
        b, _, c = x.shape
        outs, start = [], 0
        for h, w in shapes:
            level = x[:, start:start + h * w].transpose(1, 2).reshape(b, c, h, w)
            outs.append(self.dwconv(level).flatten(2).transpose(1, 2))
            start += h * w
        return torch.cat(outs, dim=1)


class ConvFFN(nn.Module):
    """fc -> depth-wise 3x3 conv per level -> GELU -> fc."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = MultiLevelDWConv(hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, shapes: Sequence[Tuple[int, int]]) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), shapes)))
        return self.drop(self.fc2(x))


class _CrossAttention(nn.Module):
    """Shared part of the injector and the extractor: ``MSDA(LN(query), LN(feat))`` with the
    query and feature norms, and the optional gradient checkpointing of the whole update."""

    def __init__(self, dim: int, num_heads: int, n_points: int, n_levels: int,
                 deform_ratio: float, norm_eps: float, with_cp: bool) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(d_model=dim, n_levels=n_levels, n_heads=num_heads,
                                 n_points=n_points, ratio=deform_ratio)
        self.with_cp = with_cp

    def _attend(self, query: Tensor, feat: Tensor, deform: DeformInputs) -> Tensor:
        return self.attn(self.query_norm(query), deform[0], self.feat_norm(feat), deform[1],
                         deform[2], shapes=deform[3])


class Injector(_CrossAttention):
    """ViT tokens query the adapter's multi-scale features: ``x + gamma * MSDA(LN(x), LN(c))``."""

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, n_levels: int = 3,
                 deform_ratio: float = 1.0, init_values: float = 0.0, norm_eps: float = 1e-6,
                 with_cp: bool = False) -> None:
        super().__init__(dim, num_heads, n_points, n_levels, deform_ratio, norm_eps, with_cp)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, query: Tensor, feat: Tensor, deform: DeformInputs) -> Tensor:
        def inner(query: Tensor, feat: Tensor) -> Tensor:
            return query + self.gamma * self._attend(query, feat, deform)
        return maybe_checkpoint(inner, query, feat, enabled=self.with_cp)


class Extractor(_CrossAttention):
    """Adapter tokens query the ViT tokens: ``c + MSDA(LN(c), LN(x))``, then
    ``+ ConvFFN(LN(c))``."""

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, n_levels: int = 1,
                 deform_ratio: float = 1.0, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 with_cp: bool = False) -> None:
        super().__init__(dim, num_heads, n_points, n_levels, deform_ratio, norm_eps, with_cp)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio), drop=drop)
            self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: Tensor, feat: Tensor, deform: DeformInputs,
                shapes: Sequence[Tuple[int, int]]) -> Tensor:
        def inner(query: Tensor, feat: Tensor) -> Tensor:
            query = query + self._attend(query, feat, deform)
            if self.with_cffn:
                query = query + self.drop_path(self.ffn(self.ffn_norm(query), shapes))
            return query
        return maybe_checkpoint(inner, query, feat, enabled=self.with_cp)


class InteractionBlock(nn.Module):
    """injector -> a slice of ViT blocks -> extractor (-> two extra extractors in the last one).

    The ViT blocks are run by ``run_blocks``, a callable the backbone passes in, so that the
    position encoding's per-block PE and hooks stay with the backbone.
    """

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, drop: float = 0.0,
                 drop_path: float = 0.0, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 init_values: float = 0.0, deform_ratio: float = 1.0,
                 extra_extractor: bool = False, norm_eps: float = 1e-6,
                 with_cp: bool = False) -> None:
        super().__init__()
        common = dict(num_heads=num_heads, n_points=n_points, deform_ratio=deform_ratio,
                      norm_eps=norm_eps, with_cp=with_cp)
        self.injector = Injector(dim, n_levels=3, init_values=init_values, **common)
        self.extractor = Extractor(dim, n_levels=1, with_cffn=with_cffn, cffn_ratio=cffn_ratio,
                                   drop=drop, drop_path=drop_path, **common)
        # As published, the extra extractors get the same dropout and stochastic depth.
        self.extra_extractors = nn.Sequential(*[
            Extractor(dim, n_levels=1, with_cffn=with_cffn, cffn_ratio=cffn_ratio, drop=drop,
                      drop_path=drop_path, **common)
            for _ in range(2)
        ]) if extra_extractor else None

    def forward(self, x: Tensor, c: Tensor, run_blocks: Callable[[Tensor], Tensor],
                deform_inject: DeformInputs, deform_extract: DeformInputs,
                c_shapes: Sequence[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
        x = self.injector(x, c, deform_inject)
        x = run_blocks(x)
        c = self.extractor(c, x, deform_extract, c_shapes)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                c = extractor(c, x, deform_extract, c_shapes)
        return x, c
