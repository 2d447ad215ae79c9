"""Distributed adversarial training (DAT) on torch.distributed, and the pieces it is built from.

So far: the layer-wise adaptive optimizer (:class:`LALR`), the gradient compressors (:func:`quantize`,
:func:`natural_compress`) and their DDP communication hooks (:mod:`.hooks`), the data plan (:mod:`.plan`),
the tracer (:class:`Tracer`) and the equivalence checker (:func:`compare`). The trainer (``train=dat``) and
``task=trace`` build on them.
"""

from .checker import Verdict, compare, tolerance
from .compression import Quantized, dequantize, natural_compress, quantize
from .lalr import LALR
from .tracer import Trace, TraceKey, Tracer

__all__ = ["LALR", "Quantized", "Trace", "TraceKey", "Tracer", "Verdict", "compare", "dequantize",
           "natural_compress", "quantize", "tolerance"]  # fmt: skip
