"""Speed and memory of the ViT-Adapter backbone, per position encoding and input size.

    python tools/benchmark.py [--config CFG] [--methods AbsolutePE PVG ...]
        [--sizes 512x512 1024x1024 1333x800] [--batch 1] [--device cpu|cuda] [--threads N]
        [--repeats 7] [--warmup 2] [--reference | --compare] [--with-cp] [--clock wall|cpu]
        [--amp off|fp16|bf16] [--cuda-sampler kernel|pytorch] [--no-train] [--no-memory]
        [--no-flops] [--out work_dirs/benchmark]

The Markdown table is printed and written with the JSON record to ``--out`` (``benchmark.md``,
``benchmark.json``). What is measured and how (interleaved rounds, CPU peak memory in fresh
subprocesses, MACs traced on the reference path) is described in :mod:`pe_dense.benchmark`,
which does the measuring.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pe_dense.benchmark import (AMP_DTYPES, CUDA_SAMPLERS, DEFAULT_SIZES,  # noqa: E402
                                METHODS, check_options, markdown, run_benchmark)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', help='config whose model.backbone is benchmarked '
                        '(default: ViTAdapter() defaults, ViT-Adapter-Ti)')
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    parser.add_argument('--sizes', nargs='+', default=list(DEFAULT_SIZES),
                        help='input sizes WIDTHxHEIGHT (default: %(default)s)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (CPU)')
    parser.add_argument('--repeats', type=int, default=7, help='timed runs per model')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per model first')
    path = parser.add_mutually_exclusive_group()
    path.add_argument('--reference', action='store_true', help='time the reference path')
    path.add_argument('--compare', action='store_true',
                      help='time the fast and the reference path interleaved, print speed-ups')
    parser.add_argument('--with-cp', action='store_true',
                        help='also measure each model with gradient checkpointing')
    parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                        help='times in the table: wall clock or the process\'s CPU time')
    parser.add_argument('--amp', choices=tuple(AMP_DTYPES), default='off',
                        help='run every pass under torch.autocast in this precision: fp16 '
                        '(CUDA) or bf16 (CUDA or CPU); default: %(default)s (float32)')
    parser.add_argument('--cuda-sampler', choices=CUDA_SAMPLERS, default='kernel',
                        help="deformable attention on CUDA: mmcv's kernel (when mmcv has its "
                        'CUDA ops) or the PyTorch samplers; default: %(default)s')
    parser.add_argument('--no-train', action='store_true', help='skip forward+backward')
    parser.add_argument('--no-memory', action='store_true', help='skip peak memory')
    parser.add_argument('--no-flops', action='store_true', help='skip the MAC count')
    parser.add_argument('--out', default=os.path.join('work_dirs', 'benchmark'),
                        help='output folder (default: %(default)s)')
    args = parser.parse_args(argv)
    try:
        check_options(args.repeats, args.warmup, args.batch, args.clock, args.device, args.amp,
                      args.with_cp, not args.no_train, args.sizes, args.methods, args.threads,
                      args.config, args.cuda_sampler)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        meta, records = run_benchmark(
            args.config, args.methods, args.sizes, args.batch, args.device, args.threads,
            args.repeats, args.warmup, args.reference, args.compare, args.with_cp, args.clock,
            args.amp, train=not args.no_train, memory=not args.no_memory, flops=not args.no_flops,
            cuda_sampler=args.cuda_sampler)
    except ValueError as e:  # a config whose backbone is not a ViTAdapter
        raise SystemExit(f'error: {e}')
    table = markdown(meta, records, args.compare, args.with_cp)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'benchmark.md'), 'w') as f:
        f.write(table)
    with open(os.path.join(args.out, 'benchmark.json'), 'w') as f:
        json.dump(dict(meta=meta, records=records), f, indent=1)
    print()
    print(table)
    print(f'written: {os.path.join(args.out, "benchmark.md")}, '
          f'{os.path.join(args.out, "benchmark.json")}')


if __name__ == '__main__':
    main()
