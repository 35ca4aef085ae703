"""Layer-wise learning-rate decay for a detector or segmentor holding a ViT backbone
(``ViTAdapter``), with the parameter groups the published ViT-Adapter segmentation code forms.

The published settings (ViT-Adapter's UperNet ADE20K configs)::

    optim_wrapper = dict(
        type='AmpOptimWrapper',  # or 'OptimWrapper'
        optimizer=dict(type='AdamW', lr=12e-5, betas=(0.9, 0.999), weight_decay=0.01),
        constructor='ViTAdapterLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.95))

Names are those of the whole model (``backbone.blocks.3.attn.qkv.weight``,
``decode_head.conv_seg.weight``). ``num_layers`` must be the number of ViT blocks of the backbone.

**The published rule** (``pos_embed_rule='published'``, the default; ViT-Adapter's
``LayerDecayOptimizerConstructor`` in ``segmentation/mmseg_custom/core/``):

- layer id 0 for ``backbone.pos_embed``, ``backbone.cls_token`` and ``backbone.patch_embed.*``;
  ``i + 1`` for ``backbone.blocks.{i}.*``; ``num_layers + 1`` for everything else (the adapter's
  ``level_embed``, ``spm``, ``interactions``, ``up``, ``norm1..4``, necks and heads);
- a parameter of layer id ``k`` gets ``lr * layer_decay_rate ** (num_layers + 1 - k)``;
- weight decay 0 for a parameter that is 1-D or whose name ends in ``.bias``; the published code
  also exempts the names ``pos_embed``, ``cls_token`` and ``visual_embed``, but compares them with
  whole-model names (``backbone.pos_embed``), so that test never matches: the PE table (3-D) and
  ``backbone.level_embed`` (2-D) get the optimizer's ``weight_decay``.
  (The published rule's decode-head entries for Mask2Former queries do not occur in UperNet.)

pe-dense keeps every position-encoding parameter under ``backbone.pos_embed.``. The rule is applied
to the name each parameter has in the published code of its method:

- the learned table ``backbone.pos_embed.weight`` (and a classifier's class slot
  ``backbone.pos_embed.prefix_weight``) is the published ``backbone.pos_embed``: id 0, decayed;
- the PE LayerNorm of block ``l`` in LaPE, PVG and MPVG, ``backbone.pos_embed.norms.{l}.*``, is
  LaPE's ``backbone.blocks.{l}.pe_norm.*`` (LaPE's code keeps it inside its block): id ``l + 1``,
  no decay (1-D). PVG and MPVG have no public code; their chains take LaPE's layout.
- RoPE-Mixed's frequencies of block ``l``, ``backbone.pos_embed.freqs.{l}`` (3-D), go with their
  block, ``backbone.blocks.{l}.attn.freqs``: id ``l + 1``, and never decay (rope-vit lists them
  in ``no_weight_decay``; the same under the exempt rule, where their id is 0).
- parts with no published code keep pe-dense's names, to which the same rule applies: PEG's
  convolution ``backbone.pos_embed.proj.*`` (CPVT's PEG inside ViT-Adapter) and MPVG's Last LN
  pair ``backbone.pos_embed.last_norm.*`` / ``last_pe_norm.*`` get id ``num_layers + 1`` (scale
  1); the conv weight (4-D) is decayed, its bias and the LayerNorms are not.

**pe-dense's exemption** (``pos_embed_rule='exempt'``): every ``backbone.pos_embed.*`` parameter at
layer id 0 and without weight decay, and ``backbone.level_embed`` without weight decay; the rest
as above.

Frozen parameters are left out.
"""
import re
from typing import Dict, List, Tuple

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

_PATCH_EMBED = 'backbone.patch_embed.'
_POS_EMBED = 'backbone.pos_embed'
_BLOCKS = 'backbone.blocks.'
_BLOCK_INDEX = re.compile(r'backbone\.blocks\.(\d+)\.')
# Parameters at layer id 0 by exact name in the published rule.
_EMBED_NAMES = ('backbone.pos_embed', 'backbone.cls_token', 'backbone.mask_token',
                'backbone.visual_embed')
_CHAIN_NORM = re.compile(r'backbone\.pos_embed\.norms\.(\d+)\.(.+)')
_TABLE_NAMES = ('backbone.pos_embed.weight', 'backbone.pos_embed.prefix_weight')
_ROPE_FREQS = re.compile(r'backbone\.pos_embed\.freqs\.(\d+)')
PE_RULES = ('published', 'exempt')
_PARAMWISE_KEYS = ('num_layers', 'layer_decay_rate', 'pos_embed_rule')
_REQUIRED_KEYS = ('num_layers', 'layer_decay_rate')


def _in_pos_embed(name: str) -> bool:
    """Whether ``name`` is a parameter of the backbone's position encoding."""
    return name == _POS_EMBED or name.startswith(_POS_EMBED + '.')


def published_name(name: str) -> str:
    """The name parameter ``name`` (a whole-model name) has in the published code of its method:
    the PE table -> ``backbone.pos_embed``; the PE LayerNorm of block l
    (``backbone.pos_embed.norms.{l}.*``) -> LaPE's ``backbone.blocks.{l}.pe_norm.*``; RoPE-Mixed's
    frequencies of block l (``backbone.pos_embed.freqs.{l}``) -> ``backbone.blocks.{l}.attn.freqs``
    (rope-vit keeps all blocks' frequencies in one tensor and has no layer decay; each block's
    go with that block); other names unchanged."""
    if name in _TABLE_NAMES:
        return _POS_EMBED
    m = _ROPE_FREQS.fullmatch(name)
    if m:
        return f'{_BLOCKS}{m.group(1)}.attn.freqs'
    m = _CHAIN_NORM.fullmatch(name)
    if m:
        return f'{_BLOCKS}{m.group(1)}.pe_norm.{m.group(2)}'
    return name


def get_layer_id(name: str, num_layers: int, rule: str = 'published') -> int:
    """The layer id of parameter ``name`` (a whole-model name such as
    ``backbone.blocks.3.attn.qkv.weight``) under ``rule`` (see the module docstring): 0 for the
    patch embedding and the PE table, ``i + 1`` for ViT block ``i``, ``num_layers + 1`` for the
    rest.

    Raises:
        ValueError: for a block index that ``num_layers`` blocks do not have, or an unknown rule.
    """
    if rule == 'exempt':
        if name.startswith(_PATCH_EMBED) or _in_pos_embed(name):
            return 0
    elif rule == 'published':
        name = published_name(name)
        if name in _EMBED_NAMES or name.startswith(_PATCH_EMBED):
            return 0
    else:
        raise ValueError(f'pos_embed_rule must be one of {PE_RULES}, got {rule!r}')
    if name.startswith(_BLOCKS):
        index = int(name[len(_BLOCKS):].split('.', 1)[0])
        if index >= num_layers:
            raise ValueError(f'{name} belongs to block {index}, but paramwise_cfg.num_layers is '
                             f'{num_layers}; set num_layers to the depth of the ViT')
        return index + 1
    return num_layers + 1


def is_no_decay(name: str, ndim: int, rule: str = 'published') -> bool:
    """Whether parameter ``name`` with ``ndim`` dimensions is exempt from weight decay under
    ``rule`` (see the module docstring). RoPE-Mixed's frequencies never decay under either rule
    (rope-vit's ``no_weight_decay``)."""
    if ndim == 1 or name.endswith('.bias') or _ROPE_FREQS.fullmatch(name):
        return True
    if rule == 'exempt':
        return _in_pos_embed(name) or name == 'backbone.level_embed'
    if rule == 'published':
        return False
    raise ValueError(f'pos_embed_rule must be one of {PE_RULES}, got {rule!r}')


def backbone_depth(module: nn.Module) -> int:
    """The number of ViT blocks of ``module``'s backbone, counted from its parameter names
    (``backbone.blocks.{i}.*``, frozen ones included); 0 when there are none."""
    indices = [int(m.group(1)) for m in map(_BLOCK_INDEX.match, dict(module.named_parameters()))
               if m]
    return max(indices) + 1 if indices else 0


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTAdapterLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Builds an optimizer wrapper whose parameter groups follow ViT-Adapter's layer-wise
    learning-rate decay (see the module docstring for the rules).

    ``paramwise_cfg`` takes ``num_layers`` (the number of ViT blocks of the backbone, which must
    match it), ``layer_decay_rate`` and optionally ``pos_embed_rule`` (``'published'``, the
    default, or ``'exempt'``); the optimizer config must give ``lr`` and ``weight_decay``.
    Parameters are grouped by (layer id, decay or not); each group carries ``lr``,
    ``weight_decay``, ``layer_id``, ``lr_scale`` and ``param_names``.

    Raises:
        ValueError: for a missing, unknown or out-of-range ``paramwise_cfg`` entry, a missing
            ``lr`` or ``weight_decay``, and (when the model is given) a model without
            ``backbone.blocks`` or whose block count differs from ``num_layers``.
    """

    def _validate_cfg(self) -> None:
        """Checks ``paramwise_cfg`` and the optimizer's ``lr`` and ``weight_decay``."""
        super()._validate_cfg()
        cfg = self.paramwise_cfg
        missing = [key for key in _REQUIRED_KEYS if key not in cfg]
        if missing:
            raise ValueError(f'{type(self).__name__} needs paramwise_cfg.{" and ".join(missing)}'
                             f', e.g. paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.95); '
                             f'got paramwise_cfg={cfg}')
        unknown = sorted(set(cfg) - set(_PARAMWISE_KEYS))
        if unknown:
            raise ValueError(f'{type(self).__name__} takes only {", ".join(_PARAMWISE_KEYS)} '
                             f'in paramwise_cfg, got also {unknown}')
        num_layers, rate = cfg['num_layers'], cfg['layer_decay_rate']
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f'paramwise_cfg.num_layers must be a positive int, got {num_layers!r}')
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be in (0, 1], got {rate!r}')
        rule = cfg.get('pos_embed_rule', 'published')
        if rule not in PE_RULES:
            raise ValueError(f'paramwise_cfg.pos_embed_rule must be one of {PE_RULES}, '
                             f'got {rule!r}')
        for key, value in (('lr', self.base_lr), ('weight_decay', self.base_wd)):
            if value is None:
                raise ValueError(f'{type(self).__name__} needs optimizer.{key} in the config')

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '') -> None:
        """Appends to ``params`` one group per (layer id, decay or not) holding the trainable
        parameters of ``module`` (the whole model), whose names are ``prefix`` + the names in
        ``module``.

        Raises:
            ValueError: when the backbone has no ``blocks`` or a number of them other than
                ``paramwise_cfg.num_layers``.
        """
        num_layers = self.paramwise_cfg['num_layers']
        rate = self.paramwise_cfg['layer_decay_rate']
        rule = self.paramwise_cfg.get('pos_embed_rule', 'published')
        if not prefix:
            depth = backbone_depth(module)
            if depth == 0:
                raise ValueError(f'{type(self).__name__} found no backbone.blocks.* parameters in '
                                 f'{type(module).__name__}: it is for models whose backbone is '
                                 'a ViT (ViTAdapter); use DefaultOptimWrapperConstructor otherwise')
            if depth != num_layers:
                raise ValueError(f'paramwise_cfg.num_layers is {num_layers}, but the backbone has '
                                 f'{depth} ViT blocks (backbone.blocks.0..{depth - 1}); set '
                                 f'num_layers={depth}, the depth of the backbone')
        groups: Dict[Tuple[int, bool], dict] = {}
        for local_name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            name = f'{prefix}.{local_name}' if prefix else local_name
            layer_id = get_layer_id(name, num_layers, rule)
            decay = not is_no_decay(name, param.ndim, rule)
            group = groups.get((layer_id, decay))
            if group is None:
                scale = rate ** (num_layers + 1 - layer_id)
                group = groups[(layer_id, decay)] = dict(
                    params=[], param_names=[], layer_id=layer_id, lr_scale=scale,
                    lr=self.base_lr * scale, weight_decay=self.base_wd if decay else 0.0)
            group['params'].append(param)
            group['param_names'].append(name)
        ordered = [groups[key] for key in sorted(groups)]
        params.extend(ordered)
        logger = MMLogger.get_current_instance()
        logger.info(f'layer-wise lr decay: {len(ordered)} param groups '
                    f'(num_layers={num_layers}, layer_decay_rate={rate}, pos_embed_rule={rule})')
        for group in ordered:
            logger.info(f'  layer {group["layer_id"]:>2}: {len(group["params"]):>3} params, '
                        f'lr={group["lr"]:.4g} (x{group["lr_scale"]:.4f}), '
                        f'weight_decay={group["weight_decay"]:g}, first {group["param_names"][0]}')
