from .backbones import PEViT, ViTAdapter
from .pos_embed import MPVG, PEG, PVG, AbsolutePE, LaPE, NoPE, build_pos_encoding

__all__ = ['ViTAdapter', 'PEViT', 'AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG', 'MPVG',
           'build_pos_encoding']
