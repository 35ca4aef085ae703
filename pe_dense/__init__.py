"""pe-dense: position encodings for ViT-Adapter in MMDetection 3.x and MMSegmentation 1.x.

``custom_imports=dict(imports=['pe_dense'])`` in a config registers the ``ViTAdapter`` backbone,
its position encodings and the layer-decay optimizer constructor, for mmdet and mmseg alike.
"""
from . import models  # noqa: F401  (registers the modules)

__version__ = '0.1.0'
