"""Reading checkpoint files without running code from them.

Every local checkpoint that pe-dense reads, and (once ``pe_dense`` is imported) every local
checkpoint that mmengine reads (``--resume``, ``load_from``, the test scripts, ``Pretrained``
init), goes through :func:`load_checkpoint_file`: ``torch.load(..., weights_only=True)`` with an
allow-list of exactly what OpenMMLab checkpoints hold besides tensors and plain containers:

- mmengine's ``HistoryBuffer`` (the message hub's logged scalars), and the one ``builtins.getattr``
  call its pickle makes: ``getattr(HistoryBuffer, NAME)`` for the statistics methods the class
  defines itself. Any other ``getattr`` (on another object, or a private name) is refused, so the
  allowed ``getattr`` cannot reach ``__globals__`` or another module;
- the numpy values mmengine and the released mmdet/mmseg files pickle: ``ndarray``, ``dtype`` and
  its per-type classes, scalars (``numpy._core.multiarray.scalar``, numpy 1's
  ``numpy.core.multiarray.*`` names included) and ``_codecs.encode`` for their bytes;
- config text and metadata are strings, numbers, tuples, lists and dicts, which torch allows.

The allow-list is active only inside each load (``torch.serialization.safe_globals``): importing
pe_dense adds nothing to torch's global list, so other code in the process keeps torch's defaults.

Anything else is refused by :class:`UnsafeCheckpointError`, which names the global, the file and
how to trust it: list the file in the environment variable ``PE_DENSE_TRUSTED_CHECKPOINTS``
(absolute or relative paths, separated by ``os.pathsep``), and pe-dense reads that file with
``weights_only=False``, as a plain pickle (which runs whatever code it names).
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch

TRUST_ENV = 'PE_DENSE_TRUSTED_CHECKPOINTS'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file asks to build something outside the allow-list."""


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as mmengine's ``HistoryBuffer`` pickles need it, and for nothing else."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and not name.startswith('_') and callable(
            vars(HistoryBuffer).get(name)):
        return getattr(HistoryBuffer, name)
    raise UnsafeCheckpointError(
        f'getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) is not allowed: '
        'only the public methods of mmengine\'s HistoryBuffer may be looked up')


def _numpy_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed: List[Union[Callable, Tuple[Callable, str]]] = [np.ndarray, np.dtype]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        allowed += [(multiarray._reconstruct, f'{module}._reconstruct'),
                    (multiarray.scalar, f'{module}.scalar')]
    # numpy >= 1.25 pickles a dtype through its class, e.g. numpy.dtypes.Float64DType.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                allowed.append((cls, f'numpy.dtypes.{name}'))
    return allowed


def allowed_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """The globals a checkpoint may name, beyond torch's own weights-only defaults."""
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), *_numpy_globals()]


def trusted_files() -> List[str]:
    """The files listed in ``PE_DENSE_TRUSTED_CHECKPOINTS``, as real paths."""
    value = os.environ.get(TRUST_ENV, '')
    return [os.path.realpath(os.path.expanduser(p)) for p in value.split(os.pathsep) if p]


def load_checkpoint_file(path: str, map_location: Any = 'cpu') -> Any:
    """``torch.load`` of a local file, refusing anything outside the allow-list (module doc)."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file {path} does not exist')
    if os.path.realpath(path) in trusted_files():
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(str(err))
        if not _REFUSALS.search(reason):
            raise ValueError(f'{path} is not a PyTorch checkpoint: {reason}') from None
        found = re.search(r'GLOBAL (\S+)', reason)
        what = found.group(1) if found else reason
        raise UnsafeCheckpointError(
            f'refused to load {path}: it needs {what}, outside the types OpenMMLab checkpoints '
            'hold (tensors, containers, numpy values, mmengine\'s HistoryBuffer); building it '
            f'could run code from the file ({reason}). If you trust this file, list it in the '
            f'environment variable {TRUST_ENV} (e.g. {TRUST_ENV}={os.path.abspath(path)}) and '
            'run again; it is then read as a plain pickle.') from None


# What torch's weights-only unpickler says when a file names something outside the allow-list.
_REFUSALS = re.compile(r'GLOBAL |getattr\(|unrecognized function|Can only (build|create)')


def _unpickler_reason(text: str) -> str:
    """The unpickler's own reason, without torch's generic advice around it."""
    found = re.search(r'WeightsUnpickler error:\s*(.*?)\s*(Check the documentation|$)', text,
                      re.S)
    return ' '.join((found.group(1) if found else text).split())
