"""Data layer: datasets, prompt formatting, tokenisation with answer-only labels, answer parsing.

Knows nothing of models or Lightning; ``tjdnet.training`` wraps it in a DataModule.
"""

from tjdnet.data.answers import is_correct, parse_answer
from tjdnet.data.encoding import answer_tokens, collate, encode_example, encode_prompt, prompt_batches
from tjdnet.data.examples import Conversation, Example
from tjdnet.data.formatting import IGNORE_INDEX, format_prompt, format_target
from tjdnet.data.registry import DATASETS, DatasetSpec, load_examples

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "Conversation",
    "DatasetSpec",
    "Example",
    "answer_tokens",
    "collate",
    "encode_example",
    "encode_prompt",
    "format_prompt",
    "format_target",
    "is_correct",
    "load_examples",
    "parse_answer",
    "prompt_batches",
]
