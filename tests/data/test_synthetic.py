"""Synthetic user prompts: the user-turn prefix of a chat template, filtering of sampled turns, the cache."""

import json
from types import SimpleNamespace

import pytest
import torch

from tjdnet.distill import sample_user_prompts, user_turn_prefix


class ScriptedModel(torch.nn.Module):
    """Stands in for a TJDModel: ``generate`` returns scripted token lists and records the prompts it saw."""

    def __init__(self, batches: list[list[list[int]]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(model="scripted")
        self.batches = list(batches)
        self.prompts: list[torch.Tensor] = []

    def generate(self, input_ids, **kwargs):
        assert kwargs["do_sample"] and kwargs["gen_mode"] == "ar"
        self.prompts.append(input_ids)
        return SimpleNamespace(new_tokens=self.batches.pop(0))


def test_user_turn_prefix_is_the_template_before_the_message(chat_tokenizer, make_chat_tokenizer):
    assert user_turn_prefix(chat_tokenizer) == "<|user|>\n"
    with_system = make_chat_tokenizer(
        "<|system|>\nBe kind.<|end|>\n{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
        "{% endfor %}"
    )
    assert user_turn_prefix(with_system) == "<|system|>\nBe kind.<|end|>\n<|user|>\n"


def test_user_turn_prefix_needs_a_chat_template(gpt2_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        user_turn_prefix(gpt2_tokenizer)


def test_sampled_prompts_are_complete_distinct_turns_and_cached(chat_tokenizer, tmp_path):
    eos = chat_tokenizer.eos_token_id
    say = lambda text, end=True: chat_tokenizer(text)["input_ids"] + ([eos] if end else [])  # noqa: E731
    model = ScriptedModel(
        [
            [say("How do I bake bread at home?"), say("Tell me a story about", end=False), say("Hi?")],
            [say("How do I bake bread at home?"), say("Explain photosynthesis simply."), say("What is 2 + 2?")],
        ]
    )
    prompts = sample_user_prompts(model, chat_tokenizer, 3, batch_size=3, cache_dir=tmp_path)
    # dropped: the unfinished turn, the too-short one, the duplicate
    assert prompts == ["How do I bake bread at home?", "Explain photosynthesis simply.", "What is 2 + 2?"]
    assert chat_tokenizer.decode(model.prompts[0][0]) == "<|user|>\n" and model.prompts[0].shape[0] == 3
    (cache_file,) = tmp_path.glob("prompts-*.json")
    assert json.loads(cache_file.read_text()) == prompts
    again = sample_user_prompts(ScriptedModel([]), chat_tokenizer, 3, batch_size=3, cache_dir=tmp_path)
    assert again == prompts  # read back: the scripted model would fail if called


def test_openers_start_the_prompts_batch_by_batch(chat_tokenizer, tmp_path):
    eos = chat_tokenizer.eos_token_id
    say = lambda text: chat_tokenizer(text)["input_ids"] + [eos]  # noqa: E731
    model = ScriptedModel([[say(" a haiku about rain.")], [say(" me the capital of France.")]])
    openers = ("Write", "Tell")
    prompts = sample_user_prompts(model, chat_tokenizer, 2, batch_size=1, cache_dir=tmp_path, openers=openers)
    seen = [chat_tokenizer.decode(ids[0]) for ids in model.prompts]
    assert sorted(seen) == ["<|user|>\nTell", "<|user|>\nWrite"]  # each opener once, in a seeded order
    first, second = (text.removeprefix("<|user|>\n") for text in seen)
    assert prompts == [first + " a haiku about rain.", second + " me the capital of France."]
    plain = ScriptedModel([[say("How do I bake bread at home?"), say("Explain photosynthesis simply.")]])
    sample_user_prompts(plain, chat_tokenizer, 2, batch_size=2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("prompts-*.json"))) == 2  # openers are part of the cache key


def test_a_model_that_never_ends_its_turn_gives_a_clear_error(chat_tokenizer):
    endless = [chat_tokenizer("and so on and so forth")["input_ids"]]
    with pytest.raises(RuntimeError, match="only 0 complete distinct prompts of the 2"):
        sample_user_prompts(ScriptedModel([endless] * 100), chat_tokenizer, 2, batch_size=1)
