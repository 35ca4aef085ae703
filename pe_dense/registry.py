"""Registries of pe-dense.

Modules that configs name (the backbone, optimizer constructors) go into mmengine's root registries:
a lookup from an mmdet- or mmseg-scoped registry falls back to its parent, the root, so both
frameworks find them by their plain names. Position encodings have a registry of their own, a
child of the root ``MODELS``.
"""
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS, Registry

POS_ENCODINGS = Registry('position encoding', parent=MODELS, scope='pe_dense')

__all__ = ['MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'POS_ENCODINGS']
