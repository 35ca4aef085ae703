"""Trains a detector or segmentor from an mmdet or mmseg config (the config's ``default_scope``
decides which), on one machine or many.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Distributed: ``tools/dist_train.sh CONFIG GPUS`` (torchrun) or ``tools/slurm_train.sh``; without
CUDA, torchrun processes use the gloo backend.

Mixed precision: mmengine's ``AmpOptimWrapper`` runs only on CUDA (or NPU/MLU/MUSA) devices and
stops with a bare assertion elsewhere. On a machine without one, a config that asks for it (the
UperNet configs, fp16 as published) is trained in fp32 with ``OptimWrapper`` (saying so in one
line), and ``--amp`` is refused with a message.
"""
import argparse
import os
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.config import Config, ConfigDict  # noqa: E402
from mmengine.device import get_device  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import pe_dense  # noqa: E402,F401  (registers modules, fixes checkpoint loading)
from pe_dense.checkpoint import CheckpointLayoutError  # noqa: E402
from pe_dense.runtime import (  # noqa: E402
    add_run_args, finish_distributed, load_run_config, setup_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a pe-dense detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CKPT, or without a value from the latest checkpoint '
                        'in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (fp16 AmpOptimWrapper; needs a GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch) / auto_scale_lr.base_batch_size')
    add_run_args(parser)
    return parser.parse_args()


# Devices on which mmengine 0.10.7's AmpOptimWrapper runs, and its options OptimWrapper lacks.
AMP_DEVICES = ('cuda', 'npu', 'mlu', 'musa')
AMP_ONLY_OPTIONS = ('loss_scale', 'dtype', 'use_fsdp')


def is_amp_wrapper(optim_wrapper: dict) -> bool:
    """Whether an ``optim_wrapper`` config builds mmengine's ``AmpOptimWrapper``."""
    kind = optim_wrapper.get('type', 'OptimWrapper')
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    return name.split('.')[-1] == 'AmpOptimWrapper'


def fp32_wrapper(optim_wrapper: dict) -> ConfigDict:
    """The same ``optim_wrapper`` config as ``OptimWrapper``: optimizer, constructor,
    ``paramwise_cfg``, ``clip_grad`` and ``accumulative_counts`` kept, the AMP options dropped."""
    kept = {k: v for k, v in optim_wrapper.items() if k not in AMP_ONLY_OPTIONS}
    return ConfigDict(kept, type='OptimWrapper')


def fit_precision(cfg: Config, amp: bool) -> None:
    """Applies ``--amp``; without a device AmpOptimWrapper runs on, trains an AMP config in fp32
    (one line says so) and refuses ``--amp``."""
    device = get_device()
    wrapper = cfg.get('optim_wrapper') or ConfigDict()
    if device in AMP_DEVICES:
        if amp:
            wrapper.type = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
        return
    if amp:
        raise SystemExit(f'[pe-dense] --amp needs a GPU: mmengine\'s AmpOptimWrapper (fp16, or '
                         f'bf16 through its dtype option) does not run on {device!r}; train '
                         'without --amp (fp32)')
    if is_amp_wrapper(wrapper):
        cfg.optim_wrapper = fp32_wrapper(wrapper)
        if os.environ.get('RANK', '0') == '0':
            dtype = wrapper.get('dtype') or 'float16'
            print(f'[pe-dense] no CUDA: AmpOptimWrapper ({dtype}) replaced by OptimWrapper '
                  f'(float32) to train on {device!r}; mixed precision (--amp) needs a GPU',
                  flush=True)


def build_config(args) -> Config:
    cfg = load_run_config(args)
    fit_precision(cfg, args.amp)
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
    try:
        Runner.from_cfg(cfg).train()
    except CheckpointLayoutError as err:  # a pre-trained file that would not load
        raise SystemExit(f'[pe-dense] {err}') from None
    finish_distributed()  # a distributed process ends here


if __name__ == '__main__':
    main()
