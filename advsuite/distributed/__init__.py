"""Distributed adversarial training (DAT) on torch.distributed, and the pieces it is built from.

So far: the layer-wise adaptive optimizer (:class:`LALR`) and the gradient compressors
(:func:`quantize`, :func:`natural_compress`) as plain tensor functions; the DDP communication hooks, the
trainer and the tracer build on them.
"""

from .compression import Quantized, dequantize, natural_compress, quantize
from .lalr import LALR

__all__ = ["LALR", "Quantized", "dequantize", "natural_compress", "quantize"]
