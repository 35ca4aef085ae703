"""The hand-off of an ImageNet pre-training run to the dense stage.

DeiT (and LaPE, which trains with DeiT's code) keeps an EMA of the weights but reports, and
releases, the model's own weights. mmengine's ``EMAHook`` saves the EMA weights as a checkpoint's
``state_dict`` (the model's go to ``ema_state_dict``, under ``module.``), so copying a checkpoint
would hand the EMA on. :class:`PretrainHandOffHook` writes, at the end of training, one file per
set of weights, each named by what it holds:

- ``{work_dir}/handoff_model.pth``: the model's own weights (what DeiT reports);
- ``{work_dir}/handoff_ema.pth``: the EMA weights, only when an ``EMAHook`` runs.

Each file is ``{'meta': {'hand_off': 'model' | 'ema', 'iter': N, 'epoch': E},
'state_dict': {...}}`` with the whole classifier's names (``backbone.*``, ``head.*``), the layout of
an mmpretrain checkpoint, which ``ViTAdapter``'s ``Pretrained`` init reads by its ``backbone.``
prefix.
"""
import os.path as osp
from typing import Optional

from mmengine.dist import master_only
from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

HAND_OFF_FILES = {'model': 'handoff_model.pth', 'ema': 'handoff_ema.pth'}


@HOOKS.register_module()
class PretrainHandOffHook(Hook):
    """Writes the hand-off files (module docstring) after training.

    Args:
        out_dir: where the files go; default the run's ``work_dir``.
    """

    # After EMAHook (ABOVE_NORMAL) and the other hooks have finished with the weights.
    priority = 'LOW'

    def __init__(self, out_dir: Optional[str] = None) -> None:
        self.out_dir = out_dir

    @master_only
    def after_train(self, runner) -> None:
        """Saves the model's weights and, with an ``EMAHook``, the EMA weights."""
        out_dir = self.out_dir or runner.work_dir
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        sets = {'model': model}
        ema_hooks = [h for h in runner.hooks if isinstance(h, EMAHook)]
        if ema_hooks:
            sets['ema'] = ema_hooks[0].ema_model.module
        for kind, module in sets.items():
            path = osp.join(out_dir, HAND_OFF_FILES[kind])
            meta = dict(hand_off=kind, iter=runner.iter, epoch=runner.epoch)
            save_checkpoint({'meta': meta, 'state_dict': weights_to_cpu(module.state_dict())},
                            path)
            runner.logger.info(f'hand-off: {kind} weights saved to {path}')
