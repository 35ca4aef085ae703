"""Training helpers: the layer-wise learning-rate decay optimizer constructor and the hand-off
hook of ImageNet pre-training."""
from .hand_off import HAND_OFF_FILES, PretrainHandOffHook
from .layer_decay import (ViTAdapterLayerDecayOptimizerConstructor, get_layer_id, is_no_decay,
                          published_name)

__all__ = ['HAND_OFF_FILES', 'PretrainHandOffHook', 'ViTAdapterLayerDecayOptimizerConstructor',
           'get_layer_id', 'is_no_decay', 'published_name']
