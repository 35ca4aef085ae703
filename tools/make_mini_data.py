"""Writes three small synthetic datasets in the real COCO 2017, ADE20K and ImageNet on-disk layouts.

    python tools/make_mini_data.py --out data/mini --seed 0 --num-train 128 --num-val 64 \
        --size 128 --cls-train 256 --cls-val 64 [--cls-size 64]

What the images show, the layouts, the labels and ``meta.json`` (a dataset whose ``meta.json``
records the same arguments is kept unless ``--force``) are described in
:mod:`pe_dense.datasets.mini`, which does the work.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pe_dense.datasets.mini import MIN_SIDE, describe, make_all  # noqa: E402

DEFAULT = {name: p.default for name, p in inspect.signature(make_all).parameters.items()}


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/mini', help='output folder (default: data/mini)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    for flag, text in (('num_train', 'COCO / ADE20K training images'),
                       ('num_val', 'COCO / ADE20K validation images'),
                       ('cls_train', 'ImageNet-layout training images per class'),
                       ('cls_val', 'ImageNet-layout validation images per class')):
        parser.add_argument('--' + flag.replace('_', '-'), type=int, default=DEFAULT[flag],
                            help=f'{text} (default: {DEFAULT[flag]})')
    parser.add_argument('--size', type=int, nargs='+', default=[128], metavar='SIDE',
                        help='COCO / ADE20K image size: one side (square) or H W (default: 128)')
    parser.add_argument('--cls-size', type=int, nargs='+', default=None, metavar='SIDE',
                        help='ImageNet-layout image size: one side or H W (default: half of '
                        f'--size, at least {MIN_SIDE})')
    parser.add_argument('--force', action='store_true', help='rewrite even when up to date')
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error('--size takes one value (square side) or two (H W)')
    args.size = (args.size[0], args.size[-1])
    if min(args.size) < MIN_SIDE:
        parser.error(f'--size: image sides must be at least {MIN_SIDE} pixels')
    if args.cls_size is not None:
        if len(args.cls_size) not in (1, 2) or min(args.cls_size) < MIN_SIDE:
            parser.error(f'--cls-size takes one side or H W, each at least {MIN_SIDE} pixels')
        args.cls_size = (args.cls_size[0], args.cls_size[-1])
    counts = ('num_train', 'num_val', 'cls_train', 'cls_val')
    if args.seed < 0 or any(getattr(args, n) < 1 for n in counts):
        parser.error('--seed must be >= 0 and --num-train, --num-val, --cls-train, --cls-val >= 1')
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f'--out {args.out} is a file, not a folder')
    return args


def main(argv: Optional[list] = None) -> list:
    """Runs the command line; returns the three summaries (COCO, ADE20K, ImageNet)."""
    args = parse_args(argv)
    summaries = []
    for summary, seconds in make_all(args.out, seed=args.seed, num_train=args.num_train,
                                     num_val=args.num_val, size=args.size,
                                     cls_train=args.cls_train, cls_val=args.cls_val,
                                     cls_size=args.cls_size, force=args.force):
        print(f'{describe(summary)} {seconds:.1f} s', flush=True)
        summaries.append(summary)
    return summaries


if __name__ == '__main__':
    main()
