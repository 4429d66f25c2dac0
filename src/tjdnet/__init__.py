"""tjdnet: tensorized joint-distribution heads for faster language-model decoding.

Importing it changes nothing in the caller's process: CPU kernel settings apply only inside ``TJDModel.forward``
and ``generate`` (:func:`tjdnet.kernels.cpu_kernels`).
"""

__version__ = "0.1.0"
