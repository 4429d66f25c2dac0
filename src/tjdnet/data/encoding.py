"""Examples to token ids, one document per row (no packing), and batches of rows to padded tensors."""

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from tjdnet.data.examples import Conversation, Example
from tjdnet.data.formatting import (
    IGNORE_INDEX,
    conversation_segments,
    format_prompt,
    qa_segments,
    tokenize_segments,
)

PADDING_SIDES = ("right", "left")


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: Example | Conversation, seq_len: int
) -> dict[str, list[int]]:
    """Token ids of one training document, cut to at most ``seq_len`` tokens.

    Returns ``input_ids``, ``labels`` and ``attention_mask`` (lists of equal length T <= seq_len). ``labels`` are
    aligned with ``input_ids`` (the model shifts them): the answer tokens (assistant turns, EOS included) are
    copied, everything else is -100. Raises ValueError when the prompt (everything before the first answer
    token) does not leave room for at least one answer token.
    """
    if isinstance(example, Conversation):
        segments = conversation_segments(tokenizer, example.messages)
    elif example.answer is None:
        raise ValueError(f"example has no answer to train on (question {example.question[:60]!r}); use encode_prompt")
    else:
        segments = qa_segments(tokenizer, example.question, example.answer)
    input_ids, labels = tokenize_segments(tokenizer, segments)
    prompt_len = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    if prompt_len is None:
        raise ValueError(f"nothing to train on: no assistant turn in the conversation {_first_words(example)!r}")
    if prompt_len >= seq_len:
        raise ValueError(
            f"seq_len={seq_len} leaves no room for the answer: the prompt alone is {prompt_len} tokens "
            f"(question {_first_words(example)!r})"
        )
    return {
        "input_ids": input_ids[:seq_len],
        "labels": labels[:seq_len],
        "attention_mask": [1] * min(len(input_ids), seq_len),
    }


def answer_tokens(row: dict[str, list[int]]) -> list[int]:
    """The token ids an encoded row (:func:`encode_example`) trains the model to produce, in order."""
    return [label for label in row["labels"] if label != IGNORE_INDEX]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, example: Example) -> list[int]:
    """Token ids of the generation prompt, exactly as the prompt part of ``encode_example`` tokenises it."""
    input_ids, _ = tokenize_segments(tokenizer, [(format_prompt(tokenizer, example.question), False)])
    return input_ids


def collate(batch: Sequence[dict[str, Any]], pad_token_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad a batch of encoded rows to the longest row.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask`` with 0 and ``labels`` with -100, giving
    LongTensors of shape (B, T). Other keys (e.g. a reference ``answer``) come back as lists. Pad on the right
    for training and on the left for generation prompts, so that every prompt ends at the last column.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side={padding_side!r}; allowed: {', '.join(PADDING_SIDES)}")
    fills = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    width = max(len(row["input_ids"]) for row in batch)
    out: dict[str, Any] = {}
    for key in batch[0]:
        if key not in fills:
            out[key] = [row[key] for row in batch]
            continue
        fill = fills[key]
        padded = []
        for row in batch:
            pad = [fill] * (width - len(row[key]))
            padded.append(list(row[key]) + pad if padding_side == "right" else pad + list(row[key]))
        out[key] = torch.tensor(padded, dtype=torch.long)
    return out


def prompt_batches(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], batch_size: int, device: str = "cpu"
):
    """Yield (examples, input_ids (B, T), attention_mask (B, T)) of the prompts, left-padded for generation."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        rows = [
            {"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in (encode_prompt(tokenizer, e) for e in chunk)
        ]
        batch = collate(rows, tokenizer.pad_token_id, padding_side="left")
        yield chunk, batch["input_ids"].to(device), batch["attention_mask"].to(device)


def _first_words(example: Example | Conversation) -> str:
    text = example.messages[0]["content"] if isinstance(example, Conversation) else example.question
    return text[:60]
