"""Converts a checkpoint of any format pe-dense accepts into pe-dense's own format.

Accepted: the DeiT release (``{'model': ...}``), plain timm state dicts (layer scale ``ls1`` /
``ls2`` included), LaPE-style checkpoints (``blocks.{i}.pe_norm.*``), mmpretrain's ViT/DeiT
checkpoints (``backbone.layers.{i}.ln1`` ...), the released ViT-Adapter COCO / ADE20K checkpoints
(``backbone.`` prefix; the rest of the detector/segmentor is kept unless ``--backbone-only``) and
pe-dense files. A file that would leave a ViT weight unset, or holds a tensor the backbone has no
place for, is refused with the layout recognised and what to do (see
:mod:`pe_dense.checkpoint`); nothing is written then.

    python tools/convert_checkpoint.py deit_tiny_patch16_224-a1311bcf.pth \
        pretrained/deit-ti_abs.pth --pos-embed AbsolutePE

The output is ``{'meta': {'pe_dense': {'format': 1, 'pos_embed': NAME, 'source': ...}},
'state_dict': {...}}`` with the backbone's parameter names (prefixed ``backbone.`` for a whole
model), which every loading route reads as it is.
"""
import argparse
import os

import torch

from pe_dense.checkpoint import (CheckpointLayoutError, pe_dense_checkpoint,
                                 prepare_backbone_state, read_checkpoint, recognise_layout,
                                 summarize_keys, unwrap_state_dict)
from pe_dense.models import ViTAdapter
from pe_dense.registry import POS_ENCODINGS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='checkpoint to convert (path or URL)')
    parser.add_argument('dst', help='where to write the pe-dense checkpoint')
    parser.add_argument('--pos-embed', default=None, choices=sorted(POS_ENCODINGS.module_dict),
                        metavar='NAME',
                        help='position encoding the checkpoint is for (AbsolutePE, NoPE, PEG, '
                        'LaPE, PVG, MPVG, RoPEAxial, RoPEMixed); default: the one recorded in '
                        'a pe-dense file, else AbsolutePE')
    parser.add_argument('--config', help='an mmdet/mmseg config whose model.backbone gives the '
                        'architecture (default: ViT-Adapter-Ti)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='of a whole detector/segmentor, keep only the backbone')
    args = parser.parse_args(argv)
    if '://' not in args.src and not os.path.isfile(args.src):
        parser.error(f'{args.src} does not exist')
    if args.config and not os.path.isfile(args.config):
        parser.error(f'--config {args.config} does not exist')
    return args


def build_backbone(config, pos_embed):
    cfg = dict(type='ViTAdapter')
    if config:
        from mmengine.config import Config
        cfg = Config.fromfile(config).model.backbone.to_dict()
    cfg.pop('type', None)
    cfg.pop('init_cfg', None)
    if pos_embed:
        cfg['pos_embed'] = dict(cfg.get('pos_embed', {}), type=pos_embed)
    return ViTAdapter(**cfg)


def convert(src, dst, pos_embed=None, config=None, backbone_only=False):
    obj = read_checkpoint(src)
    recorded = (obj.get('meta') or {}).get('pe_dense', {}).get('pos_embed') \
        if isinstance(obj.get('meta'), dict) else None
    if pos_embed and recorded and pos_embed != recorded:
        raise SystemExit(f'{src} is a pe-dense checkpoint for {recorded}, not {pos_embed}')
    pos_embed = pos_embed or recorded or 'AbsolutePE'
    state = unwrap_state_dict(obj, source=src)
    backbone = build_backbone(config, pos_embed)

    whole_model = any(k.startswith('backbone.') for k in state)
    prefix = 'backbone.' if whole_model else ''
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        # Every ViT weight must come from the file and every tensor must fit (shapes included).
        converted, dropped = prepare_backbone_state(backbone, sub, source=src)
    except CheckpointLayoutError as err:
        raise SystemExit(f'{err}\nFor another architecture pass --config CONFIG (its '
                         'model.backbone), for another position encoding --pos-embed NAME.')
    missing = backbone.load_state_dict(converted, strict=False).missing_keys
    out = {prefix + k: v.clone() for k, v in converted.items()}
    if whole_model and not backbone_only:
        out.update({k: v for k, v in state.items() if not k.startswith('backbone.')})
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save(pe_dense_checkpoint(out, pos_embed, source=src), dst)
    print(f'wrote {dst}: {len(out)} tensors for a ViTAdapter with {pos_embed}'
          f'{" (whole model)" if whole_model and not backbone_only else ""} from '
          f'{recognise_layout(sub)}; backbone parameters not in the source (left to their '
          f'initialisation): {summarize_keys(missing)}; source keys this backbone does not use, '
          f'dropped: {summarize_keys(dropped)}')
    return out


def main(argv=None):
    args = parse_args(argv)
    convert(args.src, args.dst, args.pos_embed, args.config, args.backbone_only)


if __name__ == '__main__':
    main()
