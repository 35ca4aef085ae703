"""Run-time fixes that mmengine 0.10.7 needs on current PyTorch, applied when pe_dense is imported
(so also through ``custom_imports`` with mmdet's and mmseg's own tools), and CPU distributed
set-up for the project's tools.

1. Checkpoint reading. mmengine calls ``torch.load(filename, map_location)``; since torch 2.6
   that means ``weights_only=True``, which refuses mmengine's own checkpoints (their
   ``message_hub`` and ``meta`` pickle ``HistoryBuffer`` objects and numpy values through
   ``getattr``, which no allow-list can admit safely), so ``--resume``, ``load_from`` and the test
   scripts fail. The local-file loader is replaced by one that reads them as mmengine was written
   to (``weights_only=False``): load only checkpoints you trust, as with any pickle.
2. Distributed training on CPU. mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its
   DDP wrapper passes ``device_ids``, both of which fail without a GPU; :func:`setup_distributed`
   starts a gloo process group first and wraps without device ids.
"""
from __future__ import annotations

import os

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """mmengine's local-file checkpoint loader, for torch >= 2.6 (see the module docstring)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


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
