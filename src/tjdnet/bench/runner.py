"""``tjdnet bench``: decoding speed of a checkpoint against KV-cached baselines, in one process.

Every mode runs on every prompt batch, modes interleaved per batch and their order rotated per repeat
(ABC, BCA, CAB, ...) so drift hits all of them alike (``anchors.md`` §15.3). Baselines:

* ``ar``: our KV-cached greedy loop on the same backbone (next-token head);
* ``hf_generate``: transformers ``generate(do_sample=False, use_cache=True)`` of the same model;
* ``prompt_lookup``: transformers prompt-lookup decoding (``prompt_lookup_num_tokens=10``; batch 1 only).

Every mode is timed the same way, from outside: ``perf_counter`` around the call, split into prefill and
decode at the end of the first backbone pass, which a forward hook on ``model.backbone`` records while it
counts the passes — so tau is measured, not assumed, for the transformers baselines too.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from transformers import GenerationConfig

from tjdnet.attention import resolve_attention
from tjdnet.data import DATASETS, is_correct, load_examples
from tjdnet.decoding import (
    DEFAULT_TREE_NODES,
    DEFAULT_TREE_TOPK,
    NAMED_MODES,
    TREE_MODE,
    GenerationOutput,
    GenerationStats,
    RowStats,
    add_decoding_arguments,
    mode_arguments,
)
from tjdnet.evaluation import ModeResult, format_table, prompt_batches
from tjdnet.files import write_json
from tjdnet.machine import machine_info

logger = logging.getLogger(__name__)

HF_MODES = ("hf_generate", "prompt_lookup")
BENCH_MODES = (*NAMED_MODES, *HF_MODES)
BASELINES = ("ar", "hf_generate")
HEAD_MODES = ("draft", "speculative", TREE_MODE)  # need a trained joint head
PROMPT_LOOKUP_TOKENS = 10
TABLE_COLUMNS = (
    "tau",
    "acceptance_rate",
    "decode_s",
    "tokens_per_s",
    "speedup_vs_ar",
    "speedup_vs_hf_generate",
    "identical_to_ar",
    "accuracy",
)

Generator = Callable[[torch.Tensor, torch.Tensor], GenerationOutput]


def parse_bench_modes(value: str | Sequence[str], has_head: bool = True) -> list[str]:
    """The benchmark modes in ``value`` (comma-separated), checked; draft/speculative need a trained head."""
    modes = [m.strip() for m in value.split(",")] if isinstance(value, str) else list(value)
    modes = [m for m in modes if m]
    if not modes:
        raise ValueError("--gen_modes is empty; give one or more of " + ", ".join(BENCH_MODES))
    for mode in modes:
        if mode not in BENCH_MODES:
            raise ValueError(f"unknown gen_mode {mode!r}; allowed: {', '.join(BENCH_MODES)}")
        if mode in HEAD_MODES and not has_head:
            raise ValueError(f"gen_mode {mode!r} needs a trained joint head (--ckpt_path); without one use ar, hf_*")
    if len(set(modes)) != len(modes):
        raise ValueError(f"--gen_modes {','.join(modes)} names a mode twice")
    return modes


class ForwardCounter:
    """Counts the forward passes of a module and records when the first one of a call ended."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.first_end: float | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        if self.first_end is None:
            self.first_end = time.perf_counter()

    def reset(self) -> None:
        self.calls, self.first_end = 0, None

    def remove(self) -> None:
        self._handle.remove()


def hf_generator(model, eos_token_id: int | None, pad_token_id: int, max_new_tokens: int, prompt_lookup: bool):
    """transformers greedy ``generate`` of ``model.lm`` as a function returning a :class:`GenerationOutput`.

    The generation config is built here, so the model's own sampling defaults do not leak in. Row stats hold
    the tokens only; the runner fills in passes and times from its forward hook.
    """
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS if prompt_lookup else None,
    )
    name = "prompt_lookup" if prompt_lookup else "hf_generate"

    @torch.inference_mode()
    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GenerationOutput:
        sequences = model.lm.generate(input_ids, attention_mask=attention_mask, generation_config=config)
        new_tokens = [_until_eos(row.tolist(), eos_token_id) for row in sequences[:, input_ids.shape[1] :]]
        rows = [RowStats(new_tokens=len(t)) for t in new_tokens]
        return GenerationOutput(sequences, new_tokens, GenerationStats(gen_mode=name, rows=rows))

    return generate


def _until_eos(tokens: list[int], eos_token_id: int | None) -> list[int]:
    """The tokens up to and including the first EOS (the rest is padding), as our generate returns them."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1]
    return tokens


def timed_call(generate: Generator, counter: ForwardCounter, input_ids, attention_mask) -> GenerationOutput:
    """Run one generate call; overwrite its passes and times with the hook's (the same clock for every mode).

    ``forward_passes`` becomes the backbone calls of the batch; a row's passes are those up to its last token
    (min(batch passes, its tokens) for transformers, which emits at least one token per pass and row).
    """
    counter.reset()
    start = time.perf_counter()
    out = generate(input_ids, attention_mask)
    end = time.perf_counter()
    stats = out.stats
    first_end = counter.first_end if counter.first_end is not None else end
    stats.prefill_time_s, stats.decode_time_s = first_end - start, end - first_end
    stats.forward_passes = counter.calls
    if stats.gen_mode in HF_MODES:
        for row in stats.rows:
            row.forward_passes = min(counter.calls, row.new_tokens)
    return out


def _spread(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def _ratio(a: float, b: float) -> float | None:
    return a / b if a and b else None


def _finite(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def bench_modes(
    model,
    tokenizer,
    examples: Sequence,
    modes: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 3,
    horizon: int | None = None,
    scored: bool = True,
    tree_nodes: int = DEFAULT_TREE_NODES,
    tree_topk: int = DEFAULT_TREE_TOPK,
    attention: str = "auto",
) -> tuple[dict[str, dict], dict[str, str]]:
    """Time every mode on every prompt batch, ``repeats`` times, interleaved; summarise per mode.

    Returns:
        (summaries per measured mode, {skipped mode: reason}).
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = pad if pad is not None else (eos if eos is not None else 0)
    skipped = {}
    if "prompt_lookup" in modes and batch_size > 1:
        skipped["prompt_lookup"] = (
            f"transformers supports prompt-lookup decoding at batch size 1 only (got {batch_size})"
        )
    modes = [m for m in modes if m not in skipped]
    ours = partial(model.generate, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, horizon=horizon)
    generators: dict[str, Generator] = {
        m: hf_generator(model, eos, pad, max_new_tokens, m == "prompt_lookup")
        if m in HF_MODES
        else partial(ours, **mode_arguments(m, tree_nodes, tree_topk, attention))
        for m in modes
    }
    summaries = bench_generators(generators, model.backbone, tokenizer, examples, batch_size, repeats, warmup, scored)
    return summaries, skipped


def bench_generators(
    generators: dict[str, Generator],
    backbone: torch.nn.Module,
    tokenizer,
    examples: Sequence,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 3,
    scored: bool = True,
) -> dict[str, dict]:
    """Time named generators (``(input_ids, attention_mask) -> GenerationOutput``) that share ``backbone``.

    Every generator runs on every prompt batch before the next batch, in an order rotated per repeat, after
    ``warmup`` untimed runs of each on the first batch. Forward passes are counted on ``backbone``. One of the
    names should be ``ar`` (the reference for ``identical_to_ar`` and ``speedup_vs_ar``). Returns the
    summaries per name (:func:`summarise`).
    """
    modes = list(generators)
    batches = list(prompt_batches(tokenizer, examples, batch_size))
    counter = ForwardCounter(backbone)
    try:
        _, ids, mask = batches[0]
        for _ in range(warmup):
            for mode in modes:
                generators[mode](ids, mask)
        runs = [{m: ModeResult(m) for m in modes} for _ in range(repeats)]
        for k, results in enumerate(runs):
            order = modes[k % len(modes) :] + modes[: k % len(modes)]
            for chunk, ids, mask in batches:
                for mode in order:
                    out = timed_call(generators[mode], counter, ids, mask)
                    _record(results[mode], out, chunk, tokenizer, scored and k == 0)
            logger.info("repeat %d/%d done", k + 1, repeats)
    finally:
        counter.remove()
    for mode in modes:
        for results in runs[1:]:
            if results[mode].outputs != runs[0][mode].outputs:
                logger.warning("%s produced different tokens in different repeats", mode)
    return summarise(runs, num_prompts=len(examples))


def _record(result: ModeResult, out: GenerationOutput, chunk, tokenizer, scored: bool) -> None:
    result.add(out.stats)
    for example, tokens in zip(chunk, out.new_tokens, strict=True):
        result.outputs.append(tokens)
        if scored and example.answer is not None:
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            result.scored += 1
            result.correct += int(is_correct(text, example.answer))


def summarise(runs: list[dict[str, ModeResult]], num_prompts: int) -> dict[str, dict]:
    """Per mode: counts from the first repeat, times as median/min/max over repeats, speedups of medians.

    ``tokens_per_s`` is end to end (prefill included); ``decode_tokens_per_s`` counts the tokens emitted after
    the prefill over the decode time, and the speedups are ratios of it (§15.2: Σ tokens / Σ decode time).
    """
    first = runs[0]
    out = {}
    for mode, result in first.items():
        decode = [r[mode].decode_time_s for r in runs]
        total = [r[mode].decode_time_s + r[mode].prefill_time_s for r in runs]
        prefill = [r[mode].prefill_time_s for r in runs]
        summary = result.summary()
        drafted = result.drafted > 0
        summary.update(
            acceptance_rate=summary["acceptance_rate"] if drafted else None,
            per_position_acceptance=summary["per_position_acceptance"] if drafted else [],
            accepted_length_histogram=summary["accepted_length_histogram"] if drafted else [],
            prefill_time_s=_spread(prefill),
            decode_time_s=_spread(decode),
            total_time_s=_spread(total),
            tokens_per_s=_ratio(result.new_tokens, statistics.median(total)),
            decode_tokens_per_s=_ratio(result.new_tokens - num_prompts, statistics.median(decode)),
            accuracy=_finite(result.accuracy),
            scored=result.scored,
        )
        out[mode] = summary
    speed = {m: s["decode_tokens_per_s"] for m, s in out.items()}
    end_to_end = {m: s["tokens_per_s"] for m, s in out.items()}
    measured = [b for b in BASELINES if speed.get(b)]
    best = max(measured, key=lambda b: speed[b]) if measured else None
    for mode, summary in out.items():
        for base in BASELINES:
            summary[f"speedup_vs_{base}"] = _ratio(speed[mode], speed.get(base))
            summary[f"end_to_end_speedup_vs_{base}"] = _ratio(end_to_end[mode], end_to_end.get(base))
        summary["best_baseline"] = best
        summary["speedup_vs_best_baseline"] = _ratio(speed[mode], speed.get(best)) if best else None
        speedup = summary["speedup_vs_ar"]
        summary["overhead_c"] = summary["tau"] / speedup - 1 if speedup else None
        if "ar" in first:
            same = [a == b for a, b in zip(first[mode].outputs, first["ar"].outputs, strict=True)]
            summary["identical_to_ar"] = sum(same) / len(same)
        else:
            summary["identical_to_ar"] = None
    return out


def load_bench_model(ckpt_path: str | None, model_name: str | None, dtype: str | None):
    """(TJDModel in eval mode with LoRA merged, tokenizer, description) from a checkpoint or a base model.

    ``ckpt_path`` is a ``tjdnet fit`` checkpoint file or a directory written by ``TJDModel.save_pretrained``.
    """
    from tjdnet.model import CONFIG_FILE, TJDModel

    if ckpt_path is not None and Path(ckpt_path, CONFIG_FILE).is_file():
        model, tokenizer = TJDModel.from_pretrained(ckpt_path, dtype=dtype or "float32")
        model.merge_adapters()
        from tjdnet.training.module import config_hparams

        return model.eval(), tokenizer, {"checkpoint": str(ckpt_path), "model": config_hparams(model.config)}
    if ckpt_path is not None:
        from tjdnet.training.restore import load_trained

        module, data_hparams = load_trained(Path(ckpt_path), dtype)
        model = module.model
        model.merge_adapters()
        return model.eval(), module.tokenizer, {"checkpoint": str(ckpt_path), "model": dict(module.hparams)}
    model, tokenizer = TJDModel.from_base(model_name, dtype=dtype or "float32", head="stp", horizon=1, rank=1)
    description = {"checkpoint": None, "model": {"model": model_name, "model_head": "stp", "horizon": 1, "rank": 1}}
    return model.eval(), tokenizer, description


def run_bench(
    ckpt_path: str | None = None,
    model: str | None = None,
    dataset: str = "stemp",
    data_path: str | None = None,
    num_prompts: int = 20,
    max_new_tokens: int = 128,
    gen_modes: str | Sequence[str] = "ar,hf_generate,speculative,speculative_tree",
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 3,
    out: str | Path = "bench_results.json",
    dtype: str | None = None,
    num_threads: int | None = None,
    horizon: int | None = None,
    seed: int = 0,
    tree_nodes: int = DEFAULT_TREE_NODES,
    tree_topk: int = DEFAULT_TREE_TOPK,
    attention: str = "auto",
) -> dict:
    """Benchmark decoding modes on ``num_prompts`` test prompts of a dataset; returns the JSON payload."""
    args = dict(locals())
    if (ckpt_path is None) == (model is None):
        raise ValueError("give exactly one of --ckpt_path (a trained checkpoint) or --model (a base model)")
    modes = parse_bench_modes(gen_modes, has_head=ckpt_path is not None)
    for name, value in (("num_prompts", num_prompts), ("batch_size", batch_size), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; use an integer >= 1")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is not allowed; use an integer >= 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} is not allowed; use an integer >= 0")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads={num_threads} is not allowed; use an integer >= 1")
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    split = "test" if "test" in DATASETS[dataset].splits else DATASETS[dataset].splits[-1]
    examples = load_examples(dataset, split, data_path, num_prompts, seed)
    tjd, tokenizer, description = load_bench_model(ckpt_path, model, dtype)
    logger.info("benchmarking %s on %d %s/%s prompts", ", ".join(modes), len(examples), dataset, split)
    results, skipped = bench_modes(
        tjd,
        tokenizer,
        examples,
        modes,
        max_new_tokens,
        batch_size,
        repeats,
        warmup,
        horizon,
        scored=DATASETS[dataset].scored,
        tree_nodes=tree_nodes,
        tree_topk=tree_topk,
        attention=attention,
    )
    payload = {
        **description,
        "dataset": dataset,
        "split": split,
        "num_prompts": len(examples),
        "args": {**args, "gen_modes": modes, "out": str(out)},
        "dtype": str(tjd.lm.dtype).removeprefix("torch."),
        # our modes' attention (tjdnet.attention; transformers' generate keeps the model's own kernel)
        "attention": "exact" if resolve_attention(attention, tjd.lm.dtype) else tjd.lm.config._attn_implementation,
        "parameters": tjd.parameter_report(),
        "machine": machine_info(),
        "results": results,
        "skipped": skipped,
    }
    write_json(Path(out), payload)
    print(format_bench_table(payload))
    print(f"results written to {out}")
    return payload


def format_bench_table(payload: dict) -> str:
    """The results as a plain-text table (decode time as the median over repeats), plus skipped modes."""
    rows = {mode: {**s, "decode_s": s["decode_time_s"]["median"]} for mode, s in payload["results"].items()}
    lines = [format_table(rows, TABLE_COLUMNS)]
    lines += [f"{mode}: skipped ({reason})" for mode, reason in payload.get("skipped", {}).items()]
    return "\n".join(lines)


def run_bench_cli(args: list[str]) -> dict:
    parser = ArgumentParser(prog="tjdnet bench", description="Decoding speed of a checkpoint vs KV-cached baselines.")
    parser.add_argument(
        "--ckpt_path",
        type=str | None,
        default=None,
        help="best.ckpt / last.ckpt of a run, or a save_pretrained directory",
    )
    parser.add_argument("--model", type=str | None, default=None, help="a base model instead (ar and hf_* only)")
    parser.add_argument(
        "--gen_modes", type=str, default="ar,hf_generate,speculative,speculative_tree", help=",".join(BENCH_MODES)
    )
    parser.add_argument("--num_prompts", type=int, default=20)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of every mode on the first batch")
    parser.add_argument("--out", type=str, default="bench_results.json")
    parser.add_argument("--dtype", type=str | None, default=None, help="float32 or bfloat16 (default: as trained)")
    parser.add_argument("--num_threads", type=int | None, default=None)
    parser.add_argument("--horizon", type=int | None, default=None, help="block length (default: the head's)")
    add_decoding_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data.dataset", type=str, default="stemp")
    parser.add_argument("--data.path", type=str | None, default=None)
    cfg = parser.parse_args(args)
    return run_bench(
        ckpt_path=cfg.ckpt_path,
        model=cfg.model,
        dataset=cfg.data.dataset,
        data_path=cfg.data.path,
        num_prompts=cfg.num_prompts,
        max_new_tokens=cfg.max_new_tokens,
        gen_modes=cfg.gen_modes,
        batch_size=cfg.batch_size,
        repeats=cfg.repeats,
        warmup=cfg.warmup,
        out=cfg.out,
        dtype=cfg.dtype,
        num_threads=cfg.num_threads,
        horizon=cfg.horizon,
        seed=cfg.seed,
        tree_nodes=cfg.tree_nodes,
        tree_topk=cfg.tree_topk,
        attention=cfg.attention,
    )
