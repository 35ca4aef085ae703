"""Layer-wise learning-rate decay for a detector or segmentor holding a ``ViTAdapter`` backbone.

The settings are those published for ViT-Adapter (BEiT-style decay)::

    optim_wrapper = dict(
        type='OptimWrapper',  # or 'AmpOptimWrapper'
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
        constructor='ViTAdapterLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.95))

Parameter names are those of the whole model (``backbone.blocks.3.attn.qkv.weight``,
``decode_head.conv_seg.weight``). Layer ids:

- ``backbone.patch_embed.*`` and ``backbone.pos_embed.*`` (every position encoding keeps all of
  its parameters there): 0;
- ``backbone.blocks.{i}.*``: ``i + 1``;
- everything else (the adapter's ``level_embed``, ``spm``, ``interactions``, ``up``, ``norm1..4``,
  necks and heads): ``num_layers + 1``.

A parameter of layer ``k`` gets ``lr * layer_decay_rate ** (num_layers + 1 - k)``. Weight decay is
0 for 1-D parameters, biases, all of ``backbone.pos_embed.*`` and ``backbone.level_embed``; the
others get the optimizer's ``weight_decay``. Frozen parameters are left out.
"""
from typing import Dict, List, Tuple

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

_PATCH_EMBED = 'backbone.patch_embed.'
_POS_EMBED = 'backbone.pos_embed'
_BLOCKS = 'backbone.blocks.'
_NO_DECAY_NAMES = ('backbone.level_embed',)
_PARAMWISE_KEYS = ('num_layers', 'layer_decay_rate')


def _in_pos_embed(name: str) -> bool:
    """Whether ``name`` is a parameter of the backbone's position encoding."""
    return name == _POS_EMBED or name.startswith(_POS_EMBED + '.')


def get_layer_id(name: str, num_layers: int) -> int:
    """The layer id of parameter ``name`` (a whole-model name such as
    ``backbone.blocks.3.attn.qkv.weight``): 0 for the patch and position embeddings, ``i + 1`` for
    ViT block ``i``, ``num_layers + 1`` for the rest.

    Raises:
        ValueError: for a block index that ``num_layers`` blocks do not have.
    """
    if name.startswith(_PATCH_EMBED) or _in_pos_embed(name):
        return 0
    if name.startswith(_BLOCKS):
        index = int(name[len(_BLOCKS):].split('.', 1)[0])
        if index >= num_layers:
            raise ValueError(f'{name} belongs to block {index}, but paramwise_cfg.num_layers is '
                             f'{num_layers}; set num_layers to the depth of the ViT')
        return index + 1
    return num_layers + 1


def is_no_decay(name: str, ndim: int) -> bool:
    """Whether parameter ``name`` with ``ndim`` dimensions is exempt from weight decay."""
    return (ndim == 1 or name.endswith('.bias') or _in_pos_embed(name)
            or name in _NO_DECAY_NAMES)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTAdapterLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Builds an optimizer wrapper whose parameter groups follow ViT-Adapter's layer-wise
    learning-rate decay (see the module docstring for the rules).

    ``paramwise_cfg`` takes exactly ``num_layers`` (the number of ViT blocks) and
    ``layer_decay_rate``; the optimizer config must give ``lr`` and ``weight_decay``. Parameters
    are grouped by (layer id, decay or not); each group carries ``lr``, ``weight_decay``,
    ``layer_id``, ``lr_scale`` and ``param_names``.
    """

    def _validate_cfg(self) -> None:
        """Checks ``paramwise_cfg`` and the optimizer's ``lr`` and ``weight_decay``."""
        super()._validate_cfg()
        cfg = self.paramwise_cfg
        missing = [key for key in _PARAMWISE_KEYS if key not in cfg]
        if missing:
            raise ValueError(f'{type(self).__name__} needs paramwise_cfg.{" and ".join(missing)}'
                             f', e.g. paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.95); '
                             f'got paramwise_cfg={cfg}')
        unknown = sorted(set(cfg) - set(_PARAMWISE_KEYS))
        if unknown:
            raise ValueError(f'{type(self).__name__} takes only num_layers and layer_decay_rate '
                             f'in paramwise_cfg, got also {unknown}')
        num_layers, rate = cfg['num_layers'], cfg['layer_decay_rate']
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f'paramwise_cfg.num_layers must be a positive int, got {num_layers!r}')
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be in (0, 1], got {rate!r}')
        for key, value in (('lr', self.base_lr), ('weight_decay', self.base_wd)):
            if value is None:
                raise ValueError(f'{type(self).__name__} needs optimizer.{key} in the config')

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '') -> None:
        """Appends to ``params`` one group per (layer id, decay or not) holding the trainable
        parameters of ``module``, whose names are ``prefix`` + the names in ``module``."""
        num_layers = self.paramwise_cfg['num_layers']
        rate = self.paramwise_cfg['layer_decay_rate']
        groups: Dict[Tuple[int, bool], dict] = {}
        for local_name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            name = f'{prefix}.{local_name}' if prefix else local_name
            layer_id = get_layer_id(name, num_layers)
            decay = not is_no_decay(name, param.ndim)
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
                    f'(num_layers={num_layers}, layer_decay_rate={rate})')
        for group in ordered:
            logger.info(f'  layer {group["layer_id"]:>2}: {len(group["params"]):>3} params, '
                        f'lr={group["lr"]:.4g} (x{group["lr_scale"]:.4f}), '
                        f'weight_decay={group["weight_decay"]:g}, first {group["param_names"][0]}')
