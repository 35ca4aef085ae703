"""Position encodings, one file per method, all behind :class:`PositionEncoding`."""
from .absolute import AbsolutePE
from .base import PositionEncoding, build_pos_encoding
from .lape import LaPE
from .mpvg import MPVG
from .none import NoPE
from .peg import PEG
from .pvg import PVG
from .rope import RoPEAxial, RoPEMixed

__all__ = ['PositionEncoding', 'build_pos_encoding', 'AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG',
           'MPVG', 'RoPEAxial', 'RoPEMixed']
