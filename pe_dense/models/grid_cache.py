"""A small per-grid memo for tensors that depend only on the input size and a few parameters
(resampled PE tables, the PE LayerNorm chain, reference points), used by the fast path."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, List, Sequence, Tuple

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

_AUTOCAST_DEVICES = ('cpu', 'cuda')
# Optimiser steps taken in this process, counted by a global step hook: fused optimiser kernels
# write into the parameters without bumping their version counters.
_optimizer_steps = 0


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class GridCache:
    """Memoises ``compute()`` under a key, for as long as the tensors it read are unchanged.

    An entry is stored under the caller's key together with the device and dtype of each tensor
    in ``params``, the autocast state (enabled and its dtype, on the CPU and on CUDA) and whether
    inference mode is on, so a model moved to another device or dtype, or run under autocast,
    never reads a value computed for another setting.

    The validity check costs O(1) per tensor and never reads tensor values (no device sync): an
    entry is reused only while each tensor is the same Python object, with the same storage
    (``data_ptr``), shape and version counter (``tensor._version``) as when the entry was made,
    and, for an entry computed from tensors, no optimiser step has been taken since. What
    invalidates an entry:

    - in-place writes, which bump the version counter: ``p.mul_()`` or ``p.copy_()`` under
      ``no_grad``, ``nn.init.*_``, ``load_state_dict`` (it ``copy_``-s into each parameter),
      ``torch._foreach_*_`` ops;
    - any optimiser step (``torch.optim.Optimizer.step``, which mmengine's ``OptimWrapper``
      calls): fused kernels (``fused=True``) write without bumping the version counter, so steps
      are counted by a global optimiser step hook and every step invalidates every entry;
    - a replaced parameter (``module.weight = nn.Parameter(...)``, ``load_state_dict(...,
      assign=True)``): another object;
    - ``.data`` assignment (``p.data = t``) and what is built on it (``module.to(...)``,
      ``.half()``, ``.double()``, ``vector_to_parameters``): the version counter stays, the
      storage changes. An entry keeps the old storage alive, so that its address cannot be reused
      by the new one.

    What does not: writes that bypass the version counter outside an optimiser step, that is
    in-place writes through the ``.data`` alias (``p.data.mul_(2)``, ``p.data.copy_(t)``) and
    collectives into a parameter (``dist.broadcast(p, 0)``). Code that writes weights that way must
    call :meth:`clear` afterwards. The position encodings clear their cache on every ``train()`` /
    ``eval()``, and mmengine's loops switch the mode before each training, validation and test
    run: that covers DDP's broadcast of the weights when it wraps a model and ``EMAHook``, which
    swaps the weights through ``.data`` right before the validation and test loops call
    ``model.eval()``.

    The caller decides when caching is allowed: never while a gradient has to flow into the
    parameters (see :func:`grad_needed`), since a cached tensor carries no autograd graph.

    Args:
        max_entries: entries kept, least recently used dropped first.

    Attributes:
        hits, misses: lookups served from the cache and lookups that called ``compute()``.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, params: Sequence[Tensor], compute: Callable[[], Any]) -> Any:
        """``compute()``, or the value stored under ``key`` if ``params`` are unchanged since.

        While ``torch.compile`` or ``torch.export`` traces, nothing is looked up or stored: the
        traced graph computes the value itself (a stored tensor would enter it as a constant, and
        symbolic sizes in ``key`` cannot be hashed)."""
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return compute()
        key = (key, tuple((p.device, p.dtype) for p in params), _autocast_state(),
               torch.is_inference_mode_enabled())
        entry = self._entries.get(key)
        if entry is not None and _unchanged(params, entry[0], entry[2]):
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        value = compute()
        self._entries[key] = ([_snapshot(p) for p in params], value, _optimizer_steps)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drops every entry (the hit and miss counts stay)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def grad_needed(params: Sequence[Tensor]) -> bool:
    """True when autograd would record a computation on any of ``params``."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in params)


# (the tensor, a detached alias holding its storage, data_ptr, shape, version counter)
_Snapshot = Tuple[Tensor, Tensor, int, torch.Size, int]


def _autocast_state() -> Tuple:
    return tuple((torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
                 for d in _AUTOCAST_DEVICES)


def _snapshot(p: Tensor) -> _Snapshot:
    return p, p.detach(), p.data_ptr(), p.shape, p._version


def _unchanged(params: Sequence[Tensor], snapshots: List[_Snapshot], steps: int) -> bool:
    """Whether ``params`` are the tensors of ``snapshots``, unwritten since (``steps``: the
    optimiser steps counted then; a value computed from no tensor stays valid through steps)."""
    if len(params) != len(snapshots) or (len(params) > 0 and steps != _optimizer_steps):
        return False
    return all(p is s[0] and p.data_ptr() == s[2] and p.shape == s[3] and p._version == s[4]
               for p, s in zip(params, snapshots))
