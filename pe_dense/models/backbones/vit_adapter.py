"""ViT-Adapter (Chen et al., ICLR 2023) with a pluggable position encoding.

Defaults are ViT-Adapter-Ti (DeiT-Ti: dim 192, depth 12, 3 heads). The two published variants:

- detection (Mask R-CNN): ``window_attn=[True, True, False] * 4, window_size=14`` (14x14 windows in
  blocks 0,1,3,4,6,7,9,10, global attention in 2,5,8,11) and ``vit_feature='last'`` (the final ViT
  tokens are added to all four outputs);
- segmentation (UperNet): global attention everywhere and ``vit_feature='per_interaction'`` (the
  tokens after interaction i are added to output i).

Input sizes: the image is zero-padded at the bottom and right to a multiple of 32 (as mmdet's and
mmseg's data preprocessors do with ``size_divisor=32``); for an ``H x W`` input the outputs are
``(B, C, ceil(H/32)*32/s, ceil(W/32)*32/s)`` for s = 4, 8, 16, 32, and cover that padded image.

Any patch size p works (e.g. 14 for DINOv2-style ViTs, 8, 32): the ViT tokens form a
``ceil(H'/p) x ceil(W'/p)`` map (H', W' the padded size; for a p that does not divide 32 the
patch embedding sees the image zero-padded further to a multiple of p), which is resized
(bilinear) to each output's own size; for p = 16 these sizes are 4x, 2x, 1x and 0.5x the token
map, the published ViT-Adapter's fixed factors, so patch-16 outputs are unchanged.

Fast path (``fast_path=True``, the default) and reference path (``False``) compute the same
function (fp32 outputs equal to about 1e-5); the fast path uses fused attention, the gather-based
deformable-attention sampler on the CPU and per-grid caching in inference; the reference path is
the straightforward form, kept for tests and comparisons (``tools/benchmark.py --compare``).
"""
from __future__ import annotations

import math
from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.layers import PatchEmbed
from torch import Tensor, nn

from pe_dense.checkpoint import convert_state_dict_hook, load_backbone_checkpoint
from pe_dense.registry import MODELS

from ..adapters import InteractionBlock, SpatialPriorModule, maybe_checkpoint
from ..adapters.modules import DeformInputs
from ..grid_cache import GridCache
from ..ops import MSDeformAttn
from ..pos_embed import build_pos_encoding
from .vit import Block, apply_fast_path

VIT_FEATURE_MODES = ('last', 'per_interaction', 'none')
# Strides of the four outputs (c1..c4) relative to the padded input.
OUT_STRIDES = (4, 8, 16, 32)


def _reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> Tensor:
    """Cell centres of each level, normalised to [0, 1]: ``(1, sum h*w, 1, 2)``, (x, y)."""
    points = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
            (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w, indexing='ij')
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(points, 0)[None, :, None]


def deform_inputs(vit_grid: Tuple[int, int], c_shapes: Sequence[Tuple[int, int]],
                  device: torch.device) -> Tuple[DeformInputs, DeformInputs]:
    """Reference points, spatial shapes (as a tensor, and as Python ints) and level start indices
    of the injector (queries: the ViT grid; values: the three adapter levels) and of the extractor
    (the other way round)."""
    def level_info(shapes):
        # torch.tensor, not as_tensor: only the former keeps sizes symbolic under torch.export.
        spatial = torch.tensor(shapes, dtype=torch.long, device=device)
        start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
        return spatial, start, list(shapes)

    c_shapes = [tuple(s) for s in c_shapes]
    inject = (_reference_points([tuple(vit_grid)], device), *level_info(c_shapes))
    extract = (_reference_points(c_shapes, device), *level_info([vit_grid]))
    return inject, extract


@MODELS.register_module()
class ViTAdapter(BaseModule):
    """ViT-Adapter backbone whose position encoding is chosen by ``pos_embed``.

    Args:
        pos_embed: ``dict(type=NAME, **options)``, NAME one of ``AbsolutePE`` (default), ``NoPE``,
            ``PEG``, ``LaPE``, ``PVG``, ``MPVG``, ``RoPEAxial``, ``RoPEMixed``.
        pretrain_size: image side of the pre-training (224): the learned PE table is 14x14.
        patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, layer_scale: the ViT
            (any patch size; ``pretrain_size`` must be a multiple of it).
        drop_rate, attn_drop_rate, drop_path_rate: dropout and stochastic depth (linearly
            increasing over the blocks, and the same rate for each interaction's extractor FFN).
        window_attn: bool or one bool per block; window_size: int or one int per block.
        conv_inplane, n_points, deform_num_heads, init_values, interaction_indexes, with_cffn,
            cffn_ratio, deform_ratio, use_extra_extractor: the adapter (ViT-Adapter-Ti defaults).
        vit_feature: how ViT tokens are added to the four outputs: ``'last'`` (detection),
            ``'per_interaction'`` (segmentation) or ``'none'`` (add_vit_feature=False).
        norm_cfg: normalisation of the spatial prior module and the four output norms
            (``BN``; ``SyncBN`` for multi-GPU training).
        with_cp: gradient checkpointing of blocks, injectors and extractors.
        fast_path: the fast implementation (default) or the reference one (False); both compute
            the same function. The fast path uses ``F.scaled_dot_product_attention`` for global
            and windowed attention (reference: explicit ``softmax(q k^T / sqrt(d)) v``), on the
            CPU the gather-based deformable-attention sampler
            :func:`~pe_dense.models.ops.ms_deform_attn_gather` (reference: mmcv's per-level
            ``grid_sample`` form; CUDA tensors use mmcv's kernel either way when mmcv has its
            CUDA ops), and caches per input grid what depends only on it: the reference points
            and level shapes (always)
            and, in eval mode when no gradient flows into them, the PE tables and chains
            (recomputed as soon as one of their parameters changes). Settable after
            construction: ``model.fast_path = False``.
        out_indices: which of the four maps (strides 4, 8, 16, 32) to return.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH[, prefix='backbone.'])`` loads any
            checkpoint layout that :func:`pe_dense.checkpoint.load_backbone_checkpoint` accepts;
            a file that would leave a ViT weight unset raises
            :class:`~pe_dense.checkpoint.CheckpointLayoutError` (so does any ``load_state_dict``
            of a model holding this backbone, ``load_from`` included, whose state dict has
            nothing for it or leaves ViT weights unset).
    """

    def __init__(self,
                 pos_embed: dict = dict(type='AbsolutePE'),
                 pretrain_size: int = 224,
                 patch_size: int = 16,
                 embed_dim: int = 192,
                 depth: int = 12,
                 num_heads: int = 3,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 layer_scale: bool = True,
                 drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1,
                 window_attn: Union[bool, Sequence[bool]] = False,
                 window_size: Union[int, Sequence[int]] = 14,
                 conv_inplane: int = 64,
                 n_points: int = 4,
                 deform_num_heads: int = 6,
                 init_values: float = 0.0,
                 interaction_indexes: Sequence[Sequence[int]] = ((0, 2), (3, 5), (6, 8), (9, 11)),
                 with_cffn: bool = True,
                 cffn_ratio: float = 0.25,
                 deform_ratio: float = 1.0,
                 use_extra_extractor: bool = True,
                 vit_feature: str = 'last',
                 norm_cfg: dict = dict(type='BN'),
                 with_cp: bool = False,
                 fast_path: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if vit_feature not in VIT_FEATURE_MODES:
            raise ValueError(f'vit_feature must be one of {VIT_FEATURE_MODES}, got {vit_feature!r}')
        window_attn = _per_block(window_attn, depth, 'window_attn')
        window_size = _per_block(window_size, depth, 'window_size')
        self.interaction_indexes = [tuple(idx) for idx in interaction_indexes]
        covered = [i for start, end in self.interaction_indexes for i in range(start, end + 1)]
        if covered != list(range(depth)):
            raise ValueError(f'interaction_indexes {interaction_indexes} must cover blocks '
                             f'0..{depth - 1} in order, each once')
        if pretrain_size % patch_size:
            raise ValueError(f'pretrain_size {pretrain_size} is not a multiple of patch_size '
                             f'{patch_size}')
        if not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f'out_indices {out_indices} must be a subset of (0, 1, 2, 3)')
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.vit_feature = vit_feature
        self.with_cp = with_cp
        self.out_indices = tuple(out_indices)
        self.pretrain_grid = (pretrain_size // patch_size, pretrain_size // patch_size)

        self.patch_embed = PatchEmbed(img_size=pretrain_size, patch_size=patch_size,
                                      embed_dim=embed_dim,
                                      dynamic_img_pad=False, strict_img_size=False,
                                      output_fmt='NHWC')
        self.pos_embed = build_pos_encoding(pos_embed, embed_dim=embed_dim, depth=depth,
                                            pretrain_grid=self.pretrain_grid,
                                            num_heads=num_heads)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                  window_size=window_size[i] if window_attn[i] else 0,
                  layer_scale=layer_scale, fast_path=fast_path) for i in range(depth)
        ])

        self.level_embed = nn.Parameter(torch.zeros(3, embed_dim))
        self.spm = SpatialPriorModule(conv_inplane, embed_dim, norm_cfg=norm_cfg)
        self.interactions = nn.Sequential(*[
            InteractionBlock(embed_dim, num_heads=deform_num_heads, n_points=n_points,
                             drop=drop_rate, drop_path=drop_path_rate, with_cffn=with_cffn,
                             cffn_ratio=cffn_ratio, init_values=init_values,
                             deform_ratio=deform_ratio,
                             extra_extractor=(use_extra_extractor
                                              and i == len(interaction_indexes) - 1),
                             with_cp=with_cp)
            for i in range(len(interaction_indexes))
        ])
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)
        for i in range(1, 5):
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, embed_dim)[1])
        self._init_default_weights()
        self.register_load_state_dict_pre_hook(convert_state_dict_hook)
        self._deform_cache = GridCache()
        self.fast_path = fast_path

    @property
    def fast_path(self) -> bool:
        """Whether the fast path is on (see the class docstring)."""
        return self._fast_path

    @fast_path.setter
    def fast_path(self, enabled: bool) -> None:
        self._fast_path = bool(enabled)
        apply_fast_path(self, self._fast_path)
        self._deform_cache.clear()

    # ------------------------------------------------------------------ init
    def _init_default_weights(self) -> None:
        """ViT-Adapter's initialisation (what a pre-trained checkpoint then overwrites)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def init_weights(self) -> None:
        """``init_cfg=dict(type='Pretrained', checkpoint=...)`` goes through pe-dense's loader
        (DeiT, timm, LaPE, ViT-Adapter and pe-dense files); other init_cfgs go to mmengine."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_backbone_checkpoint(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                                     logger=MMLogger.get_current_instance())
            self._is_init = True
        else:
            super().init_weights()

    # --------------------------------------------------------------- forward
    def _run_blocks(self, start: int, end: int, grid: Tuple[int, int],
                    block_pos: List[Optional[Tensor]], block_rope: List[Optional[Tensor]],
                    x: Tensor) -> Tensor:
        for i in range(start, end + 1):
            x = maybe_checkpoint(partial(self.blocks[i], grid=grid, pos=block_pos[i],
                                         rope=block_rope[i]), x, enabled=self.with_cp)
            x = self.pos_embed.after_block(i, x, grid)
        return x

    def _pad_to_patch(self, img: Tensor) -> Tensor:
        """The input (already a multiple of 32) zero-padded at the bottom and right to a multiple
        of the patch size when that does not divide 32 (e.g. 14), so that the ViT tokens cover the
        whole image; unchanged otherwise."""
        p = self.patch_size
        if 32 % p == 0:
            return img
        return F.pad(img, (0, -img.shape[-1] % p, 0, -img.shape[-2] % p))

    def _vit_map(self, tokens: Tensor, grid: Tuple[int, int], size: Sequence[int],
                 stride: int) -> Tensor:
        """ViT tokens ``(B, h*w, C)`` on the patch ``grid`` -> a ``(B, C, *size)`` map for the
        output of stride ``stride``: resized (bilinear, align_corners False, as the published
        ViT-Adapter) to that output's own size, so any patch size works. With ``patch_size ==
        stride`` the grid already is that size (the input is padded to a multiple of 32); for patch
        16 the sizes are exactly 4x, 2x, 1x and 0.5x the grid, the published fixed factors."""
        fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, *grid)
        if self.patch_size == stride:
            return fmap
        return F.interpolate(fmap, size=tuple(size), mode='bilinear', align_corners=False)

    def forward(self, img: Tensor) -> Tuple[Tensor, ...]:
        """``img``: ``(B, 3, H, W)`` -> maps ``(B, C, H'/s, W'/s)`` for s in 4, 8, 16, 32, where
        H', W' are H, W rounded up to multiples of 32."""
        if img.dim() != 4:
            raise ValueError('ViTAdapter expects a (B, 3, H, W) batch, got shape '
                             f'{tuple(img.shape)}')
        h, w = img.shape[-2:]
        if h < 32 or w < 32:
            raise ValueError(f'ViTAdapter needs images of at least 32x32 pixels, got {h}x{w}')
        pad_h, pad_w = -h % 32, -w % 32
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h))
        b = img.shape[0]

        c1, c2, c3, c4 = self.spm(img)
        c_shapes = [tuple(t.shape[-2:]) for t in (c2, c3, c4)]
        c = torch.cat([t.flatten(2).transpose(1, 2) + self.level_embed[i]
                       for i, t in enumerate((c2, c3, c4))], dim=1)

        x = self.patch_embed(self._pad_to_patch(img))  # (B, ceil(H/p), ceil(W/p), C)
        grid = tuple(x.shape[1:3])
        x = x.flatten(1, 2)
        if self.fast_path:
            deform_inject, deform_extract = self._deform_cache.get(
                (grid, tuple(c_shapes), img.device), [],
                partial(deform_inputs, grid, c_shapes, img.device))
        else:
            deform_inject, deform_extract = deform_inputs(grid, c_shapes, img.device)
        x = self.pos_drop(self.pos_embed.embed(x, grid))
        block_pos = self.pos_embed.block_pos(grid)
        block_rope = self.pos_embed.block_rope(grid)

        vit_maps = []
        for layer, (start, end) in zip(self.interactions, self.interaction_indexes):
            run_blocks = partial(self._run_blocks, start, end, grid, block_pos, block_rope)
            x, c = layer(x, c, run_blocks, deform_inject, deform_extract, c_shapes)
            vit_maps.append(x)
        vit_maps[-1] = self.pos_embed.final(vit_maps[-1], grid)

        sizes = [s[0] * s[1] for s in c_shapes]
        c2, c3, c4 = [t.transpose(1, 2).reshape(b, self.embed_dim, *shape)
                      for t, shape in zip(torch.split(c, sizes, dim=1), c_shapes)]
        c1 = self.up(c2) + c1
        outs = [c1, c2, c3, c4]
        if self.vit_feature != 'none':
            if self.vit_feature == 'last':
                vit_maps = vit_maps[-1:] * 4
            for i, (stride, tokens) in enumerate(zip(OUT_STRIDES, vit_maps)):
                outs[i] = outs[i] + self._vit_map(tokens, grid, outs[i].shape[-2:], stride)
        # The maps above are channels-last views of token sequences. Heads that read raw memory
        # (mmcv's RoIAlign, CPU and CUDA) assume contiguous NCHW, so hand out contiguous maps.
        outs = [getattr(self, f'norm{i + 1}')(out).contiguous() for i, out in enumerate(outs)]
        return tuple(outs[i] for i in self.out_indices)


def _per_block(value, depth: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != depth:
            raise ValueError(f'{name} has {len(value)} entries; it needs one per block ({depth})')
        return list(value)
    return [value] * depth
