from .backbones import ViTAdapter
from .pos_embed import MPVG, PEG, PVG, AbsolutePE, LaPE, NoPE, build_pos_encoding

__all__ = ['ViTAdapter', 'AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG', 'MPVG', 'build_pos_encoding']
