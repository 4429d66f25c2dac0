"""Loaders for datasets read from disk (or, for GSM8K, the Hugging Face hub when ``datasets`` is installed).

Split policy, the same for every question/answer source: ``eval`` is a held-out slice of the training file (its
last lines), ``train`` is the rest, and ``test`` is the test file. Model selection never sees the test split.
"""

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tjdnet.data.examples import Conversation, Example

SPLITS = ("train", "eval", "test")
EVAL_HOLDOUT = 100  # lines held out of a question/answer training file for the eval split
SHAREGPT_EVAL_FRACTION = 0.01
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "system": "system",
}
QA_TRAIN_FILE = "train.jsonl"
QA_TEST_FILES = ("test.jsonl", "dev.jsonl")  # the first one present is the test split
MT_BENCH_FILE = "question.jsonl"
CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")  # GSM8K's "48/2 = <<48/2=24>>24": the calculator call


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, JSON object) for each non-blank line of a JSONL file; a bad line is a ValueError."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def read_qa_jsonl(path: Path) -> list[Example]:
    """Examples from a JSONL file whose lines hold string fields ``question`` and ``answer``."""
    examples = []
    for number, record in read_jsonl(path):
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValueError(f"{path}:{number}: needs string fields 'question' and 'answer', got keys {sorted(record)}")
        examples.append(Example(question, answer))
    return examples


def load_qa(split: str, path: Path) -> list[Example]:
    """A split of question/answer JSONL data (the ``jsonl`` dataset, and GSM8K on disk).

    ``path`` is either a directory holding ``train.jsonl`` and ``test.jsonl`` (or ``dev.jsonl``), or one
    JSONL file, whose whole content is the test split and which is also split into train and eval.
    """
    _check_split(split, SPLITS, "jsonl")
    if path.is_file():
        examples = read_qa_jsonl(path)
        return examples if split == "test" else split_train_eval(examples, split)
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if split == "test":
        test_file = next((path / name for name in QA_TEST_FILES if (path / name).is_file()), None)
        if test_file is None:
            raise FileNotFoundError(f"{path} holds none of {', '.join(QA_TEST_FILES)} for the test split")
        return read_qa_jsonl(test_file)
    train_file = path / QA_TRAIN_FILE
    if not train_file.is_file():
        raise FileNotFoundError(f"{path} holds no {QA_TRAIN_FILE} for the {split} split")
    return split_train_eval(read_qa_jsonl(train_file), split)


def strip_calculator_annotations(answer: str) -> str:
    """A GSM8K answer without its calculator annotations: ``"48/2 = <<48/2=24>>24"`` -> ``"48/2 = 24"``.

    The annotations were written for a calculator tool; a model decoding on its own never writes them, so text
    trained on (and drafters trained on its contexts) should not hold them either."""
    return CALCULATOR_ANNOTATION.sub("", answer)


def load_gsm8k(split: str, path: Path | None) -> list[Example]:
    """GSM8K from ``path`` (see ``load_qa``), else from the hub (``openai/gsm8k``, ``main``) if ``datasets`` is
    installed, answers without their calculator annotations (:func:`strip_calculator_annotations`). Train
    7,473 - 100 held out for eval; test 1,319 on the hub."""
    _check_split(split, SPLITS, "gsm8k")
    if path is not None:
        return [Example(e.question, strip_calculator_annotations(e.answer)) for e in load_qa(split, path)]
    if importlib.util.find_spec("datasets") is None:
        raise FileNotFoundError(
            "gsm8k needs local data: pass --data.path DIR holding train.jsonl and test.jsonl or dev.jsonl "
            "(JSON lines with 'question' and 'answer'), or install `datasets` to download openai/gsm8k"
        )
    import datasets

    rows = datasets.load_dataset("openai/gsm8k", "main", split="test" if split == "test" else "train")
    examples = [Example(row["question"], strip_calculator_annotations(row["answer"])) for row in rows]
    return examples if split == "test" else split_train_eval(examples, split)


def load_sharegpt(split: str, path: Path) -> list[Conversation]:
    """Multi-turn conversations from a ShareGPT JSON file (or every ``*.json`` in a directory).

    Roles map human -> user, gpt -> assistant, system -> system; consecutive turns of one role are joined,
    leading assistant turns dropped, and conversations without an assistant turn skipped. The last 1% (at
    least one) is the eval split; there is no test split (ShareGPT has no reference answers to score).
    """
    _check_split(split, ("train", "eval"), "sharegpt")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no ShareGPT JSON file at {path}")
    conversations = [c for file in files for c in _read_sharegpt(file)]
    held_out = max(1, int(len(conversations) * SHAREGPT_EVAL_FRACTION)) if len(conversations) > 1 else 0
    return conversations[: len(conversations) - held_out] if split == "train" else conversations[-held_out:]


def load_mt_bench(split: str, path: Path) -> list[Example]:
    """The first-turn prompts of MT-Bench ``question.jsonl`` (or a directory holding it), without answers.

    Only a test split: these are prompts to generate from (speed, acceptance), not to score.
    """
    _check_split(split, ("test",), "mt_bench")
    file = path / MT_BENCH_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no MT-Bench {MT_BENCH_FILE} at {path}")
    examples = []
    for number, record in read_jsonl(file):
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise ValueError(f"{file}:{number}: needs a non-empty list of strings 'turns'")
        examples.append(Example(turns[0], None))
    return examples


def split_train_eval(examples: list[Example], split: str) -> list[Example]:
    """The train or eval part of a training set: eval is its last ``EVAL_HOLDOUT`` examples (at most a tenth,
    at least one)."""
    held_out = min(EVAL_HOLDOUT, max(1, len(examples) // 10)) if len(examples) > 1 else 0
    return examples[: len(examples) - held_out] if split == "train" else examples[len(examples) - held_out :]


def _read_sharegpt(file: Path) -> list[Conversation]:
    with open(file, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(records, list):
        raise ValueError(f"{file}: expected a JSON list of conversations")
    conversations = []
    for index, record in enumerate(records):
        name = record.get("id", index) if isinstance(record, dict) else index
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list):
            raise ValueError(f"{file}: conversation {name!r} has no 'conversations' list")
        messages = _sharegpt_messages(turns, file, name)
        if any(m["role"] == "assistant" for m in messages):
            conversations.append(Conversation(tuple(messages)))
    return conversations


def _sharegpt_messages(turns: list[Any], file: Path, name: Any) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for turn in turns:
        speaker = turn.get("from") if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if speaker not in SHAREGPT_ROLES or not isinstance(value, str):
            raise ValueError(
                f"{file}: conversation {name!r} has a turn {turn!r}; needs 'from' in "
                f"{', '.join(SHAREGPT_ROLES)} and a string 'value'"
            )
        role = SHAREGPT_ROLES[speaker]
        if role == "assistant" and not any(m["role"] == "user" for m in messages):
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + value}
        else:
            messages.append({"role": role, "content": value})
    return messages


def _check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset} has no split {split!r}; allowed: {', '.join(allowed)}")
