"""Evaluates a checkpoint with an mmdet or mmseg config and prints (and saves) the metrics.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out metrics.json]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Distributed: ``tools/dist_test.sh CONFIG CHECKPOINT GPUS``.
"""
import argparse
import json
import os.path as osp
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.dist import get_rank  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import pe_dense  # noqa: E402,F401  (registers modules, fixes checkpoint loading)
from pe_dense.checkpoint import CheckpointLayoutError  # noqa: E402
from pe_dense.runtime import (  # noqa: E402
    add_run_args, finish_distributed, load_run_config, setup_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Evaluate a pe-dense checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='write the metrics to this JSON file')
    add_run_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint} does not exist')
    cfg = load_run_config(args)
    cfg.load_from = args.checkpoint
    setup_distributed(cfg, args.launcher)
    try:
        metrics = Runner.from_cfg(cfg).test()
    except CheckpointLayoutError as err:  # a pre-trained file that would not load
        raise SystemExit(f'[pe-dense] {err}') from None
    if get_rank() == 0:
        metrics = {k: float(v) for k, v in metrics.items()}
        print(json.dumps(metrics, indent=1))
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(metrics, f, indent=1)
    finish_distributed()  # a distributed process ends here


if __name__ == '__main__':
    main()
