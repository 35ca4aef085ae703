"""The main job: every position encoding through the whole pipeline on the bundled mini data, on
the CPU, end to end: ImageNet-style pre-training -> Mask R-CNN and UperNet fine-tuned from that
checkpoint, and the same fine-tuning from random initialisation beside it, and a results table.

    python tools/run_mini.py [--methods abs peg lape pvg mpvg rope-axial rope-mixed]
        [--pretrain-iters N] [--det-iters N] [--seg-iters N] [--work-dir work_dirs/mini]
        [--skip-baseline] [--seeds N] [--first-seed S]

Each run is one ``tools/train.py`` subprocess that trains, saves its last checkpoint and evaluates
it at the end; a baseline row evaluates the untrained AbsolutePE models, and each pre-trained
segmentor is then evaluated at several test resolutions (``--sweep-scales``). The tables go to the
terminal and to ``<work-dir>/results.md`` and ``results.json``. The stages are described in
:mod:`pe_dense.mini_pipeline`, which runs them.
"""
import argparse
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pe_dense.mini_pipeline import (DEFAULT_METHODS, DEFAULT_SWEEP_SCALES,  # noqa: E402
                                    METHODS, quiet_warnings, run_pipeline)
from pe_dense.sweep import SweepError, check_scales  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS),
                        choices=list(METHODS))
    parser.add_argument('--pretrain-iters', type=int, default=None,
                        help='pre-training iterations of the classifier (default: the mini '
                        'config)')
    parser.add_argument('--det-iters', type=int, default=None,
                        help='training iterations of Mask R-CNN (default: the mini config)')
    parser.add_argument('--seg-iters', type=int, default=None,
                        help='training iterations of UperNet (default: the mini config)')
    parser.add_argument('--jobs', type=int, default=2,
                        help='runs at the same time, each with CPU cores / JOBS threads unless '
                        'OMP_NUM_THREADS is set (default: 2)')
    parser.add_argument('--work-dir', default='work_dirs/mini')
    parser.add_argument('--sweep-scales', nargs='*', type=float,
                        default=list(DEFAULT_SWEEP_SCALES),
                        help='test-resolution factors at which each pre-trained segmentor is '
                        'evaluated (tools/resolution_sweep.py; default: 0.5 1.0 2.0; none: no '
                        'sweep)')
    parser.add_argument('--skip-baseline', action='store_true',
                        help='do not evaluate the untrained models')
    parser.add_argument('--seeds', type=int, default=1,
                        help='run every (method, initialisation) with N seeds and report the mean '
                        'and spread (default: 1)')
    parser.add_argument('--first-seed', type=int, default=0,
                        help='the seeds are S .. S+N-1: each gives its own mini data and training '
                        'seed (default: 0)')
    args = parser.parse_args()
    quiet_warnings()
    if args.first_seed < 0:
        parser.error('--first-seed must be at least 0')
    for flag in ('pretrain_iters', 'det_iters', 'seg_iters', 'jobs', 'seeds'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f'--{flag.replace("_", "-")} must be at least 1')
    if args.sweep_scales:
        try:
            check_scales(args.sweep_scales)
        except SweepError as e:
            parser.error(f'--sweep-scales: {e}')
    start = time.time()
    result = run_pipeline(args.methods, args.pretrain_iters, args.det_iters, args.seg_iters,
                          args.jobs, args.work_dir, args.sweep_scales, args.skip_baseline,
                          range(args.first_seed, args.first_seed + args.seeds))
    print('\n' + result['text'])
    print(f'\n[mini] done in {(time.time() - start) / 60:.1f} min; table in '
          f'{result["results_md"]}')


if __name__ == '__main__':
    main()
