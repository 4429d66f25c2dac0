"""``tjdnet distill``: the training data of a draft head, written by the model it will speed up.

Questions of a dataset (GSM8K, a question/answer JSONL file, ShareGPT's first user turns, ...) and, for chat
models, prompts the model writes itself in the user's turn (``--chat_prompts``; ``--opener_prompts``: starting with
one of :data:`~tjdnet.distill.REQUEST_OPENERS`) are answered greedily by the model, in batches. Every answer is
cached under ``--cache_dir``, keyed by every setting, and an interrupted run resumes where it stopped. The result is
one question/answer JSONL file that ``tjdnet fit-heads`` (or ``tjdnet fit --data.dataset jsonl``) trains on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tjdnet.checks import check_choice, check_int
from tjdnet.commands.options import parse_call
from tjdnet.data import Conversation, Example, load_examples
from tjdnet.devices import resolve_device
from tjdnet.distill import (
    REQUEST_OPENERS,
    base_model_answerer,
    distill_settings,
    sample_user_prompts,
    self_distill,
    write_answers,
)
from tjdnet.files import atomic_file, check_writable, write_json
from tjdnet.loading import DTYPES
from tjdnet.machine import machine_info
from tjdnet.model import TJDModel
from tjdnet.runs import experiments_dir

logger = logging.getLogger(__name__)


def first_question(record: Example | Conversation) -> str | None:
    """An Example's question, or a conversation's first user message (None when it has none)."""
    if isinstance(record, Example):
        return record.question
    return next((m["content"] for m in record.messages if m["role"] == "user"), None)


def run_distill(
    out: str,
    model: str = "smollm2-135m",
    source: str | None = "gsm8k",
    path: str | None = None,
    num_questions: int | None = 1024,
    chat_prompts: int = 0,
    opener_prompts: int = 0,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    dtype: str = "bfloat16",
    seed: int = 0,
    cache_dir: str | None = None,
    num_threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """Write ``out`` (JSONL of question/answer rows, answers by ``model``) and ``<out>.json`` (what was done).

    Args:
        out: the JSONL file to write.
        model: the model to distil (embedded name, hub id or local path).
        source: dataset whose training questions are answered: gsm8k, jsonl, sharegpt (first user turns), stemp;
            none: no dataset questions.
        path: file or directory of the source (gsm8k: optional).
        num_questions: source questions to use (a seeded subset; default 1024; None: all).
        chat_prompts: prompts the model writes itself in the user's turn (chat models only).
        opener_prompts: more such prompts, each starting with a request opener (writing, coding, math, ...).
        max_new_tokens: longest answer in tokens.
        batch_size: prompts answered per batch.
        dtype: of the model while it writes (bfloat16: as it will decode, and faster on most CPUs).
        seed: seed of the question subset and of the prompt sampler.
        cache_dir: where answers and prompts are cached (default: experiments/selfdistill).
        num_threads: torch CPU threads.
        device: cpu, cuda, cuda:N or auto.
    """
    for name, value, low in (
        ("chat_prompts", chat_prompts, 0),
        ("opener_prompts", opener_prompts, 0),
        ("max_new_tokens", max_new_tokens, 1),
        ("batch_size", batch_size, 1),
    ):
        check_int(name, value, low)
    if num_questions is not None:
        check_int("num_questions", num_questions)
    check_choice("dtype", dtype, DTYPES)
    use_source = source not in (None, "none")
    if not use_source and not chat_prompts and not opener_prompts:
        raise ValueError("nothing to distil: give a --source with questions, --chat_prompts or --opener_prompts")
    out_path = check_writable(out)
    questions = []
    if use_source:
        records = load_examples(source, "train", path, num_questions, seed)
        questions = [q for q in map(first_question, records) if q]
        if not questions:
            raise ValueError(f"the {source} data" + (f" in {path}" if path else "") + " holds no questions")
    device = str(resolve_device(device))
    if num_threads is not None:
        check_int("num_threads", num_threads)
        torch.set_num_threads(num_threads)
    cache = Path(cache_dir) if cache_dir is not None else experiments_dir() / "selfdistill"

    start = time.perf_counter()
    teacher, tokenizer = TJDModel.from_base(model, dtype=dtype, device=device, model_head="stp", train_mode="head")
    teacher.eval()
    answer = base_model_answerer(teacher, tokenizer, max_new_tokens, batch_size)
    settings = distill_settings(model, max_new_tokens, dtype)
    rows = self_distill([Example(q, None) for q in questions], answer, cache, batch_size, settings) if questions else []
    counts = {"questions": len(rows)}
    for kind, n, openers in (("chat_prompts", chat_prompts, ()), ("opener_prompts", opener_prompts, REQUEST_OPENERS)):
        if n:
            prompts = sample_user_prompts(
                teacher, tokenizer, n, batch_size, seed=seed, cache_dir=cache, openers=openers
            )
            rows += self_distill([Example(p, None) for p in prompts], answer, cache, batch_size, settings)
            counts[kind] = n
    with atomic_file(out_path, "w") as f:
        write_answers(f, [r.question for r in rows], [r.answer for r in rows])
    summary = {
        "out": str(out_path),
        "model": model,
        "source": source if use_source else None,
        "path": path,
        "rows": len(rows),
        **counts,
        "settings": settings,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine_info(),
    }
    write_json(out_path.with_name(out_path.name + ".json"), summary)
    print(f"{len(rows)} distilled rows written to {out_path} in {summary['seconds']:.0f} s")
    return summary


def run_distill_cli(args: list[str]) -> dict:
    return parse_call(run_distill, args, "tjdnet distill", "Write a draft head's training data with the model itself.")
