from .ms_deform_attn import (MSDeformAttn, ms_deform_attn_gather, ms_deform_attn_sample,
                             pytorch_sampler_on_cuda)

__all__ = ['MSDeformAttn', 'ms_deform_attn_gather', 'ms_deform_attn_sample',
           'pytorch_sampler_on_cuda']
