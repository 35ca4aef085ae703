"""Per-layer analysis of a ViT backbone's position encoding: how the token embeddings LN1(x_l)
entering each block's attention relate to the PE pos_l entering it.

    python tools/analyze_pe.py CONFIG [CHECKPOINT] --images IMG|DIR [...] --out DIR \
        [--size 512 512] [--method NAME] [--sim-layer L] [--heatmap-layers 0 5 11] \
        [--suffix NAME] [--batch-size 4] [--device cpu] [--seed 0]

The backbone is ``model.backbone`` of CONFIG, with ``pos_embed.type`` replaced by ``--method``:
any mmdet/mmseg config of this project (a ViTAdapter) or an mmpretrain classifier config (a
PEViT, e.g. ``configs/mini/deit-ti-mpvg_mini.py``: the trained ViT analysed as it classifies,
patch tokens only). CHECKPOINT, if given, is loaded by pe-dense's loader (whole-model files such
as mmdet/mmseg/mmpretrain training checkpoints, and every accepted format). A folder given to
``--images`` stands for the images in it (sorted by name). Images are resized to ``--size H W``
and normalised with the config's ``model.data_preprocessor`` (ImageNet mean/std without one).

Written into DIR: ``pe_analysis.csv`` (per layer: has_pe, pe_source, correlation, mean_abs_token,
mean_abs_pe), ``pe_correlation.png`` (correlation and magnitudes per layer), ``pe_heatmaps.png``
(tokens x channels of the mean LN1(x_l) and of pos_l for the chosen layers) and
``pe_similarity.png`` (cosine similarity of every position's PE with every other, as in the ViT
paper); ``--suffix NAME`` makes them ``pe_analysis_NAME.csv`` etc. The definitions are in
:mod:`pe_dense.analysis`. NoPE, PEG and the rotary methods (without ``with_ape``) have no PE
tensor added to the tokens: their correlations are NaN and the correlation and similarity figures
are skipped.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import List, Optional

import torch
from mmengine.config import Config

from pe_dense.analysis import (IMAGE_EXTENSIONS, analyze, build_backbone, load_images,
                               normalization_from_config)
from pe_dense.checkpoint import load_backbone_checkpoint
from pe_dense.registry import POS_ENCODINGS


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='mmdet/mmseg config (ViTAdapter backbone) or mmpretrain '
                        'config (PEViT backbone)')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint to load (any pe-dense format)')
    parser.add_argument('--images', nargs='+', required=True,
                        help='input images, or folders of images')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--size', nargs=2, type=int, default=(512, 512), metavar=('H', 'W'),
                        help='resize the images to H x W pixels (default 512 512)')
    parser.add_argument('--method', choices=sorted(POS_ENCODINGS.module_dict), metavar='NAME',
                        help='position encoding replacing pos_embed.type (AbsolutePE, '
                        'NoPE, PEG, LaPE, PVG, MPVG, RoPEAxial, RoPEMixed)')
    parser.add_argument('--sim-layer', type=int, help='layer whose PE the similarity figure '
                        'shows (default: the first layer with a PE)')
    parser.add_argument('--heatmap-layers', nargs='+', type=int, default=(0, 5, 11),
                        help='layers shown in the heatmap figure (default 0 5 11)')
    parser.add_argument('--suffix', help='appended to the output file names: '
                        'pe_analysis_SUFFIX.csv, pe_correlation_SUFFIX.png, ...')
    parser.add_argument('--batch-size', type=int, default=4,
                        help='images per forward pass (default 4)')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random initialisation '
                        '(what a checkpoint does not cover; default 0)')
    args = parser.parse_args(argv)
    for what, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if path and not os.path.isfile(path):
            parser.error(f'{what} {path} does not exist')
    missing = [p for p in args.images if not os.path.exists(p)]
    if missing:
        parser.error(f'--images: {", ".join(missing)} not found')
    if min(args.size) < 32 or args.batch_size < 1:
        parser.error('--size H W takes at least 32 pixels a side and --batch-size at least 1')
    return args


def expand_images(paths: List[str]) -> List[str]:
    """Image paths, each folder replaced by the image files in it, sorted by name; a folder
    without images is an error."""
    out = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise SystemExit(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in the folder {path}')
        out += found
    return out


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    args.images = expand_images(args.images)
    cfg = Config.fromfile(args.config)
    torch.manual_seed(args.seed)
    backbone = build_backbone(cfg, args.method)
    if args.checkpoint:
        load_backbone_checkpoint(backbone, args.checkpoint)
    backbone.to(args.device)
    mean, std, to_rgb = normalization_from_config(cfg)
    images = load_images(args.images, tuple(args.size), mean, std, to_rgb).to(args.device)
    method = type(backbone.pos_embed).__name__
    result = analyze(backbone, images, args.out, sim_layer=args.sim_layer,
                     heatmap_layers=args.heatmap_layers, label=method,
                     batch_size=args.batch_size, suffix=args.suffix)
    print(f'{method}, {len(args.images)} image(s) at {args.size[0]}x{args.size[1]}, '
          f'grid {result["stats"][0]["grid"]}')
    print(f'{"layer":>5} {"PE":>6} {"corr":>9} {"|LN1(x)|":>9} {"|pos|":>9}')
    for s in result['stats']:
        corr = 'n/a' if math.isnan(s['correlation']) else f'{s["correlation"]:.4f}'
        print(f'{s["layer"]:>5} {s["pe_source"]:>6} {corr:>9} {s["mean_abs_token"]:>9.4f} '
              f'{s["mean_abs_pe"]:>9.4f}')
    for note in result['notes']:
        print(f'note: {note}')
    for path in result['files']:
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
