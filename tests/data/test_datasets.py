import json
import math

import pytest

from tjdnet.data.answers import parse_answer
from tjdnet.data.examples import Conversation, Example
from tjdnet.data.registry import DATASETS, load_examples
from tjdnet.data.sources import load_gsm8k, strip_calculator_annotations


def test_gsm8k_splits(shared_data):
    path = shared_data / "gsm8k"
    train, held_out, test = (load_examples("gsm8k", split, path) for split in ("train", "eval", "test"))
    assert (len(train), len(held_out), len(test)) == (7373, 100, 500)
    assert train[0].question.startswith("Natalia sold clips")
    assert parse_answer(train[0].answer) == 72
    # eval comes out of the training file, never out of the test file
    questions = {e.question for e in test}
    assert not questions & {e.question for e in held_out}
    assert not {e.question for e in train} & {e.question for e in held_out}
    assert all(isinstance(e, Example) and not math.isnan(parse_answer(e.answer)) for e in test)


def test_gsm8k_answers_lose_their_calculator_annotations(shared_data):
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips, 2 << 3") == "48/2 = 24 clips, 2 << 3"
    train = load_examples("gsm8k", "train", shared_data / "gsm8k")
    assert train[0].answer.startswith("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips")
    test = load_examples("gsm8k", "test", shared_data / "gsm8k")
    assert not any("<<" in e.answer for e in train + test)


def test_gsm8k_from_a_single_file(shared_data):
    file = shared_data / "gsm8k" / "dev.jsonl"
    assert len(load_examples("gsm8k", "test", file)) == 500
    assert len(load_examples("gsm8k", "train", file)) == 450
    assert len(load_examples("gsm8k", "eval", file)) == 50


def test_gsm8k_without_path_or_datasets(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"--data\.path.*train\.jsonl"):
        load_gsm8k("train", None)


def test_max_num_samples_is_a_seeded_subset_in_file_order(shared_data):
    full = load_examples("gsm8k", "test", shared_data / "gsm8k")
    subset = load_examples("gsm8k", "test", shared_data / "gsm8k", max_num_samples=10, seed=1)
    assert subset == load_examples("gsm8k", "test", shared_data / "gsm8k", max_num_samples=10, seed=1)
    assert subset != load_examples("gsm8k", "test", shared_data / "gsm8k", max_num_samples=10, seed=2)
    positions = [full.index(e) for e in subset]
    assert positions == sorted(positions)


def test_sharegpt(shared_data):
    path = shared_data / "sharegpt_sample" / "dummy_conversation.json"
    train, held_out = load_examples("sharegpt", "train", path), load_examples("sharegpt", "eval", path)
    assert (len(train), len(held_out)) == (495, 5)
    assert all(isinstance(c, Conversation) for c in train + held_out)
    assert train[0].messages[0] == {"role": "user", "content": "Who are you?"}
    assert [m["role"] for m in train[2].messages] == ["user", "assistant"] * 3
    with pytest.raises(ValueError, match="no split 'test'"):
        load_examples("sharegpt", "test", path)


def test_sharegpt_roles(tmp_path):
    file = tmp_path / "chats.json"
    turns = [
        {"from": "gpt", "value": "orphan reply"},
        {"from": "system", "value": "Be kind."},
        {"from": "human", "value": "a"},
        {"from": "human", "value": "b"},
        {"from": "gpt", "value": "c"},
    ]
    file.write_text(json.dumps([{"id": "x", "conversations": turns}, {"id": "y", "conversations": turns[2:4]}]))
    (conversation,) = load_examples("sharegpt", "eval", file)  # "y" has no reply and is skipped
    assert conversation.messages == (
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c"},
    )
    file.write_text(json.dumps([{"id": "z", "conversations": [{"from": "robot", "value": "hi"}]}]))
    with pytest.raises(ValueError, match="'z'.*robot"):
        load_examples("sharegpt", "train", file)


def test_mt_bench(shared_data):
    prompts = load_examples("mt_bench", "test", shared_data / "mt_bench")
    assert len(prompts) == 80
    assert prompts[0].question.startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert all(e.answer is None for e in prompts)
    assert not DATASETS["mt_bench"].scored


def test_jsonl(tmp_path):
    file = tmp_path / "qa.jsonl"
    file.write_text('{"question": "1+1?", "answer": "#### 2"}\n\n{"question": "2+2?", "answer": "#### 4"}\n')
    assert load_examples("jsonl", "test", file) == [Example("1+1?", "#### 2"), Example("2+2?", "#### 4")]


@pytest.mark.parametrize(
    ("third_line", "message"),
    [
        ('{"question": "3+3?", ', "not valid JSON"),
        ('{"question": "3+3?"}', "needs string fields"),
        ("[1]", "expected a JSON object"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path, third_line, message):
    file = tmp_path / "qa.jsonl"
    file.write_text('{"question": "1+1?", "answer": "#### 2"}\n\n' + third_line + "\n")
    with pytest.raises(ValueError, match=rf"qa\.jsonl:3: {message}"):
        load_examples("jsonl", "test", file)


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'; allowed: stemp, gsm8k, jsonl, sharegpt, mt_bench"):
        load_examples("gsm9k", "train")
    with pytest.raises(ValueError, match="jsonl needs a path"):
        load_examples("jsonl", "train")
    with pytest.raises(ValueError, match="takes no path"):
        load_examples("stemp", "train", tmp_path)
    with pytest.raises(ValueError, match="stemp only"):
        load_examples("jsonl", "test", tmp_path, domain_shift="hard")
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_examples("stemp", "validation")
    with pytest.raises(FileNotFoundError, match="test.jsonl, dev.jsonl"):
        load_examples("jsonl", "test", tmp_path)


def test_stemp_through_the_registry():
    examples = load_examples("stemp", "test", domain_shift="mild", max_num_samples=7)
    assert len(examples) == 7
    assert all(e.question.endswith("°C in Fahrenheit?") for e in examples)
