"""Writes three small synthetic datasets in the real COCO 2017, ADE20K and ImageNet on-disk layouts.

    python tools/make_mini_data.py --out data/mini --seed 0 --num-train 64 --num-val 16 --size 128 \
        --cls-train 64 --cls-val 16

What the images show, the layouts, the labels and ``meta.json`` (a dataset whose ``meta.json``
records the same arguments is kept unless ``--force``) are described in
:mod:`pe_dense.datasets.mini`, which does the work.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pe_dense.datasets.mini import MIN_SIDE, describe, make_all  # noqa: E402


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/mini', help='output folder (default: data/mini)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--num-train', type=int, default=64, help='training images per dataset')
    parser.add_argument('--num-val', type=int, default=16, help='validation images per dataset')
    parser.add_argument('--size', type=int, nargs='+', default=[128], metavar='SIDE',
                        help='image size: one side (square) or H W (default: 128)')
    parser.add_argument('--cls-train', type=int, default=64,
                        help='ImageNet-layout training images per class (default: 64)')
    parser.add_argument('--cls-val', type=int, default=16,
                        help='ImageNet-layout validation images per class (default: 16)')
    parser.add_argument('--force', action='store_true', help='rewrite even when up to date')
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error('--size takes one value (square side) or two (H W)')
    args.size = (args.size[0], args.size[-1])
    if min(args.size) < MIN_SIDE:
        parser.error(f'--size: image sides must be at least {MIN_SIDE} pixels')
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
                                     force=args.force):
        print(f'{describe(summary)} {seconds:.1f} s', flush=True)
        summaries.append(summary)
    return summaries


if __name__ == '__main__':
    main()
