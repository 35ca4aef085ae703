"""Run-time fixes that mmengine 0.10.7 needs on current PyTorch, applied when pe_dense is imported
(so also through ``custom_imports`` with mmdet's and mmseg's own tools), and CPU distributed
set-up for the project's tools.

1. Checkpoint reading. mmengine calls ``torch.load(filename, map_location)``; since torch 2.6
   that means ``weights_only=True`` with torch's default allow-list, which refuses mmengine's own
   checkpoints (their ``message_hub`` pickles ``HistoryBuffer`` objects and numpy values), so
   ``--resume``, ``load_from`` and the test scripts fail. The local-file loader is replaced by
   :func:`pe_dense.safe_load.load_checkpoint_file`: still ``weights_only=True``, with an allow-list
   of exactly what OpenMMLab checkpoints hold; anything else is refused with an error that says how
   to trust a file.
2. Distributed training on CPU. mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its
   DDP wrapper passes ``device_ids``, both of which fail without a GPU; :func:`setup_distributed`
   starts a gloo process group first and wraps without device ids. :func:`finish_distributed`
   ends the process group and then the process, without the interpreter's shutdown: a gloo (or
   NCCL) group destroyed during that shutdown can abort a rank ("terminate called without an
   active exception", SIGABRT) after its work is done, which fails the whole torchrun job.

:func:`add_run_args` and :func:`load_run_config` are the command-line pieces that
``tools/train.py`` and ``tools/test.py`` share.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from pe_dense.checkpoint import note_checkpoint_read
from pe_dense.safe_load import load_checkpoint_file


def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """mmengine's local-file loader: reads through the allow-list (module docstring), and notes
    the file, so that a backbone refusing the state dict loaded from it can name it
    (:func:`pe_dense.checkpoint.note_checkpoint_read`)."""
    obj = load_checkpoint_file(filename, map_location=map_location)
    note_checkpoint_read(filename, obj)
    return obj


def install_checkpoint_loader() -> None:
    """Makes :func:`load_local_checkpoint` mmengine's loader for local paths."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)


def setup_distributed(cfg, launcher: str) -> None:
    """For ``launcher != 'none'`` on a machine without CUDA: a gloo process group and a DDP
    wrapper without device ids. On CUDA machines mmengine's own set-up runs unchanged."""
    if launcher == 'none' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    if launcher == 'pytorch' and not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    elif launcher != 'pytorch':
        raise RuntimeError(f'launcher {launcher!r} without CUDA is not supported; use torchrun '
                           '(--launcher pytorch) with the gloo backend')


def finish_distributed() -> None:
    """Ends a distributed run's process after its work has ended without error (a rank that
    raised must not wait at the barrier); call it last. Without a process group it does nothing
    and returns.

    With one: collects garbage (the runner's DDP wrapper and its reducer hold the process group
    in reference cycles), waits for every rank (a barrier), destroys the process group, flushes
    the logs and the standard streams, and ends the process with status 0 through ``os._exit``.
    A gloo (or NCCL) group, or a reducer holding one, destroyed during the interpreter's shutdown
    can abort the rank ("terminate called without an active exception", SIGABRT) after its work
    is done, which fails the whole torchrun job (seen in the test suite's torchrun run, also
    once the group was destroyed before the shutdown); that shutdown is skipped this way.
    mmengine has closed its visualizer and log files by then (``LoggerHook.after_run``)."""
    import gc
    import logging
    import sys

    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='where logs (and checkpoints) go')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_run_config(args: argparse.Namespace):
    """The config of ``args.config`` with the launcher, ``--cfg-options`` and the work dir
    (``--work-dir``, else the config's, else ``work_dirs/<config name>``) applied; sets
    ``LOCAL_RANK`` for launchers that pass ``--local-rank``."""
    from mmengine.config import Config
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg
