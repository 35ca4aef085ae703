"""ViT/DeiT image classifier backbone with a pluggable position encoding, for ImageNet pre-training
with mmpretrain's ``ImageClassifier``.

It is built from the same :class:`~pe_dense.models.backbones.vit.Block` (without layer scale, as
DeiT) and the same position-encoding modules as :class:`ViTAdapter`, so each method has one
implementation across classification, detection and segmentation. Parameter names are timm's
``VisionTransformer`` names (``patch_embed.proj``, ``cls_token``, ``blocks.{i}.norm1`` /
``attn.qkv`` / ``attn.proj`` / ``norm2`` / ``mlp.fc1`` / ``mlp.fc2``, ``norm``, ``fc_norm``)
except the position encoding, which lives under ``pos_embed.`` exactly as in ViTAdapter
(``pos_embed.weight`` ``(1, H0*W0, C)``, ``pos_embed.prefix_weight`` ``(1, 1, C)`` for the class
token's slot, ``pos_embed.norms.{l}.*``, ``pos_embed.last_norm.*``, ``pos_embed.last_pe_norm.*``,
``pos_embed.proj.*``). An mmpretrain checkpoint of this backbone (``backbone.*`` keys) therefore
loads into ViTAdapter by its prefix alone; ViTAdapter drops what it has no place for
(``cls_token``, ``pos_embed.prefix_weight``, ``norm.*``, ``fc_norm.*``).

Pooling and final LayerNorm as the papers use them:

- DeiT and LaPE: a class token (``pooling='cls'``), the final LayerNorm on the tokens, the class
  token taken as the image feature.
- CPVT's PEG, PVG and MPVG: no class token, global average pooling of the patch tokens
  (``pooling='gap'``).
- Where the final LayerNorm sits with GAP differs in the literature, hence ``final_norm``:
  ``'before_pool'`` (default) normalises every token and then averages (CPVT's GAP models; timm's
  ``fc_norm=False``), ``'after_pool'`` averages and then normalises the mean (timm/MAE's
  ``fc_norm``, parameter name ``fc_norm``). With the class token both are the same function (a
  LayerNorm acts per token) and differ only in the parameter's name.
- MPVG: its Last LN ``y = LN(x_L) + LN''(pos_0)`` is the final LayerNorm, applied per token before
  GAP by the position encoding itself; the classifier then has no ``norm`` of its own, and
  ``final_norm='after_pool'`` (a norm after pooling) is an error.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.layers import PatchEmbed, to_2tuple
from torch import Tensor, nn

from pe_dense.checkpoint import convert_state_dict_hook, load_backbone_checkpoint
from pe_dense.registry import MODELS

from ..pos_embed import build_pos_encoding
from .vit import Block, apply_fast_path

ARCHS = {
    'tiny': dict(embed_dim=192, depth=12, num_heads=3),
    'small': dict(embed_dim=384, depth=12, num_heads=6),
    'base': dict(embed_dim=768, depth=12, num_heads=12),
}
POOLINGS = ('cls', 'gap')
FINAL_NORMS = ('before_pool', 'after_pool')


def arch_settings(arch: Union[str, dict]) -> dict:
    """``'tiny'``/``'small'``/``'base'`` or ``dict(embed_dim=, depth=, num_heads=)`` -> that
    dict."""
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f'unknown arch {arch!r}; PEViT arch must be one of {sorted(ARCHS)} '
                             'or a dict(embed_dim=, depth=, num_heads=)')
        return dict(ARCHS[arch])
    if not isinstance(arch, dict) or set(arch) != {'embed_dim', 'depth', 'num_heads'}:
        raise ValueError(f'PEViT arch {arch!r} must be one of {sorted(ARCHS)} or a dict with '
                         'exactly the keys embed_dim, depth, num_heads')
    return dict(arch)


@MODELS.register_module()
class PEViT(BaseModule):
    """ViT/DeiT classifier backbone whose position encoding is chosen by ``pos_embed``.

    Args:
        arch: ``'tiny'`` (192 channels, 12 blocks, 3 heads), ``'small'`` (384, 12, 6), ``'base'``
            (768, 12, 12) or ``dict(embed_dim=, depth=, num_heads=)``.
        img_size: pre-training image size, int or (H, W): the learned PE table covers
            ``img_size / patch_size`` patches and is resampled (bicubic) for other input sizes.
        patch_size, in_channels: the patch embedding.
        pos_embed: ``dict(type=NAME, **options)``, NAME one of ``AbsolutePE`` (default),
            ``NoPE``, ``PEG``, ``LaPE``, ``PVG``, ``MPVG``, ``RoPEAxial``, ``RoPEMixed`` (see
            docs/position_encodings.md for the equations; the rotary methods leave the class
            token unrotated).
        pooling: ``'cls'``: a class token (with its own learned PE slot where the method has a
            table), its final token is the image feature (DeiT, LaPE); ``'gap'``: no class token,
            mean of the patch tokens (CPVT, PVG, MPVG). MPVG requires ``'gap'``.
        final_norm: ``'before_pool'`` (LayerNorm on every token, then pooling) or
            ``'after_pool'`` (pooling, then LayerNorm, named ``fc_norm``); see the module
            docstring. MPVG's Last LN is its final norm and requires ``'before_pool'``.
        mlp_ratio, qkv_bias: the blocks (no layer scale, LayerNorm eps 1e-6, as DeiT).
        drop_rate, attn_drop_rate: dropout after the PE, in the MLP and attention projection,
            and of the attention weights.
        drop_path_rate: stochastic depth, linearly increasing over the blocks (DeiT: 0.1).
        fast_path: fused attention and, in eval mode, per-grid caching of the PE tables and
            chains (False: the explicit reference computation; same function).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH[, prefix='backbone.'])`` loads an
            mmpretrain checkpoint of this backbone, a DeiT/timm file or a LaPE-style file
            through :func:`pe_dense.checkpoint.load_backbone_checkpoint`.

    ``forward`` returns a one-element tuple ``((B, C),)``, what mmpretrain's ``LinearClsHead``
    reads.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 pos_embed: dict = dict(type='AbsolutePE'),
                 pooling: str = 'cls',
                 final_norm: str = 'before_pool',
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1,
                 fast_path: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        settings = arch_settings(arch)
        embed_dim, depth, num_heads = (settings['embed_dim'], settings['depth'],
                                       settings['num_heads'])
        if pooling not in POOLINGS:
            raise ValueError(f'PEViT pooling must be one of {POOLINGS}, got {pooling!r}')
        if final_norm not in FINAL_NORMS:
            raise ValueError(f'PEViT final_norm must be one of {FINAL_NORMS}, got {final_norm!r}')
        img_size = tuple(to_2tuple(img_size))
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f'img_size {img_size} is not a multiple of patch_size {patch_size}')
        self.embed_dim = embed_dim
        self.depth = depth
        self.pooling = pooling
        self.final_norm = final_norm
        self.num_prefix_tokens = 1 if pooling == 'cls' else 0
        self.pretrain_grid = (img_size[0] // patch_size, img_size[1] // patch_size)

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size,
                                      in_chans=in_channels, embed_dim=embed_dim,
                                      strict_img_size=False, output_fmt='NHWC')
        self.cls_token = (nn.Parameter(torch.zeros(1, 1, embed_dim))
                          if self.num_prefix_tokens else None)
        self.pos_embed = build_pos_encoding(pos_embed, embed_dim=embed_dim, depth=depth,
                                            pretrain_grid=self.pretrain_grid,
                                            num_prefix_tokens=self.num_prefix_tokens,
                                            num_heads=num_heads)
        pe_norm = self.pos_embed.replaces_final_norm
        if pe_norm and final_norm == 'after_pool':
            raise ValueError(
                f"{type(self.pos_embed).__name__} with final_norm='after_pool': its Last LN "
                "(y = LN(x_L) + LN''(pos_0)) is the final LayerNorm and acts on each token "
                "before pooling; use final_norm='before_pool'")
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], layer_scale=False,
                  fast_path=fast_path)
            for i in range(depth)
        ])
        before = final_norm == 'before_pool' and not pe_norm
        after = final_norm == 'after_pool'
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if before else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if after else nn.Identity()
        self._init_default_weights()
        self.register_load_state_dict_pre_hook(convert_state_dict_hook)
        self.fast_path = fast_path

    @property
    def fast_path(self) -> bool:
        """Whether the fast path is on (see ``fast_path`` in the class docstring)."""
        return self._fast_path

    @fast_path.setter
    def fast_path(self, enabled: bool) -> None:
        self._fast_path = bool(enabled)
        apply_fast_path(self, self._fast_path)

    def _init_default_weights(self) -> None:
        """DeiT's initialisation (timm 0.3.2's ViT, which DeiT and LaPE train with): linear
        weights truncated normal (std 0.02) with zero bias, LayerNorms 1 / 0, the class token
        truncated normal (std 0.02; later timm releases use normal(std 1e-6)); the PE
        initialises itself."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def init_weights(self) -> None:
        """``init_cfg=dict(type='Pretrained', checkpoint=...)`` goes through pe-dense's loader
        (mmpretrain, DeiT, timm, LaPE and pe-dense files); other init_cfgs go to mmengine."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_backbone_checkpoint(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                                     logger=MMLogger.get_current_instance())
            self._is_init = True
        else:
            super().init_weights()

    def forward(self, img: Tensor) -> Tuple[Tensor]:
        """``img``: ``(B, C_in, H, W)``, H and W multiples of the patch size -> ``((B, C),)``."""
        if img.dim() != 4:
            raise ValueError(f'PEViT expects a (B, C, H, W) batch, got shape {tuple(img.shape)}')
        x = self.patch_embed(img)  # (B, H/p, W/p, C)
        grid = tuple(x.shape[1:3])
        x = x.flatten(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(self.pos_embed.embed(x, grid))  # (B, P + N, C)
        block_pos = self.pos_embed.block_pos(grid)
        block_rope = self.pos_embed.block_rope(grid)
        for i, block in enumerate(self.blocks):
            x = block(x, grid, pos=block_pos[i], rope=block_rope[i])
            x = self.pos_embed.after_block(i, x, grid)
        x = self.norm(self.pos_embed.final(x, grid))
        if self.pooling == 'cls':
            x = x[:, 0]
        else:
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        return (self.fc_norm(x),)
