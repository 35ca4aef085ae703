"""A small per-grid memo for tensors that depend only on the input size and a few parameters
(resampled PE tables, the PE LayerNorm chain, reference points), used by the fast path."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, List, Sequence, Tuple

import torch
from torch import Tensor


class GridCache:
    """Memoises ``compute()`` under a key, for as long as the parameters it read are unchanged.

    Every entry keeps a copy of the parameters it was computed from and is reused only while each
    parameter still has the same device, dtype, shape and values (``torch.equal``). That catches
    every way a weight can change: in-place writes (optimiser steps, ``load_state_dict``,
    ``param.mul_()`` under ``no_grad``), writes through ``.data`` and replaced tensors. The check
    costs one comparison of those few parameters per lookup.

    The caller decides when caching is allowed: never while a gradient has to flow into the
    parameters (see :func:`grad_needed`), since a cached tensor carries no autograd graph.

    Args:
        max_entries: entries kept, least recently used dropped first.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, params: Sequence[Tensor], compute: Callable[[], Any]) -> Any:
        """``compute()``, or the value stored under ``key`` if ``params`` are unchanged since."""
        key = (key, torch.is_autocast_enabled('cpu'), torch.is_autocast_enabled('cuda'))
        entry = self._entries.get(key)
        if entry is not None and _unchanged(params, entry[0]):
            self._entries.move_to_end(key)
            return entry[1]
        value = compute()
        self._entries[key] = ([p.detach().clone() for p in params], value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def grad_needed(params: Sequence[Tensor]) -> bool:
    """True when autograd would record a computation on any of ``params``."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in params)


def _unchanged(params: Sequence[Tensor], snapshot: List[Tensor]) -> bool:
    if len(params) != len(snapshot):
        return False
    return all(_same(p, s) for p, s in zip(params, snapshot))


def _same(p: Tensor, s: Tensor) -> bool:
    meta: Tuple = (p.device, p.dtype, p.shape)
    return meta == (s.device, s.dtype, s.shape) and torch.equal(p.detach(), s)
