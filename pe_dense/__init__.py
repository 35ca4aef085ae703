"""pe-dense: position encodings for ViT-Adapter in MMDetection 3.x and MMSegmentation 1.x.

``custom_imports=dict(imports=['pe_dense'])`` in a config registers the ``ViTAdapter`` backbone,
its position encodings and the layer-decay optimizer constructor, for mmdet and mmseg alike, and
lets mmengine 0.10.7 read its own checkpoints on torch >= 2.6 (see :mod:`pe_dense.runtime`).
"""
from . import models  # noqa: F401  (registers the modules)
from . import engine  # noqa: F401  (registers the optimizer constructor)
from .runtime import install_checkpoint_loader

install_checkpoint_loader()

__version__ = '0.1.0'
