"""``tjdnet bench``: decoding speed of a checkpoint against KV-cached baselines, in one process.

It is ``tjdnet test`` with repeats, warm-up, transformers' baselines and the prefill/decode split reported:
the same engine (:mod:`tjdnet.evaluation.engine`), the same metrics (docs/metrics.md). Baselines:

* ``ar``: our KV-cached greedy loop on the same backbone (next-token head);
* ``hf_generate``: transformers ``generate(do_sample=False, use_cache=True)`` of the same model;
* ``prompt_lookup``: transformers prompt-lookup decoding (batch 1 only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

from tjdnet.attention import resolve_attention
from tjdnet.checks import check_int
from tjdnet.commands.options import DataChoice, DecodingOptions, load_for_decoding, parse_call, report
from tjdnet.commands.test import data_source, parse_gen_modes, test_split
from tjdnet.data import DATASETS, load_examples
from tjdnet.decoding import AUTO_TREE_MODE, NAMED_MODES, TREE_MODE
from tjdnet.decoding.tree_size import describe_pass_costs
from tjdnet.evaluation import HF_MODES, format_table, hf_generator, run_modes
from tjdnet.files import check_writable
from tjdnet.machine import machine_info
from tjdnet.model import TJDModel
from tjdnet.quantization import resolve_draft_weights

logger = logging.getLogger(__name__)

BENCH_MODES = (*NAMED_MODES, *HF_MODES)
RESULTS_FILE = "bench_results.json"
DEFAULT_MODES = "ar,hf_generate,speculative,speculative_tree"
DEFAULT_BASE_MODES = "ar,hf_generate"
HEAD_MODES = ("draft", "draft_anchored", "speculative", TREE_MODE, AUTO_TREE_MODE)  # need a trained joint head
TABLE_COLUMNS = (
    "tau",
    "acceptance_rate",
    "decode_time_s",
    "tokens_per_s",
    "decode_ms_per_step",
    "draft_ms_per_step",
    "speedup_vs_ar",
    "speedup_vs_hf_generate",
    "identical_to_ar",
    "accuracy",
)


def parse_bench_modes(value: str | Sequence[str], has_head: bool = True) -> list[str]:
    """The benchmark modes in ``value`` (comma-separated), checked; draft/speculative need a trained head."""
    modes = parse_gen_modes(value, BENCH_MODES)
    for mode in modes:
        if mode in HEAD_MODES and not has_head:
            raise ValueError(f"gen_mode {mode!r} needs a trained joint head (--ckpt_path); without one use ar, hf_*")
    return modes


def run_bench(
    ckpt_path: str | None = None,
    model: str | None = None,
    gen_modes: str | None = None,
    num_prompts: int = 20,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 3,
    seed: int = 0,
    out: str | None = None,
    data: DataChoice | dict | None = None,
    compare: str | None = None,
    **options,
) -> dict:
    """Benchmark decoding modes on ``num_prompts`` test prompts; returns the JSON payload (also written to ``out``).

    Args:
        ckpt_path: best.ckpt / last.ckpt of a run, or a save_pretrained directory.
        model: a base model instead of a checkpoint (ar and hf_* modes only).
        gen_modes: comma-separated modes: ar, draft, draft_anchored, speculative, speculative_tree,
            speculative_tree_auto, hf_generate,
            prompt_lookup (default: ar,hf_generate,speculative,speculative_tree; ar,hf_generate for a base model).
        num_prompts: test prompts to time.
        batch_size: prompts per batch.
        repeats: timed runs of every mode on every prompt.
        warmup: untimed runs of every mode on the first batch.
        seed: seed of the prompt sample and of torch.
        out: JSON path (default: bench_results.json, an earlier one kept as bench_results.<k>.json).
        data: which prompts (default: the test split of the checkpoint's dataset; stemp for a base model).
        compare: comma-separated save_pretrained directories of more heads (``head`` mode) on the same base
            model, decoded on the same backbone, interleaved per prompt: their head modes appear as
            ``<mode>@<directory name>``.
        **options: the fields of :class:`~tjdnet.commands.options.DecodingOptions`.
    """
    decoding = DecodingOptions(**options)
    if (ckpt_path is None) == (model is None):
        raise ValueError("give exactly one of --ckpt_path (a trained checkpoint) or --model (a base model)")
    if gen_modes is None:
        gen_modes = DEFAULT_MODES if ckpt_path is not None else DEFAULT_BASE_MODES
    modes = parse_bench_modes(gen_modes, has_head=ckpt_path is not None)
    for name, value, low in (("num_prompts", num_prompts, 1), ("batch_size", batch_size, 1), ("repeats", repeats, 1)):
        check_int(name, value, low)
    check_int("warmup", warmup, 0)
    choice = vars(data) if isinstance(data, DataChoice) else dict(data or {})
    if choice.get("max_num_samples") is not None:
        raise ValueError("bench takes --num_prompts, not --data.max_num_samples")
    if choice.get("dataset") is not None and choice["dataset"] not in DATASETS:
        raise ValueError(f"unknown dataset {choice['dataset']!r}; allowed: {', '.join(DATASETS)}")
    out_path = check_writable(out if out is not None else RESULTS_FILE)
    others = [Path(c) for c in compare.split(",")] if compare else []
    if others and ckpt_path is None:
        raise ValueError("--compare needs --ckpt_path: the heads are compared on its backbone")
    if len({p.name for p in others} | {Path(ckpt_path or "").name}) != len(others) + 1:
        raise ValueError(f"--compare {compare!r}: every head needs a directory name of its own")
    decoding.apply_threads()
    torch.manual_seed(seed)
    tjd, tokenizer, description, trained = load_for_decoding(ckpt_path, model, decoding.dtype, device=decoding.device)
    trained_dataset = data_source(trained)
    dataset = choice.get("dataset") or (trained_dataset if trained_dataset in DATASETS else "stemp")
    path = choice.get("path") or (trained.get("path") if dataset == trained_dataset else None)
    split = test_split(dataset)
    examples = load_examples(dataset, split, path, num_prompts, seed, choice.get("domain_shift") or "in")
    skipped = {}
    if "prompt_lookup" in modes and batch_size > 1:
        skipped["prompt_lookup"] = (
            f"transformers supports prompt-lookup decoding at batch size 1 only (got {batch_size})"
        )
    modes = [m for m in modes if m not in skipped]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    ours = partial(tjd.generate, eos_token_id=eos, pad_token_id=pad)
    generators = {
        m: hf_generator(tjd, eos, pad, decoding.max_new_tokens, m == "prompt_lookup")
        if m in HF_MODES
        else partial(ours, **decoding.generate_kwargs(m))
        for m in modes
    }
    for directory in others:
        other = TJDModel.from_pretrained(directory, base=tjd.lm)
        decode = partial(other.generate, eos_token_id=eos, pad_token_id=pad)
        for m in (m for m in modes if m in HEAD_MODES):
            generators[f"{m}@{directory.name}"] = partial(decode, **decoding.generate_kwargs(m))
    logger.info("benchmarking %s on %d %s/%s prompts", ", ".join(modes), len(examples), dataset, split)
    evaluation = run_modes(
        generators,
        tjd.backbone,
        tokenizer,
        examples,
        batch_size,
        repeats,
        warmup,
        scored=DATASETS[dataset].scored,
        device=decoding.device,
    )
    payload = {
        **description,
        "dataset": dataset,
        "split": split,
        "num_prompts": evaluation.num_prompts,
        "args": {
            "gen_modes": modes,
            "num_prompts": num_prompts,
            "batch_size": batch_size,
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "out": str(out_path),
            **vars(decoding),
            "data": {**choice, "dataset": dataset, "path": path},
            "compare": [str(p) for p in others],
        },
        "dtype": str(tjd.lm.dtype).removeprefix("torch."),
        # our modes' attention (tjdnet.attention; transformers' generate keeps the model's own kernel)
        "attention": "exact"
        if resolve_attention(decoding.attention, tjd.lm.dtype)
        else tjd.lm.config._attn_implementation,
        # what the speculative modes drafted with (tjdnet.quantization; the draft modes: the head's own weights
        # unless int8 was asked for)
        "draft_weights": "int8" if resolve_draft_weights(decoding.draft_weights, "speculative", tjd.head) else "model",
        "parameters": tjd.parameter_report(),
        "machine": machine_info(),
        "results": evaluation.summaries(),
        "skipped": skipped,
        # speculative_tree_auto's verifying-pass costs per width as last updated (the first head's)
        "pass_costs": describe_pass_costs(tjd.pass_costs),
    }
    report(payload, format_bench_table(payload), out_path, evaluation.interrupted, keep_previous_file=out is None)
    return payload


def format_bench_table(payload: dict) -> str:
    """The results as a plain-text table (times as medians over repeats), plus skipped modes."""
    lines = [format_table(payload["results"], TABLE_COLUMNS)]
    lines += [f"{mode}: skipped ({reason})" for mode, reason in payload.get("skipped", {}).items()]
    return "\n".join(lines)


def run_bench_cli(args: list[str]) -> dict:
    return parse_call(run_bench, args, "tjdnet bench", "Decoding speed of a checkpoint vs KV-cached baselines.")
