from .modules import (ConvFFN, Extractor, InteractionBlock, Injector, SpatialPriorModule,
                      maybe_checkpoint)

__all__ = ['ConvFFN', 'Extractor', 'InteractionBlock', 'Injector', 'SpatialPriorModule',
           'maybe_checkpoint']
