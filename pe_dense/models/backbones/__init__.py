from .vit import Attention, Block
from .vit_adapter import ViTAdapter
from .vit_classifier import PEViT

__all__ = ['Attention', 'Block', 'PEViT', 'ViTAdapter']
