"""Evaluation: the one engine of ``tjdnet test`` and ``tjdnet bench`` and transformers' baselines."""

from tjdnet.evaluation.baselines import HF_MODES, hf_generator
from tjdnet.evaluation.engine import (
    Evaluation,
    ForwardCounter,
    ModeResult,
    format_table,
    run_modes,
    summarise,
    timed_call,
)

__all__ = [
    "HF_MODES",
    "Evaluation",
    "ForwardCounter",
    "ModeResult",
    "format_table",
    "hf_generator",
    "run_modes",
    "summarise",
    "timed_call",
]
