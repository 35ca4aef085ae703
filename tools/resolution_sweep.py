"""Evaluates a trained detector (mmdet) or segmentor (mmseg) at several test resolutions.

    python tools/resolution_sweep.py CONFIG CHECKPOINT --scales 0.5 0.75 1.0 1.5 2.0
        [--out DIR] [--work-dir DIR] [--cfg-options KEY=VALUE ...]

Per factor, only the scale of the test pipeline's Resize step changes (times the factor,
keep_ratio as configured; mmseg slide inference keeps its crop size and stride); the checkpoint
goes through mmdet's / mmseg's own test loop (Runner.test()). Prints the table (box and mask AP,
or mIoU and aAcc, per factor) and writes sweep.csv, sweep.json and sweep.png into --out
(default: the work dir). See pe_dense/sweep.py.
"""
import argparse
import os.path as osp
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.config import DictAction  # noqa: E402

import pe_dense  # noqa: E402,F401  (registers modules, fixes checkpoint loading)
from pe_dense.checkpoint import CheckpointLayoutError  # noqa: E402
from pe_dense.sweep import (SweepError, check_scales, format_table,  # noqa: E402
                            resolution_sweep, write_results)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Evaluate a detector or segmentor at several test resolutions')
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--scales', nargs='+', type=float, default=[0.5, 0.75, 1.0, 1.5, 2.0],
                        help='factors of the configured test resolution (default: 0.5 0.75 1.0 '
                        '1.5 2.0)')
    parser.add_argument('--out', help='where sweep.csv, sweep.json and sweep.png go (default: '
                        'the work dir)')
    parser.add_argument('--work-dir', help='where the test runs log (default: '
                        'work_dirs/sweep_<config name>)')
    parser.add_argument('--title', help='title of the plot (default: the config name)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. test_dataloader.dataset.data_root=D')
    return parser.parse_args()


def main():
    args = parse_args()
    name = osp.splitext(osp.basename(args.config))[0]
    work_dir = args.work_dir or osp.join('work_dirs', f'sweep_{name}')
    try:
        scales = check_scales(args.scales)
        result = resolution_sweep(args.config, args.checkpoint, scales,
                                  cfg_options=args.cfg_options, work_dir=work_dir)
    except (SweepError, FileNotFoundError) as err:
        raise SystemExit(f'[pe-dense] {err}') from None
    except CheckpointLayoutError as err:  # a file that does not fit the model
        raise SystemExit(f'[pe-dense] {err}') from None
    text = format_table(result)
    print(f'\nresolution sweep of {args.checkpoint} ({name}):\n{text}')
    paths = write_results(result, args.out or work_dir, title=args.title or name)
    print('written: ' + ', '.join(paths[k] for k in ('csv', 'json', 'png')))


if __name__ == '__main__':
    main()
