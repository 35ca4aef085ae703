"""Checkpoints in, checkpoints out: every route that points a pe-dense backbone at a file.

Routes: the backbones' ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``
(:func:`load_backbone_checkpoint`; ViTAdapter and the classifier PEViT), and any
``load_state_dict`` of a model holding the backbone, through a ``load_state_dict`` pre-hook on the
backbone (:func:`convert_state_dict_hook`): mmengine's ``load_from`` (also
``--cfg-options load_from=...``, ``tools/test.py CHECKPOINT``, mmdet's/mmseg's/mmpretrain's own
test scripts and inferencers), ``--resume``, a whole-model ``Pretrained`` init, and
``tools/convert_checkpoint.py``.

Layouts (keys relative to the backbone; a whole-model file has them under ``backbone.``):

- the DeiT release (``{'model': state_dict}``) and timm ViTs: ``patch_embed.proj.*``,
  ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``pos_embed``
  ``(1, [1 +] h*w, C)``, ``cls_token``, ``norm.*``, ``head.*``; timm's layer scale
  ``blocks.{i}.ls1.gamma`` / ``ls2.gamma`` (e.g. patch-14 DINOv2 ViTs) is ViT-Adapter's
  ``gamma1`` / ``gamma2``;
- LaPE-style files: the above plus ``blocks.{i}.pe_norm.*``;
- mmpretrain's own ViT/DeiT (``VisionTransformer``, ``DistilledVisionTransformer``):
  ``patch_embed.projection.*``, ``layers.{i}.{ln1,attn.qkv,attn.proj,ln2}.*``,
  ``layers.{i}.ffn.layers.0.0.*`` (fc1), ``layers.{i}.ffn.layers.1.*`` (fc2), layer scale
  ``layers.{i}.attn.gamma1.weight`` / ``layers.{i}.ffn.gamma2.*``, final norm ``ln1.*`` (and
  ``ln2.*`` after average pooling), renamed to the timm names above;
- the released ViT-Adapter COCO / ADE20K checkpoints (mmdet 2.x / mmseg 0.x, ``backbone.`` prefix):
  timm names plus the adapter (``level_embed``, ``spm.*``, ``interactions.*``, ``up.*``,
  ``norm1..4.*``);
- pe-dense's own files: the classifier's (``backbone.*`` of an mmpretrain ``ImageClassifier``
  with :class:`~pe_dense.models.PEViT`) and the backbone's, with the position encoding under
  ``pos_embed.`` (``{'meta': {'pe_dense': {'format': 1, 'pos_embed': NAME}}, 'state_dict': ...}``
  as written by ``tools/convert_checkpoint.py``).

What may be dropped, and is named in one INFO line: class/distillation/register tokens, heads and
pooling norms a backbone has no place for, DeiT's final ``norm`` (except for MPVG, whose Last LN it
becomes), a PE table or LaPE norm the backbone's method does not use. Everything else must fit:
a file that leaves any ViT weight (patch embedding, any block; layer scale where the file has
one) or, for a ViT-Adapter file, any adapter weight at its initialisation, or holds a tensor the
backbone has no place for, raises :class:`CheckpointLayoutError`, which names the layout it
recognised, what is missing or could not be placed, and what to do. A whole-model load whose
state dict has nothing for the backbone (e.g. ``load_from`` of a DeiT file, whose keys sit at the
model's top level) raises the same error with the ``init_cfg`` line to use instead.
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
_CLASSIFIER_ONLY = re.compile(r'(cls_token|dist_token|reg_token|mask_token|head(_dist)?\..*'
                              r'|fc_norm\..*|pre_logits\..*)')
_UNUSED_AFTER_PE = re.compile(r'norm\.|blocks\.\d+\.pe_norm\.')
# ViT-Adapter's own modules (backbone-relative), absent from classification checkpoints.
ADAPTER_PREFIXES = ('level_embed', 'spm.', 'interactions.', 'up.', 'norm1.', 'norm2.', 'norm3.',
                    'norm4.')
_VIT_PREFIXES = ('patch_embed.', 'blocks.')
# The position encoding's own weights, which a file must hold: the learned table and its class
# slot, RoPE-Mixed's frequencies, PEG's convolution. A file trained with another PE (or none)
# would leave them at their initialisation. The LayerNorms LaPE, PVG and MPVG put on the table
# may start at their initialisation from a file that has the table (a DeiT/ViT file as a warm
# start of those methods; the loader's log line lists them).
_PE_REQUIRED = re.compile(r'pos_embed\.(weight|prefix_weight|freqs\.\d+|proj\.\w+)$')
_LAYER_SCALE = re.compile(r'blocks\.\d+\.(gamma[12]|ls[12]\.gamma)$')
# mmpretrain's VisionTransformer names -> timm's (first match wins).
_MMPRETRAIN_RENAMES = (
    (re.compile(r'patch_embed\.projection\.'), 'patch_embed.proj.'),
    (re.compile(r'layers\.(\d+)\.ln1\.'), r'blocks.\1.norm1.'),
    (re.compile(r'layers\.(\d+)\.ln2\.'), r'blocks.\1.norm2.'),
    (re.compile(r'layers\.(\d+)\.attn\.gamma1\.(weight|gamma)$'), r'blocks.\1.gamma1'),
    (re.compile(r'layers\.(\d+)\.attn\.'), r'blocks.\1.attn.'),
    (re.compile(r'layers\.(\d+)\.ffn\.layers\.0\.0\.'), r'blocks.\1.mlp.fc1.'),
    (re.compile(r'layers\.(\d+)\.ffn\.layers\.1\.'), r'blocks.\1.mlp.fc2.'),
    (re.compile(r'layers\.(\d+)\.ffn\.gamma2\.(weight|gamma)$'), r'blocks.\1.gamma2'),
    (re.compile(r'ln1\.'), 'norm.'),
    (re.compile(r'ln2\.'), 'fc_norm.'),
)
_MMPRETRAIN_KEY = re.compile(r'patch_embed\.projection\.|layers\.\d+\.(ln[12]|attn|ffn)\.')


class CheckpointLayoutError(ValueError):
    """A checkpoint that would leave ViT weights of a pe-dense backbone at their initialisation,
    or holds tensors the backbone has no place for. The message names the layout recognised, what
    is missing or could not be placed, and what to do."""


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
            f'  cp work_dirs/{config}/handoff_model.pth {path}\n'
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


# The last local file mmengine's loader read (path, its keys), so that an error about a state dict
# loaded from it can name the file (pe_dense.runtime records it).
_LAST_READ: List[Tuple[str, frozenset]] = []


def note_checkpoint_read(path: str, obj: object) -> None:
    """Records that ``path`` was read and holds ``obj`` (for :func:`recent_file`)."""
    keys = set()
    if isinstance(obj, dict):
        keys.update(k for k in obj if isinstance(k, str))
        if isinstance(obj.get('state_dict'), dict):
            keys.update(k for k in obj['state_dict'] if isinstance(k, str))
    keys |= {k[7:] for k in keys if k.startswith('module.')}
    _LAST_READ[:] = [(str(path), frozenset(keys))]


def recent_file(keys: Iterable[str]) -> Optional[str]:
    """The file last read through mmengine's loader, if it holds all of ``keys``; else None."""
    keys = list(keys)
    if _LAST_READ and keys and all(k in _LAST_READ[0][1] for k in keys):
        return _LAST_READ[0][0]
    return None


def is_mmpretrain_layout(keys: Iterable[str]) -> bool:
    """Whether backbone-relative ``keys`` follow mmpretrain's ViT names (``layers.{i}.ln1`` ...)."""
    return any(_MMPRETRAIN_KEY.match(k) for k in keys)


def recognise_layout(keys: Iterable[str]) -> str:
    """A name for the layout that backbone-relative ``keys`` follow, for messages."""
    keys = list(keys)

    def has(pattern: str) -> bool:
        return any(re.match(pattern, k) for k in keys)

    if 'model' in keys:
        return "the DeiT release's {'model': state_dict} wrapper"
    if is_mmpretrain_layout(keys):
        return "mmpretrain's ViT/DeiT (patch_embed.projection.*, layers.{i}.ln1/attn/ffn.*)"
    adapter = any(k.startswith(ADAPTER_PREFIXES) for k in keys)
    if adapter and 'pos_embed' in keys:
        return 'the released ViT-Adapter (timm block names, adapter, pos_embed with a class slot)'
    if adapter:
        return "pe-dense's ViTAdapter (timm block names, adapter, PE under pos_embed.)"
    if has(r'pos_embed\.'):
        return "pe-dense's classifier PEViT (timm block names, PE under pos_embed.)"
    if has(r'blocks\.\d+\.pe_norm\.'):
        return 'LaPE-style (DeiT/timm names plus blocks.{i}.pe_norm.*)'
    if has(r'blocks\.\d+\.ls[12]\.gamma$'):
        return 'timm ViT with layer scale (blocks.{i}.ls1/ls2.gamma, e.g. the patch-14 DINOv2 ViTs)'
    if has(r'blocks\.\d+\.') or has(r'patch_embed\.proj\.'):
        return 'DeiT release / timm ViT (patch_embed.proj.*, blocks.{i}.norm1/attn/mlp.*)'
    return 'no ViT layout pe-dense reads'


def guess_pos_embed(keys: Iterable[str]) -> Optional[str]:
    """The position encoding a pe-dense file's ``pos_embed.*`` keys belong to, or None."""
    keys = list(keys)
    norms = {int(m.group(1)) for m in (re.match(r'pos_embed\.norms\.(\d+)\.', k) for k in keys)
             if m}
    if any(k.startswith('pos_embed.proj.') for k in keys):
        return 'PEG'
    if any(k.startswith('pos_embed.last_pe_norm.') for k in keys):
        return 'MPVG'
    if any(k.startswith('pos_embed.freqs.') for k in keys):
        return 'RoPEMixed'
    if norms:
        return 'LaPE' if 0 in norms else 'PVG'
    if 'pos_embed.weight' in keys:
        return 'AbsolutePE'
    return None


def _rename_mmpretrain(key: str) -> str:
    for pattern, replacement in _MMPRETRAIN_RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key


def convert_backbone_keys(backbone: nn.Module, state_dict: Dict[str, Tensor],
                          mmpretrain: Optional[bool] = None) -> Dict[str, Tensor]:
    """Backbone-relative keys of any accepted layout -> this backbone's parameter names.

    ``mmpretrain``: whether the keys follow mmpretrain's names (default: recognised from the
    keys)."""
    own = backbone.state_dict(keep_vars=True).keys()
    if mmpretrain is None:
        mmpretrain = is_mmpretrain_layout(state_dict)
    out = {}
    for key, value in state_dict.items():
        if mmpretrain:
            key = _rename_mmpretrain(key)
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
    mmpretrain = is_mmpretrain_layout(state_dict)
    return [k for k, v in state_dict.items()
            if not convert_backbone_keys(backbone, {k: v}, mmpretrain=mmpretrain)]


def _what_to_do(backbone: nn.Module, source_keys: List[str], converted: Dict[str, Tensor],
                unplaced: List[str]) -> str:
    """The advice of a :class:`CheckpointLayoutError`, from what the file and the backbone hold."""
    name = type(backbone).__name__
    hints = []
    blocks = {int(m.group(1)) for m in (re.match(r'blocks\.(\d+)\.', k) for k in converted) if m}
    if not blocks and not any(k.startswith('patch_embed.') for k in converted):
        nested = [m.group(1) for m in (re.match(r'(.+?\.)(blocks|layers)\.\d+\.', k)
                                       for k in source_keys) if m]
        if nested:
            hints.append(f'its ViT weights sit under {nested[0]!r}: pass '
                         f'prefix={nested[0]!r} in the init_cfg')
        else:
            hints.append('it holds no ViT weights in a layout pe-dense reads (DeiT release, timm, '
                         "LaPE, mmpretrain's ViT/DeiT, the released ViT-Adapter, pe-dense files): "
                         'pass an ImageNet ViT checkpoint, or the prefix its ViT weights sit under')
        return '; '.join(hints)
    depth = getattr(backbone, 'depth', None)
    if blocks and depth is not None and max(blocks) + 1 != depth:
        hints.append(f'the file has {max(blocks) + 1} ViT blocks and the backbone {depth}: build '
                     f'it with depth={max(blocks) + 1}'
                     + (' and interaction_indexes to match' if name == 'ViTAdapter' else ''))
    file_pe = guess_pos_embed(converted)
    own_pe = type(backbone.pos_embed).__name__
    pe_missing = [k for k in backbone.state_dict() if _PE_REQUIRED.match(k)
                  and k not in converted]
    if file_pe != own_pe and (pe_missing or any(k.startswith('pos_embed.') for k in unplaced)):
        made_for = (f"the file's position encoding is {file_pe}" if file_pe else
                    'the file holds no position-encoding weights (as a NoPE or RoPE-Axial model)')
        hints.append(f"{made_for} and the backbone's is {own_pe}: "
                     + (f"set pos_embed=dict(type='{file_pe}'), " if file_pe else
                        'build the backbone with the pos_embed the file was trained with, ')
                     + f'or pass the file made for {own_pe}')
    if any(re.search(r'\.gamma[12]$', k) for k in unplaced):
        hints.append(f'the file has layer scale (gamma1/gamma2) and this {name} has none'
                     + (': build it with layer_scale=True' if name == 'ViTAdapter' else ''))
    if not hints:
        hints.append('the file was made for another architecture (embed_dim, depth, patch size, '
                     'position encoding or adapter options): build the backbone it was made for, '
                     'or convert it with tools/convert_checkpoint.py SRC DST --config CONFIG')
    return '; '.join(hints)


def check_backbone_state(backbone: nn.Module, source_keys: Iterable[str],
                         converted: Dict[str, Tensor], source: str = 'checkpoint') -> None:
    """Refuses a converted state dict that would leave a ViT weight of ``backbone`` (patch
    embedding, any block; layer scale where the file has one; the position encoding's learned
    table and class slot, RoPE-Mixed's frequencies, PEG's convolution) or, when the file holds
    ViT-Adapter weights, any adapter weight at its initialisation, or holds a tensor ``backbone``
    has no place for; also a tensor of the wrong shape.

    Raises:
        CheckpointLayoutError: naming the layout recognised from ``source_keys``, the missing and
            the unplaced keys, and what to do.
    """
    source_keys = list(source_keys)
    own = backbone.state_dict()
    name = type(backbone).__name__
    unplaced = sorted(k for k in converted if k not in own)
    layer_scale = any(re.match(r'blocks\.\d+\.gamma[12]$', k) for k in converted)
    required = [k for k in own if k.startswith(_VIT_PREFIXES)
                and (layer_scale or not re.match(r'blocks\.\d+\.gamma[12]$', k))]
    required += [k for k in own if _PE_REQUIRED.match(k)]
    if any(k.startswith(ADAPTER_PREFIXES) for k in converted):
        # BatchNorm's step counter is not a weight (old files lack it; mmengine ignores it too).
        required += [k for k in own if k.startswith(ADAPTER_PREFIXES)
                     and not k.endswith('num_batches_tracked')]
    missing = [k for k in required if k not in converted]
    if missing or unplaced:
        text = [f'{source}: recognised layout: {recognise_layout(source_keys)}.']
        if missing:
            idx = sorted({int(m.group(1)) for m in (re.match(r'blocks\.(\d+)\.', k)
                                                    for k in missing) if m})
            where = f' (blocks {", ".join(map(str, idx))})' if idx else ''
            text.append(f'{len(missing)} weights of {name} would stay at their initialisation'
                        f'{where}: {summarize_keys(missing)}.')
        if unplaced:
            text.append(f'{len(unplaced)} tensors have no place in this {name} '
                        f'({type(backbone.pos_embed).__name__}): {summarize_keys(unplaced)}.')
        text.append('What to do: ' + _what_to_do(backbone, source_keys, converted, unplaced) + '.')
        raise CheckpointLayoutError(' '.join(text))
    for key, value in converted.items():
        if own[key].shape != value.shape:
            raise CheckpointLayoutError(
                f'{source}: checkpoint tensor {key} has shape {tuple(value.shape)} but the '
                f'model\'s has shape {tuple(own[key].shape)}: the checkpoint was made for another '
                'architecture (embed_dim, depth, patch size or position encoding)')


def prepare_backbone_state(backbone: nn.Module, state_dict: Dict[str, Tensor],
                           source: str = 'checkpoint') -> Tuple[Dict[str, Tensor], List[str]]:
    """Backbone-relative ``state_dict`` of any accepted layout -> (the tensors under the
    backbone's names, the keys dropped by design); raises :class:`CheckpointLayoutError` (see
    :func:`check_backbone_state`)."""
    converted = convert_backbone_keys(backbone, state_dict)
    check_backbone_state(backbone, state_dict.keys(), converted, source)
    return converted, dropped_keys(backbone, state_dict)


def _nothing_for_the_backbone(module: nn.Module, prefix: str, unexpected: List[str]) -> str:
    """The message of a whole-model load whose state dict has nothing under ``prefix``."""
    name = type(module).__name__
    top = [k for k in unexpected if not k.startswith(prefix)] if prefix else list(unexpected)
    where = 'model.' + prefix[:-1] if prefix else 'model'
    path = recent_file(top)
    vit_alone = 'model' in top or any(k.startswith(_VIT_PREFIXES) or k == 'pos_embed'
                                      or _MMPRETRAIN_KEY.match(k) for k in top)
    if vit_alone:
        return (
            f'{name} at {prefix!r} gets no weights from this state dict'
            f'{f" ({path})" if path else ""}: nothing in it starts with {prefix!r}, and its top '
            f'level holds {recognise_layout(top)}: the weights of a ViT alone, not of a whole '
            'model. load_from (also --cfg-options load_from=..., tools/test.py CHECKPOINT and '
            'inferencer weights) reads whole-model checkpoints, so every ViT block would stay at '
            'its initialisation. Start the backbone from this file with its init_cfg instead '
            f'(and no load_from):\n    {where}.init_cfg = dict(type=\'Pretrained\', '
            f'checkpoint={repr(path) if path else "PATH"})\n'
            f'or on the command line: --cfg-options {where}.init_cfg.type=Pretrained '
            f'{where}.init_cfg.checkpoint={path or "PATH"} load_from=None')
    return (f'{name} at {prefix!r} gets no weights from this state dict'
            f'{f" ({path})" if path else ""}: nothing in it starts with {prefix!r} (keys outside '
            f'the model: {summarize_keys(top)}), so every ViT block would stay at its '
            'initialisation. '
            'Load a checkpoint of this model, or start the backbone from an ImageNet ViT file with '
            f"{where}.init_cfg = dict(type='Pretrained', checkpoint=PATH)")


def convert_state_dict_hook(module: nn.Module, state_dict: dict, prefix: str,
                            local_metadata: dict, strict: bool, missing_keys: List[str],
                            unexpected_keys: List[str], error_msgs: List[str]) -> None:
    """``load_state_dict`` pre-hook of the backbone: converts the keys under ``prefix`` in place
    and logs the keys it drops (one INFO line).

    Raises:
        CheckpointLayoutError: when nothing in ``state_dict`` is for the backbone (a ViT file given
            to a whole model, e.g. as ``load_from``: the message holds the ``init_cfg`` line to
            use), or the keys under ``prefix`` leave ViT weights unset or do not fit (see
            :func:`check_backbone_state`).
    """
    sub = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
    if not sub:
        raise CheckpointLayoutError(_nothing_for_the_backbone(module, prefix, unexpected_keys))
    path = recent_file(prefix + k for k in sub)
    converted, dropped = prepare_backbone_state(
        module, sub, source=f'state dict for {type(module).__name__} at {prefix!r}'
        + (f' ({path})' if path else ''))
    if dropped:
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().info(
            f'{type(module).__name__} ({type(module.pos_embed).__name__}): checkpoint keys not '
            f'used by this backbone, dropped ({len(dropped)}): {summarize_keys(dropped)}')
    for key, value in converted.items():
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
    """Loads a checkpoint of any accepted layout into ``backbone`` (ViTAdapter or PEViT).

    ``prefix`` selects the keys of a whole-model file (``'backbone.'``; as in mmengine, a missing
    trailing dot is added); without it, a file whose keys start with ``backbone.`` is read that
    way. What is dropped by design and what stays at initialisation (parameters the file's layout
    does not hold, e.g. the adapter for an ImageNet file) are named in one log line.

    Returns:
        The missing keys (left at initialisation) and the unexpected keys (always empty: a tensor
        without a place is an error).

    Raises:
        CheckpointLayoutError: the file leaves ViT weights unset or holds tensors that do not fit
            (see :func:`check_backbone_state`), or has nothing under ``prefix``.
        FileNotFoundError, ValueError: the file is missing or not a checkpoint.
    """
    state_dict = unwrap_state_dict(read_checkpoint(path), source=str(path))
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        prefix = prefix[7:] if prefix.startswith('module.') else prefix
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not sub:
            layout = recognise_layout(state_dict)
            hint = (': its ViT weights are at the top level, leave the prefix out'
                    if layout.startswith(('DeiT', 'timm', 'LaPE', "mmpretrain's", "pe-dense's",
                                          'the released'))
                    else f' (its keys: {summarize_keys(state_dict)})')
            raise CheckpointLayoutError(f'{path} has no keys under the prefix {prefix!r}; '
                                        f'recognised layout: {layout}{hint}')
        state_dict = sub
    n_in = len(state_dict)
    # Converted here, so the one log line can name what the conversion drops; the pre-hook then
    # finds nothing left to convert or drop.
    converted, dropped = prepare_backbone_state(backbone, state_dict, source=str(path))
    result = backbone.load_state_dict(converted, strict=False)
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
