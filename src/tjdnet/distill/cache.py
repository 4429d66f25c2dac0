"""Self-distillation: replace reference answers with the model's own, cached on disk.

Training a draft head on the target model's own outputs makes the draft match what the target would say,
which is what speculative decoding rewards. Generation is slow, so results are cached in JSONL files keyed by
a hash of the questions and the generation settings, and an interrupted run resumes where it stopped.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tjdnet.data.examples import Example

logger = logging.getLogger(__name__)


def self_distill(
    examples: Sequence[Example],
    generate_fn: Callable[[list[str]], list[str]],
    cache_dir: str | Path,
    batch_size: int,
    settings: dict[str, Any] | None = None,
) -> list[Example]:
    """The examples with each answer replaced by ``generate_fn``'s answer to its question.

    ``generate_fn`` maps a batch of questions to the generated answer texts (prompt formatting, the model and
    decoding are its business; answers without prompt or EOS). ``settings`` (JSON-serialisable: model name,
    sampling parameters, ...) enter the cache key with the questions, so changing either regenerates.
    Results live in ``cache_dir/selfdistill-<key>.jsonl``; a second call with the same key reads them without
    calling ``generate_fn``. Progress is appended to a ``.partial`` file batch by batch and renamed into place
    (``os.replace``) when complete, so the cache file is either absent or whole.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be a positive integer")
    questions = [example.question for example in examples]
    cache_file = Path(cache_dir) / f"selfdistill-{cache_key(questions, settings)}.jsonl"
    if cache_file.is_file():
        logger.info("self-distillation: reading %d cached answers from %s", len(questions), cache_file)
        answers = _read_answers(cache_file)
    else:
        answers = _generate(questions, generate_fn, cache_file, batch_size)
    if len(answers) != len(questions):
        raise ValueError(f"{cache_file} holds {len(answers)} answers for {len(questions)} questions; delete it")
    return [Example(q, a) for q, a in zip(questions, answers, strict=True)]


def with_dtype(settings: dict[str, Any], dtype: str) -> dict[str, Any]:
    """``settings`` with the generating model's dtype added, unless it is float32: caches written before the
    dtype was recorded (all float32) keep their keys."""
    return settings if dtype == "float32" else {**settings, "dtype": dtype}


def cache_key(questions: Sequence[str], settings: dict[str, Any] | None) -> str:
    """A short hex digest of the questions and settings."""
    payload = json.dumps({"questions": list(questions), "settings": settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _generate(
    questions: list[str], generate_fn: Callable[[list[str]], list[str]], cache_file: Path, batch_size: int
) -> list[str]:
    partial = cache_file.with_suffix(".partial")
    answers = _read_answers(partial) if partial.is_file() else []
    if answers:
        logger.info("self-distillation: resuming after %d of %d answers", len(answers), len(questions))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # Rewrite what was read so a line cut short by a crash is dropped before appending.
    with open(partial, "w", encoding="utf-8") as f:
        write_answers(f, questions[: len(answers)], answers)
        for start in range(len(answers), len(questions), batch_size):
            batch = questions[start : start + batch_size]
            generated = generate_fn(batch)
            if len(generated) != len(batch):
                raise ValueError(f"generate_fn returned {len(generated)} answers for {len(batch)} prompts")
            write_answers(f, batch, generated)
            f.flush()
            answers += generated
            logger.info("self-distillation: %d / %d answers", len(answers), len(questions))
        os.fsync(f.fileno())
    os.replace(partial, cache_file)
    return answers


def write_answers(f: Any, questions: Sequence[str], answers: Sequence[str]) -> None:
    """One JSONL line ``{"question": ..., "answer": ...}`` per pair, to the open text file ``f``."""
    for question, answer in zip(questions, answers, strict=True):
        f.write(json.dumps({"question": question, "answer": answer}, ensure_ascii=False) + "\n")


def _read_answers(path: Path) -> list[str]:
    answers = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                answers.append(json.loads(line)["answer"])
            except (json.JSONDecodeError, KeyError):
                break  # a line cut short by an interrupted run; everything before it is whole
    return answers
