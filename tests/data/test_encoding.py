import pytest
import torch

from tjdnet.data import encoding
from tjdnet.data.encoding import collate, encode_example, encode_prompt
from tjdnet.data.examples import Conversation, Example
from tjdnet.data.formatting import IGNORE_INDEX
from tjdnet.data.stemp import stemp_example

EXAMPLE = stemp_example(20)


def answer_tokens(row):
    """The answer tokens read off input_ids where the labels say so (independent of ``encoding.answer_tokens``)."""
    return [token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]


@pytest.mark.parametrize("tokenizer_name", ["gpt2_tokenizer", "chat_tokenizer"])
def test_loss_only_on_answer_and_eos(tokenizer_name, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    row = encode_example(tokenizer, EXAMPLE, seq_len=256)
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) <= 256
    assert set(row["attention_mask"]) == {1}
    assert tokenizer.decode(answer_tokens(row)) == EXAMPLE.answer + "<|endoftext|>"
    assert encoding.answer_tokens(row) == answer_tokens(row)
    # The prompt is exactly the generation prompt, and the labels start right after it.
    prompt = encode_prompt(tokenizer, EXAMPLE)
    assert row["input_ids"][: len(prompt)] == prompt
    assert row["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert row["labels"][len(prompt)] != IGNORE_INDEX


def test_plain_prompt_text(gpt2_tokenizer):
    assert gpt2_tokenizer.decode(encode_prompt(gpt2_tokenizer, EXAMPLE)) == (
        "[QUESTION]\nWhat is 20°C in Fahrenheit?\n[ANSWER]"
    )


def test_truncation_keeps_the_prompt_and_cuts_the_answer(gpt2_tokenizer):
    prompt_len = len(encode_prompt(gpt2_tokenizer, EXAMPLE))
    row = encode_example(gpt2_tokenizer, EXAMPLE, seq_len=prompt_len + 3)
    assert len(row["input_ids"]) == prompt_len + 3
    assert len(answer_tokens(row)) == 3


def test_seq_len_smaller_than_prompt_is_an_error(gpt2_tokenizer):
    prompt_len = len(encode_prompt(gpt2_tokenizer, EXAMPLE))
    with pytest.raises(ValueError, match=f"seq_len={prompt_len}.*prompt alone is {prompt_len} tokens"):
        encode_example(gpt2_tokenizer, EXAMPLE, seq_len=prompt_len)


def test_prompt_only_example_cannot_be_trained_on(gpt2_tokenizer):
    with pytest.raises(ValueError, match="no answer"):
        encode_example(gpt2_tokenizer, Example("Write a poem.", None), seq_len=64)


def test_conversation_rows(chat_tokenizer):
    conversation = Conversation(
        (
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye!"},
        )
    )
    row = encode_example(chat_tokenizer, conversation, seq_len=128)
    assert chat_tokenizer.decode(answer_tokens(row)) == "Hello!<|end|>\n<|endoftext|>Bye!<|end|>\n<|endoftext|>"
    with pytest.raises(ValueError, match="no assistant turn"):
        encode_example(chat_tokenizer, Conversation(({"role": "user", "content": "Hi"},)), seq_len=128)


def test_collate_right_and_left_padding():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1], "answer": "a"},
        {"input_ids": [8], "labels": [8], "attention_mask": [1], "answer": "b"},
    ]
    right = collate(rows, pad_token_id=0, padding_side="right")
    assert right["input_ids"].dtype == torch.long
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["answer"] == ["a", "b"]
    left = collate(rows, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="allowed: right, left"):
        collate(rows, pad_token_id=0, padding_side="middle")


def test_eos_used_as_padding_keeps_its_label(gpt2_tokenizer):
    rows = [encode_example(gpt2_tokenizer, stemp_example(c), seq_len=256) for c in (5, 123456)]
    batch = collate(rows, pad_token_id=gpt2_tokenizer.eos_token_id, padding_side="right")
    short = batch["labels"][0][batch["attention_mask"][0].bool()]
    assert short[-1].item() == gpt2_tokenizer.eos_token_id
    assert (batch["labels"][0][~batch["attention_mask"][0].bool()] == IGNORE_INDEX).all()


def test_default_bos_is_prepended_once_in_training_and_generation(bos_tokenizer):
    prompt = encode_prompt(bos_tokenizer, EXAMPLE)
    row = encode_example(bos_tokenizer, EXAMPLE, seq_len=256)
    assert prompt[0] == bos_tokenizer.bos_token_id != prompt[1]
    assert row["input_ids"][: len(prompt)] == prompt
    assert bos_tokenizer.decode(answer_tokens(row)) == EXAMPLE.answer + "<|endoftext|>"
