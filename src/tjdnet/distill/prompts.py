"""Synthetic user prompts sampled from a chat model itself (the Magpie recipe, Xu et al. 2024).

Render the chat template up to where the user's message would start and let the model continue: what it writes
up to its end-of-turn token is a request it expects users to make. Self-distilling answers to such prompts gives
a draft head chat data for the model's own distribution without any dataset. Sampling is seeded and the prompts
are cached, so a second run reads them back.

Left to itself a small model writes the same few kinds of request over and over (SmolLM2-135M: a third of its
requests ask for advice on plans, few ask it to write something or play a role).
``openers`` widens the spread: each batch starts the user's message with one of them (e.g. "Write a poem",
"Implement a Python function") and the model writes the rest; :data:`REQUEST_OPENERS` spans the usual kinds of
chat request (writing, role-play, reasoning, math, coding, extraction, science, humanities, advice).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from tjdnet.data.formatting import has_chat_template
from tjdnet.distill.cache import cache_key, with_dtype
from tjdnet.files import write_json

logger = logging.getLogger(__name__)

_SENTINEL = "\x00tjdnet-user-message\x00"
MIN_PROMPT_CHARS = 10

REQUEST_OPENERS: tuple[str, ...] = (
    "Write a",
    "Write a short story",
    "Write a poem",
    "Compose an email",
    "Draft a",
    "Rewrite the following",
    "Edit this paragraph",
    "Imagine you are",
    "Pretend to be",
    "Act as",
    "You are a",
    "Describe",
    "Explain",
    "Explain the difference between",
    "Why do",
    "How does",
    "What are the main",
    "Compare",
    "Summarize",
    "Extract",
    "Given the following",
    "Here is a",
    "Classify",
    "Solve",
    "Calculate",
    "If",
    "Suppose",
    "A train",
    "Implement a Python function",
    "Write a program",
    "Write a SQL query",
    "Fix the bug in",
    "What is",
    "Can you",
    "How can I",
    "Give me",
    "List",
    "Suggest",
    "Analyze",
    "Discuss",
    "Evaluate",
    "Create a",
    "Plan a",
    "Design a",
)


def user_turn_prefix(tokenizer) -> str:
    """The chat-template text before the first user message (system prompt and user header included)."""
    if not has_chat_template(tokenizer):
        raise ValueError("synthetic prompts need a tokenizer with a chat template (an instruction-tuned model)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False)
    if _SENTINEL not in text:
        raise ValueError("the tokenizer's chat template does not render the user's message verbatim")
    return text[: text.index(_SENTINEL)]


def sample_user_prompts(
    model,
    tokenizer,
    n: int,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    openers: Sequence[str] = (),
) -> list[str]:
    """``n`` distinct prompts the model writes in the user's turn, each a complete turn (it ended with EOS).

    Args:
        model: a :class:`~tjdnet.model.TJDModel` (its next-token head samples).
        max_new_tokens: longest prompt in tokens; longer samples are dropped.
        cache_dir: where ``prompts-<key>.json`` is kept, keyed by the settings; None: no cache.
        openers: starts of the user's message, one per batch in a seeded order (each prompt begins with its
            batch's opener); empty: the model starts the message itself.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n={n} and batch_size={batch_size} must be positive integers")
    prefix = user_turn_prefix(tokenizer)
    settings = {"model": getattr(model.config, "model", None), "n": n, "max_new_tokens": max_new_tokens}
    settings |= {"temperature": temperature, "seed": seed, "prefix": prefix}
    if openers:
        settings["openers"] = list(openers)
    settings = with_dtype(settings, str(next(model.parameters()).dtype).removeprefix("torch."))
    cache_file = Path(cache_dir) / f"prompts-{cache_key([], settings)}.json" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        logger.info("synthetic prompts: reading %d from %s", n, cache_file)
        return json.loads(cache_file.read_text())
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    starts = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in openers] or [[]]
    generator = torch.Generator().manual_seed(seed)
    # no draw without openers, so plain sampling (and its caches) stays as it was
    order = torch.randperm(len(openers), generator=generator).tolist() if openers else [0]
    prompts: list[str] = []
    seen: set[str] = set()
    for batch in range(8 * (n // batch_size + 1)):  # bounded: a model that never ends its turn gives up
        opener_ids = starts[order[batch % len(order)]]
        ids = torch.tensor([prefix_ids + opener_ids] * batch_size, device=next(model.parameters()).device)
        with torch.inference_mode():
            out = model.generate(
                ids,
                gen_mode="ar",
                do_sample=True,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                generator=generator,
                attention="model",
            )
        for tokens in out.new_tokens:
            text = tokenizer.decode(opener_ids + tokens, skip_special_tokens=True).strip()
            if tokens and tokens[-1] == tokenizer.eos_token_id and len(text) >= MIN_PROMPT_CHARS and text not in seen:
                seen.add(text)
                prompts.append(text)
        logger.info("synthetic prompts: %d / %d", min(len(prompts), n), n)
        if len(prompts) >= n:
            break
    if len(prompts) < n:
        raise RuntimeError(f"the model wrote only {len(prompts)} complete distinct prompts of the {n} asked for")
    prompts = prompts[:n]
    if cache_file is not None:
        write_json(cache_file, prompts)
    return prompts
