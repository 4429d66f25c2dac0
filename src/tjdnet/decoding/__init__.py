"""KV-cached decoding: plain, draft and lossless self-speculative generation (chain or tree drafts)."""

from tjdnet.decoding.generate import (
    AUTO_TREE_MODE,
    DEFAULT_TREE_MAX_NODES,
    GEN_MODES,
    NAMED_MODES,
    TREE_MODE,
    GenerationOutput,
    generate,
    mode_arguments,
)
from tjdnet.decoding.lookup import DEFAULT_TREE_LOOKUP
from tjdnet.decoding.stats import GenerationStats, RowStats
from tjdnet.decoding.tree import DEFAULT_TREE_NODES, DEFAULT_TREE_TEMPERATURE, DEFAULT_TREE_TOPK

__all__ = [
    "AUTO_TREE_MODE",
    "DEFAULT_TREE_LOOKUP",
    "DEFAULT_TREE_MAX_NODES",
    "DEFAULT_TREE_NODES",
    "DEFAULT_TREE_TEMPERATURE",
    "DEFAULT_TREE_TOPK",
    "GEN_MODES",
    "NAMED_MODES",
    "TREE_MODE",
    "GenerationOutput",
    "GenerationStats",
    "RowStats",
    "generate",
    "mode_arguments",
]
