"""Trains a detector or segmentor from an mmdet or mmseg config (the config's ``default_scope``
decides which), on one machine or many.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Distributed: ``tools/dist_train.sh CONFIG GPUS`` (torchrun) or ``tools/slurm_train.sh``; without
CUDA, torchrun processes use the gloo backend.
"""
import argparse
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import pe_dense  # noqa: E402,F401  (registers modules, fixes checkpoint loading)
from pe_dense.runtime import add_run_args, load_run_config, setup_distributed  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description='Train a pe-dense detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CKPT, or without a value from the latest checkpoint '
                        'in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch) / auto_scale_lr.base_batch_size')
    add_run_args(parser)
    return parser.parse_args()


def build_config(args) -> Config:
    cfg = load_run_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit(f'{args.config} has no auto_scale_lr.base_batch_size to scale from')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def main():
    args = parse_args()
    cfg = build_config(args)
    setup_distributed(cfg, args.launcher)
    Runner.from_cfg(cfg).train()


if __name__ == '__main__':
    main()
