"""Training helpers: the layer-wise learning-rate decay optimizer constructor."""
from .layer_decay import ViTAdapterLayerDecayOptimizerConstructor, get_layer_id, is_no_decay

__all__ = ['ViTAdapterLayerDecayOptimizerConstructor', 'get_layer_id', 'is_no_decay']
