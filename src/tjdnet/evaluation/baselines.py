"""transformers' own decoding of the same backbone, as generators for the engine: the baselines of ``bench``.

* ``hf_generate``: ``generate(do_sample=False, use_cache=True)``;
* ``prompt_lookup``: prompt-lookup decoding (``prompt_lookup_num_tokens=10``; batch 1 only).

They run with the same CPU kernels as our modes (:func:`tjdnet.kernels.cpu_kernels`), so a speedup measures the
decoding, not a kernel choice.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from tjdnet.decoding import GenerationOutput, GenerationStats, RowStats
from tjdnet.kernels import cpu_kernels

HF_MODES = ("hf_generate", "prompt_lookup")
PROMPT_LOOKUP_TOKENS = 10


def hf_generator(model, eos_token_id: int | None, pad_token_id: int, max_new_tokens: int, prompt_lookup: bool):
    """transformers greedy ``generate`` of ``model.lm`` as a function returning a :class:`GenerationOutput`.

    The generation config is built here, so the model's own sampling defaults do not leak in. Row stats hold
    the tokens only; the engine fills in passes and times from its forward hook.
    """
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS if prompt_lookup else None,
    )
    name = "prompt_lookup" if prompt_lookup else "hf_generate"

    @torch.inference_mode()
    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GenerationOutput:
        with cpu_kernels(model):
            sequences = model.lm.generate(input_ids, attention_mask=attention_mask, generation_config=config)
        new_tokens = [until_eos(row.tolist(), eos_token_id) for row in sequences[:, input_ids.shape[1] :]]
        rows = [RowStats(new_tokens=len(t)) for t in new_tokens]
        return GenerationOutput(sequences, new_tokens, GenerationStats(gen_mode=name, rows=rows))

    return generate


def until_eos(tokens: list[int], eos_token_id: int | None) -> list[int]:
    """The tokens up to and including the first EOS (the rest is padding), as our generate returns them."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1]
    return tokens
