"""No position encoding at all (ablation): every hook is the identity."""
from pe_dense.registry import POS_ENCODINGS

from .base import PositionEncoding


@POS_ENCODINGS.register_module()
class NoPE(PositionEncoding):
    """No position information: tokens pass through unchanged, a checkpoint's table is dropped."""
