"""tjdnet: tensorized joint-distribution heads for faster language-model decoding.

Importing it changes nothing in the caller's process: CPU kernel settings (:func:`tjdnet.kernels.cpu_kernels`)
apply only while tjdnet computes — inside ``TJDModel.forward``, ``generate``, ``tjdnet fit``'s training loop and
the transformers baselines of ``tjdnet bench`` — and are undone afterwards.
"""

__version__ = "0.1.0"
