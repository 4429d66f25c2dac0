"""KV-cached decoding: plain, draft and lossless self-speculative generation."""

from tjdnet.decoding.generate import GEN_MODES, GenerationOutput, generate
from tjdnet.decoding.stats import GenerationStats, RowStats

__all__ = ["GEN_MODES", "GenerationOutput", "GenerationStats", "RowStats", "generate"]
