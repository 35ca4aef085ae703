"""Test-only mmengine hooks that kill the training process (SIGKILL, no clean-up) at a point the
test chooses, for the resume tests in test_entry_points.py. Imported by the training subprocess
through ``custom_imports``."""
import os
import signal

from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class KillAfterCheckpoint(Hook):
    """Kills the process after iteration ``at_iter``, once its checkpoint is complete: this hook
    runs after mmengine's ``CheckpointHook`` (priority VERY_LOW), which writes the file and then
    ``last_checkpoint``."""

    priority = 'LOWEST'

    def __init__(self, at_iter: int) -> None:
        self.at_iter = at_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at_iter:
            _kill_self()


@HOOKS.register_module()
class KillWhileSaving(Hook):
    """Kills the process in the middle of writing the checkpoint of iteration ``at_iter``: half of
    the file's bytes are on disk, ``last_checkpoint`` still names the previous checkpoint. Runs
    before ``CheckpointHook`` and makes mmengine's local file writer stop half-way."""

    priority = 'LOW'

    def __init__(self, at_iter: int) -> None:
        self.at_iter = at_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 != self.at_iter:
            return

        def put_half_then_die(backend, obj, filepath):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
                f.flush()
                os.fsync(f.fileno())
            _kill_self()

        LocalBackend.put = put_half_then_die
