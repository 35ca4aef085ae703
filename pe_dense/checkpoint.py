"""Checkpoints in, checkpoints out.

Accepted by :func:`load_backbone_checkpoint`, the backbone's ``init_cfg=dict(type='Pretrained')``
and (through a ``load_state_dict`` pre-hook on the backbone) any ``load_state_dict`` of a model
holding the backbone, mmengine's ``load_from`` included:

- the DeiT release (``{'model': state_dict}``) and plain timm state dicts: the class/distillation
  tokens, ``head*`` and (except for MPVG, whose Last LN it becomes) the final ``norm`` are dropped,
  ``pos_embed`` loses its class-token slot and is resampled when the pre-training grid differs;
- LaPE-style checkpoints (``blocks.{i}.pe_norm.*``);
- the released ViT-Adapter COCO / ADE20K checkpoints (mmdet 2.x / mmseg 0.x, ``backbone.`` prefix),
  into a whole detector/segmentor or into the backbone alone;
- pe-dense's own format: ``{'meta': {'pe_dense': {'format': 1, 'pos_embed': NAME}},
  'state_dict': {...}}`` with this backbone's parameter names (written by
  ``tools/convert_checkpoint.py``).
"""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Tuple

from torch import Tensor, nn

from pe_dense.safe_load import UnsafeCheckpointError, load_checkpoint_file

FORMAT_VERSION = 1
# Keys of classification checkpoints that no dense-prediction backbone uses (kept for a backbone
# that has them: the classifier PEViT's cls_token and fc_norm).
_CLASSIFIER_ONLY = re.compile(r'(cls_token|dist_token|head(_dist)?\..*|fc_norm\..*|pre_logits\..*)')
_UNUSED_AFTER_PE = re.compile(r'norm\.|blocks\.\d+\.pe_norm\.')


def read_checkpoint(path: str) -> dict:
    """Reads a checkpoint file (local path or URL) into a dict; anything else is an error that
    names the file."""
    if re.match(r'^(https?|s3|openmmlab|torchvision|mmcls|pavi)://', str(path)):
        from mmengine.runner.checkpoint import CheckpointLoader
        try:
            obj = CheckpointLoader.load_checkpoint(path, map_location='cpu')
        except Exception as err:
            raise ValueError(f'could not read checkpoint {path}: {err}') from err
    else:
        try:
            obj = load_checkpoint_file(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f'{err}{missing_file_hint(path)}') from None
        except UnsafeCheckpointError:
            raise
        except Exception as err:
            raise ValueError(f'{path} is not a PyTorch checkpoint: {err}') from err
    if not isinstance(obj, dict):
        raise ValueError(f'{path} holds a {type(obj).__name__}, not a checkpoint (a dict of '
                         'tensors, or one under "state_dict" or "model")')
    return obj


# The pre-trained files the dense configs name, one per config in configs/deit/.
_PRETRAINED = re.compile(r'deit-(ti)_(abs|peg|lape|pvg|mpvg)_in1k\.pth'
                         r'|deit-(s|b)_(abs|mpvg)_in1k\.pth')
_DEIT_RELEASE = 'https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth'


def missing_file_hint(path: str) -> str:
    """What makes a missing pre-trained file: the pre-training config and the commands, for the
    file names the dense configs use; empty for other names."""
    name = os.path.basename(str(path))
    if name == os.path.basename(_DEIT_RELEASE):
        return (f'. It is the DeiT-Ti release: download {_DEIT_RELEASE} into '
                f'{os.path.dirname(str(path)) or "."}/, or pre-train it with '
                'configs/deit/deit-ti-abs_4xb256-300e_in1k.py')
    m = _PRETRAINED.fullmatch(name)
    if not m:
        return ''
    size, method = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    config = f'deit-{size}-{method}_4xb256-300e_in1k'
    return (f'. It is made by ImageNet pre-training with configs/deit/{config}.py:\n'
            f'  bash tools/dist_train.sh configs/deit/{config}.py 4\n'
            f'  cp work_dirs/{config}/epoch_300.pth {path}\n'
            '(the classifier checkpoint is read as it is: its backbone.* keys load into '
            'ViTAdapter)')


def unwrap_state_dict(obj: dict, source: str = 'checkpoint') -> Dict[str, Tensor]:
    """``{'state_dict' | 'model' | 'module': {...}}`` -> the flat state dict, with DataParallel's
    ``module.`` prefix removed."""
    for key in ('state_dict', 'model', 'module'):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f'{source} holds no tensors at its top level nor under "state_dict" or '
                         f'"model" (keys: {sorted(obj)[:8]}): it is not a model checkpoint')
    return {k[7:] if k.startswith('module.') else k: v for k, v in tensors.items()}


def convert_backbone_keys(backbone: nn.Module, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Backbone-relative keys of any accepted layout -> this backbone's parameter names."""
    own = backbone.state_dict(keep_vars=True).keys()
    out = {}
    for key, value in state_dict.items():
        if _CLASSIFIER_ONLY.fullmatch(key) and key not in own:
            continue
        # timm's layer scale (ls1.gamma) is ViT-Adapter's gamma1.
        key = re.sub(r'^(blocks\.\d+)\.ls([12])\.gamma$', r'\1.gamma\2', key)
        out[key] = value
    out = backbone.pos_embed.convert_checkpoint(out)
    # DeiT's final norm and LaPE's PE norms: a method that uses them has renamed them by now.
    return {k: v for k, v in out.items() if k in own or not _UNUSED_AFTER_PE.match(k)}


def dropped_keys(backbone: nn.Module, state_dict: Dict[str, Tensor]) -> List[str]:
    """The keys of ``state_dict`` that :func:`convert_backbone_keys` drops: class/distillation
    tokens, heads, pooling norms, a PE table or PE norm the backbone's method does not use."""
    return [k for k, v in state_dict.items() if not convert_backbone_keys(backbone, {k: v})]


def convert_state_dict_hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook of the backbone: converts the keys under ``prefix`` in place,
    logs the keys it drops (one line) and refuses a tensor whose shape does not fit, naming the
    key and both shapes."""
    sub = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
    if not sub:
        return
    converted = convert_backbone_keys(module, sub)
    dropped = dropped_keys(module, sub)
    if dropped:
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().info(
            f'{type(module).__name__} ({type(module.pos_embed).__name__}): checkpoint keys not '
            f'used by this backbone, dropped ({len(dropped)}): {summarize_keys(dropped)}')
    own = module.state_dict()
    for key, value in converted.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f'checkpoint tensor {prefix}{key} has shape {tuple(value.shape)} but the model\'s '
                f'has shape {tuple(own[key].shape)}: the checkpoint was made for another '
                'architecture (embed_dim, depth, patch size or position encoding)')
        state_dict[prefix + key] = value


def summarize_keys(keys: Iterable[str]) -> str:
    """A short, readable account of many keys: grouped by top module, indices folded to ``*``."""
    groups: Dict[str, set] = defaultdict(set)
    for key in keys:
        head, _, rest = key.partition('.')
        groups[head].add(re.sub(r'(^|\.)\d+(?=\.|$)', r'\1*', rest) if rest else '')
    parts = []
    for head in sorted(groups):
        leaves = sorted(groups[head] - {''})
        if not leaves:
            parts.append(head)
        elif len(leaves) <= 3:
            parts.append(f'{head}.{{{", ".join(leaves)}}}')
        else:
            parts.append(f'{head} ({len(leaves)} kinds of tensors)')
    return '; '.join(parts) if parts else 'none'


def load_backbone_checkpoint(backbone: nn.Module, path: str, prefix: Optional[str] = None,
                             logger: Optional[logging.Logger] = None
                             ) -> Tuple[List[str], List[str]]:
    """Loads a checkpoint of any accepted format into ``backbone``.

    ``prefix`` selects the keys of a whole-model file (``'backbone.'``); without it, a file whose
    keys start with ``backbone.`` is read that way. Missing and unexpected keys are reported in one
    log line and returned.
    """
    state_dict = unwrap_state_dict(read_checkpoint(path), source=str(path))
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(f'{path} has no keys under the prefix {prefix!r}')
    n_in = len(state_dict)
    # Converted here, so the one log line can name what the conversion drops; the pre-hook then
    # finds nothing left to convert or drop.
    dropped = dropped_keys(backbone, state_dict)
    result = backbone.load_state_dict(convert_backbone_keys(backbone, state_dict), strict=False)
    msg = (f'loaded {path} into {type(backbone).__name__} '
           f'({type(backbone.pos_embed).__name__}): {n_in} tensors read; '
           f'dropped ({len(dropped)}): {summarize_keys(dropped)}; '
           f'missing ({len(result.missing_keys)}): {summarize_keys(result.missing_keys)}; '
           f'unexpected ({len(result.unexpected_keys)}): {summarize_keys(result.unexpected_keys)}')
    (logger or logging.getLogger(__name__)).info(msg)
    return list(result.missing_keys), list(result.unexpected_keys)


def pe_dense_checkpoint(state_dict: Dict[str, Tensor], pos_embed: str, source: str = '') -> dict:
    """pe-dense's checkpoint format (see the module docstring)."""
    meta = dict(format=FORMAT_VERSION, pos_embed=pos_embed, source=os.path.basename(source))
    return {'meta': {'pe_dense': meta}, 'state_dict': state_dict}
