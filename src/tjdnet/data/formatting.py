"""Prompt and target text, and their token ids with loss only on the answer.

Two renderings, chosen by the tokenizer:

* with a chat template: the prompt is the template applied to the user turn with the generation prompt, the
  target is the answer followed by the EOS token text;
* without one: the original ``[QUESTION]\\n{question}\\n[ANSWER]`` prompt, then answer + EOS.

Text is cut into segments (prompt, answer, next prompt, ...) that are tokenised separately and concatenated,
so every prompt/answer boundary falls exactly between two tokens, and a generation prompt is tokenised exactly
as it was during training. Nothing is tokenised with the tokenizer's automatic special tokens; a chat template
writes its own BOS, and without a template the tokenizer's usual leading tokens (e.g. LLaMA's BOS) are prepended
once, in both training and generation.
"""

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
QUESTION_TEMPLATE = "[QUESTION]\n{question}\n[ANSWER]"

# A piece of text and whether the model is trained to produce it.
Segment = tuple[str, bool]


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The text the model sees before it answers ``question``."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
    return QUESTION_TEMPLATE.format(question=question)


def format_target(tokenizer: PreTrainedTokenizerBase, answer: str) -> str:
    """The text the model is trained to produce after the prompt: the answer, then EOS."""
    return answer + tokenizer.eos_token


def qa_segments(tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> list[Segment]:
    return [(format_prompt(tokenizer, question), False), (format_target(tokenizer, answer), True)]


def conversation_segments(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> list[Segment]:
    """Cut a conversation (validated as in ``Conversation``) into text segments, labelled where an assistant speaks.

    With a chat template, each assistant span is what the template adds between the conversation so far with
    the generation prompt and the conversation including that reply (the reply plus the template's end-of-turn
    text); EOS is appended to the span when the template's end-of-turn text does not contain it, so the model
    always learns to stop. Without a template, user turns become ``[QUESTION]\\n{content}\\n[ANSWER]``, system
    turns ``{content}\\n``, and assistant turns ``{content}`` + EOS.
    """
    if not has_chat_template(tokenizer):
        return [_plain_segment(tokenizer, m) for m in messages]

    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        after = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        _check_prefix(before, done, i)
        _check_prefix(after, before, i + 1)
        reply = after[len(before) :]
        if tokenizer.eos_token not in reply:
            reply += tokenizer.eos_token
        segments += [(before[len(done) :], False), (reply, True)]
        done = after
    full = _render(tokenizer, messages, add_generation_prompt=False)
    _check_prefix(full, done, len(messages))
    segments.append((full[len(done) :], False))
    return [s for s in segments if s[0]]


def tokenize_segments(tokenizer: PreTrainedTokenizerBase, segments: Sequence[Segment]) -> tuple[list[int], list[int]]:
    """Token ids of the concatenated segments, and labels that copy the ids on labelled segments, else -100."""
    input_ids = [] if has_chat_template(tokenizer) else leading_special_ids(tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    texts = [text for text, _ in segments]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    for ids, (_, labelled) in zip(encoded, segments, strict=True):
        input_ids += ids
        labels += ids if labelled else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids a tokenizer puts in front of plain text by default (LLaMA's BOS; nothing for GPT-2)."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def _plain_segment(tokenizer: PreTrainedTokenizerBase, message: dict[str, str]) -> Segment:
    role, content = message["role"], message["content"]
    if role == "assistant":
        return format_target(tokenizer, content), True
    if role == "user":
        return QUESTION_TEMPLATE.format(question=content), False
    return content + "\n", False


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=False)


def _check_prefix(text: str, prefix: str, num_messages: int) -> None:
    if not text.startswith(prefix):
        raise ValueError(
            f"the chat template is not prefix-stable: rendering the first {num_messages} messages does not extend "
            "the rendering of the shorter conversation, so assistant spans cannot be located"
        )
