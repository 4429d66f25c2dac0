"""Answer questions with the *base* model (LoRA adapters off), batched — the self-distillation teacher."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from tjdnet.data import Example, prompt_batches
from tjdnet.distill.cache import with_dtype


def base_model_answerer(model, tokenizer, max_new_tokens: int, batch_size: int) -> Callable[[list[str]], list[str]]:
    """A ``generate_fn(questions) -> answers`` using greedy KV-cached decoding of the original model.

    Decoding uses the model's own attention kernel: training targets need no bit-exact 16-bit attention, and
    the exact one costs most at the wide batches distillation runs.
    """

    def answer(questions: list[str]) -> list[str]:
        examples = [Example(q, None) for q in questions]
        texts = []
        was_training = model.training
        model.eval()
        off = model.adapters_disabled() if model.has_lora else contextlib.nullcontext()
        with off, torch.inference_mode():
            for _, ids, mask in prompt_batches(tokenizer, examples, batch_size, str(ids_device(model))):
                out = model.generate(
                    ids,
                    mask,
                    gen_mode="ar",
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    attention="model",
                )
                texts += [tokenizer.decode(t, skip_special_tokens=True) for t in out.new_tokens]
        model.train(was_training)
        return texts

    return answer


def distill_settings(model: str, max_new_tokens: int, dtype: str = "float32") -> dict:
    """The generation settings a self-distillation cache is keyed by (greedy decoding of ``model``)."""
    return with_dtype({"model": model, "max_new_tokens": max_new_tokens, "greedy": True}, dtype)


def ids_device(model) -> torch.device:
    return next(model.parameters()).device
