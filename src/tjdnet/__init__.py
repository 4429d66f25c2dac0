"""tjdnet: tensorized joint-distribution heads for faster language-model decoding."""

__version__ = "0.1.0"
