import pytest

from tjdnet.data.examples import Conversation
from tjdnet.data.formatting import (
    IGNORE_INDEX,
    conversation_segments,
    format_prompt,
    format_target,
    tokenize_segments,
)

CONVERSATION = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Vicuna."},
    {"role": "user", "content": "Goodbye"},
    {"role": "assistant", "content": "Bye!"},
)


def labelled_runs(tokenizer, input_ids, labels):
    """The decoded runs of consecutive labelled tokens (labels must copy the ids where set)."""
    runs, run = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs + ([tokenizer.decode(run)] if run else [])


def test_plain_template(gpt2_tokenizer):
    assert format_prompt(gpt2_tokenizer, "What is 20°C in Fahrenheit?") == (
        "[QUESTION]\nWhat is 20°C in Fahrenheit?\n[ANSWER]"
    )
    assert format_target(gpt2_tokenizer, "\n####\n68.0") == "\n####\n68.0<|endoftext|>"


def test_chat_template(chat_tokenizer):
    assert format_prompt(chat_tokenizer, "Hi?") == "<|user|>\nHi?<|end|>\n<|assistant|>\n"
    assert format_target(chat_tokenizer, "Hello.") == "Hello.<|endoftext|>"


def test_plain_conversation_labels_only_assistant_turns(gpt2_tokenizer):
    segments = conversation_segments(gpt2_tokenizer, CONVERSATION)
    assert "".join(text for text, _ in segments) == (
        "Be brief.\n[QUESTION]\nWho are you?\n[ANSWER]I am Vicuna.<|endoftext|>"
        "[QUESTION]\nGoodbye\n[ANSWER]Bye!<|endoftext|>"
    )
    input_ids, labels = tokenize_segments(gpt2_tokenizer, segments)
    assert labelled_runs(gpt2_tokenizer, input_ids, labels) == ["I am Vicuna.<|endoftext|>", "Bye!<|endoftext|>"]


def test_chat_conversation_labels_only_assistant_turns(chat_tokenizer):
    segments = conversation_segments(chat_tokenizer, CONVERSATION)
    # The template's rendering, with EOS after each reply because this template's end-of-turn lacks it.
    assert "".join(text for text, _ in segments) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWho are you?<|end|>\n<|assistant|>\nI am Vicuna.<|end|>\n"
        "<|endoftext|><|user|>\nGoodbye<|end|>\n<|assistant|>\nBye!<|end|>\n<|endoftext|>"
    )
    input_ids, labels = tokenize_segments(chat_tokenizer, segments)
    assert labelled_runs(chat_tokenizer, input_ids, labels) == [
        "I am Vicuna.<|end|>\n<|endoftext|>",
        "Bye!<|end|>\n<|endoftext|>",
    ]


def test_chat_template_ending_turns_with_eos_is_kept_as_is(make_chat_tokenizer):
    tokenizer = make_chat_tokenizer(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    segments = conversation_segments(tokenizer, CONVERSATION)
    assert "".join(text for text, _ in segments) == tokenizer.apply_chat_template(list(CONVERSATION), tokenize=False)
    input_ids, labels = tokenize_segments(tokenizer, segments)
    assert labelled_runs(tokenizer, input_ids, labels) == ["I am Vicuna.<|endoftext|>", "Bye!<|endoftext|>"]


def test_template_that_rewrites_earlier_turns_is_rejected(make_chat_tokenizer):
    # Shows only the last message, so a longer conversation does not extend a shorter one.
    tokenizer = make_chat_tokenizer("{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}")
    with pytest.raises(ValueError, match="not prefix-stable"):
        conversation_segments(tokenizer, CONVERSATION)


def test_conversation_validation():
    with pytest.raises(ValueError, match="role"):
        Conversation(({"role": "bot", "content": "hi"},))
    with pytest.raises(ValueError, match="may not open with an assistant"):
        Conversation(({"role": "assistant", "content": "hi"}, {"role": "user", "content": "hello"}))
