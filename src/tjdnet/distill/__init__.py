"""Self-distillation: the base model writes the training answers (and, for chat, the user prompts) of a head.

``prompts`` samples requests from a chat model's own user turn, ``teacher`` answers questions with the base model
(adapters off), ``cache`` keeps the answers on disk, keyed by every setting and resumable.
"""

from tjdnet.distill.cache import cache_key, self_distill, with_dtype, write_answers
from tjdnet.distill.prompts import REQUEST_OPENERS, sample_user_prompts, user_turn_prefix
from tjdnet.distill.teacher import base_model_answerer, distill_settings

__all__ = [
    "REQUEST_OPENERS",
    "base_model_answerer",
    "cache_key",
    "distill_settings",
    "sample_user_prompts",
    "self_distill",
    "user_turn_prefix",
    "with_dtype",
    "write_answers",
]
