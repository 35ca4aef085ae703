from .vit import Attention, Block
from .vit_adapter import ViTAdapter

__all__ = ['Attention', 'Block', 'ViTAdapter']
