"""The one evaluation engine of ``tjdnet test`` and ``tjdnet bench``: every decoding mode on every prompt batch,
modes interleaved per batch and their order rotated per repeat, timed the same way from outside, summarised once.

Protocol (``anchors.md`` §15.2-15.3): ``warmup`` untimed runs of every mode on the first batch; then per repeat
each batch goes through every mode before the next batch (orders ABC, BCA, CAB, ...), so drift hits all modes
alike. Each call is timed with ``perf_counter`` around it and split into prefill and decode at the end of the
first backbone pass, which a forward hook on the backbone records while it counts the passes — so tau is
measured, not assumed, for the transformers baselines too. Counts come from the first repeat, times are medians
over repeats. Every metric is defined in ``summarise`` and in docs/metrics.md.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tjdnet.data import Example, is_correct, prompt_batches
from tjdnet.decoding import GenerationOutput, GenerationStats
from tjdnet.decoding.stats import acceptance_by_position
from tjdnet.devices import device_clock

logger = logging.getLogger(__name__)

Generator = Callable[[torch.Tensor, torch.Tensor], GenerationOutput]
BASELINES = ("ar", "hf_generate")


@dataclass
class ModeResult:
    """Totals of one decoding mode over all prompts of one repeat."""

    gen_mode: str
    new_tokens: int = 0
    forward_passes: int = 0
    row_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    lookup_accepted: int = 0
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0
    decode_steps: int = 0
    draft_time_s: float = 0.0
    draft_blocks: int = 0
    reached: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)
    correct: int = 0
    scored: int = 0
    outputs: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def add(self, stats: GenerationStats) -> None:
        self.new_tokens += stats.new_tokens
        self.forward_passes += stats.forward_passes
        self.row_passes += sum(r.forward_passes for r in stats.rows)
        self.drafted += sum(r.drafted for r in stats.rows)
        self.accepted += sum(r.accepted for r in stats.rows)
        self.lookup_accepted += sum(r.lookup_accepted for r in stats.rows)
        self.prefill_time_s += stats.prefill_time_s
        self.decode_time_s += stats.decode_time_s
        self.decode_steps += stats.decode_steps
        self.draft_time_s += stats.draft_time_s
        self.draft_blocks += stats.draft_blocks
        self.reached = _add_lists(self.reached, stats.reached)
        self.accepted_at = _add_lists(self.accepted_at, stats.accepted_at)
        self.histogram = _add_lists(self.histogram, stats.accepted_length_histogram)


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


class ForwardCounter:
    """Counts the forward passes of a module and records when the first one of a call ended (on ``device``'s
    clock: CUDA work is waited for)."""

    def __init__(self, module: torch.nn.Module, device: str = "cpu") -> None:
        self.calls = 0
        self.first_end: float | None = None
        self.device = device
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        if self.first_end is None:
            self.first_end = device_clock(self.device)

    def reset(self) -> None:
        self.calls, self.first_end = 0, None

    def remove(self) -> None:
        self._handle.remove()


def timed_call(generate: Generator, counter: ForwardCounter, input_ids, attention_mask) -> GenerationOutput:
    """Run one generate call; overwrite its passes and times with the hook's (the same clock for every mode).

    ``forward_passes`` becomes the backbone calls of the batch. A generator that counts no row passes itself
    (transformers' ``generate``, which emits at least one token per pass and row) gets min(batch passes, its
    tokens) per row.
    """
    counter.reset()
    start = device_clock(counter.device)
    out = generate(input_ids, attention_mask)
    end = device_clock(counter.device)
    stats = out.stats
    first_end = counter.first_end if counter.first_end is not None else end
    stats.prefill_time_s, stats.decode_time_s = first_end - start, end - first_end
    stats.forward_passes = counter.calls
    if all(row.forward_passes == 0 for row in stats.rows):
        for row in stats.rows:
            row.forward_passes = min(counter.calls, row.new_tokens)
    return out


@dataclass
class Evaluation:
    """What :func:`run_modes` measured: one {mode: ModeResult} per finished repeat, over the first
    ``num_prompts`` prompts (all of them unless ``interrupted`` by Ctrl-C during the first repeat)."""

    runs: list[dict[str, ModeResult]]
    num_prompts: int
    interrupted: bool = False

    def summaries(self) -> dict[str, dict]:
        return summarise(self.runs, self.num_prompts)


def run_modes(
    generators: dict[str, Generator],
    backbone: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    batch_size: int = 1,
    repeats: int = 1,
    warmup: int = 1,
    scored: bool = True,
    device: str = "cpu",
) -> Evaluation:
    """Run named generators (``(input_ids, attention_mask) -> GenerationOutput``) sharing ``backbone`` on every
    prompt batch, ``repeats`` times (see the module docstring).

    Answers are decoded and, with ``scored``, compared with the examples' answers in the first repeat only. A
    batch counts once every mode has run it, so Ctrl-C (KeyboardInterrupt) ends the evaluation with what all
    modes finished: the batches done in the first repeat, or the repeats done after it.
    """
    modes = list(generators)
    batches = list(prompt_batches(tokenizer, examples, batch_size, device))
    runs = [{m: ModeResult(m) for m in modes} for _ in range(repeats)]
    if not batches:
        return Evaluation(runs, 0)
    counter = ForwardCounter(backbone, device)
    done, finished = 0, 0
    try:
        _, ids, mask = batches[0]
        for _ in range(warmup):
            for mode in modes:
                generators[mode](ids, mask)
        for k, results in enumerate(runs):
            order = modes[k % len(modes) :] + modes[: k % len(modes)]
            done = 0
            for chunk, ids, mask in batches:
                outs = {mode: timed_call(generators[mode], counter, ids, mask) for mode in order}
                for mode, out in outs.items():
                    _record(results[mode], out, chunk, tokenizer, scored, first=k == 0)
                done += len(chunk)
                logger.info("repeat %d/%d: %d/%d prompts", k + 1, repeats, done, len(examples))
            finished += 1
    except KeyboardInterrupt:
        logger.warning("interrupted: keeping %s", f"{done} prompts" if finished == 0 else f"{finished} repeats")
        kept = runs[:1] if finished == 0 else runs[:finished]
        return Evaluation(kept, done if finished == 0 else len(examples), interrupted=True)
    finally:
        counter.remove()
    for mode in modes:
        if any(r[mode].outputs != runs[0][mode].outputs for r in runs[1:]):
            logger.warning("%s produced different tokens in different repeats", mode)
    return Evaluation(runs, len(examples))


def _record(result: ModeResult, out: GenerationOutput, chunk, tokenizer, scored: bool, first: bool) -> None:
    result.add(out.stats)
    for example, tokens in zip(chunk, out.new_tokens, strict=True):
        result.outputs.append(tokens)
        if not first:
            continue
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        result.texts.append(text)
        if scored and example.answer is not None:
            result.scored += 1
            result.correct += int(is_correct(text, example.answer))


def summarise(runs: list[dict[str, ModeResult]], num_prompts: int) -> dict[str, dict]:
    """Per mode, every reported metric (docs/metrics.md), from the repeats of :func:`run_modes`.

    Counts (tokens, passes, tau, acceptance, accuracy) come from the first repeat; times are {median, min, max,
    runs} over repeats. ``tokens_per_s`` is end to end (prefill included); ``decode_tokens_per_s`` counts the
    tokens emitted after the prefill over the decode time, and ``speedup_vs_<baseline>`` is its ratio (§15.2:
    Σ tokens / Σ decode time); ``end_to_end_speedup_vs_<baseline>`` is the ratio of ``tokens_per_s``.
    """
    first = runs[0]
    out = {}
    for mode, result in first.items():
        prefill = [r[mode].prefill_time_s for r in runs]
        decode = [r[mode].decode_time_s for r in runs]
        total = [p + d for p, d in zip(prefill, decode, strict=True)]
        drafted = result.drafted > 0
        steps, blocks, drafting = result.decode_steps, result.draft_blocks, [r[mode].draft_time_s for r in runs]
        out[mode] = {
            "gen_mode": mode,
            "new_tokens": result.new_tokens,
            "forward_passes": result.forward_passes,
            "tau": result.new_tokens / result.row_passes if result.row_passes else 0.0,
            "acceptance_rate": result.accepted / result.drafted if drafted else None,
            "lookup_share": result.lookup_accepted / result.accepted if result.accepted else None,
            "per_position_acceptance": acceptance_by_position(result.accepted_at, result.reached) if drafted else [],
            "accepted_length_histogram": result.histogram if drafted else [],
            "drafted_per_step": result.drafted / max(sum(result.histogram), 1) if drafted else None,
            "prefill_time_s": _spread(prefill),
            "decode_time_s": _spread(decode),
            "total_time_s": _spread(total),
            "tokens_per_s": _ratio(result.new_tokens, statistics.median(total)),
            "decode_tokens_per_s": _ratio(result.new_tokens - num_prompts, statistics.median(decode)),
            "decode_ms_per_step": 1000 * statistics.median(decode) / steps if steps else None,
            "draft_ms_per_step": 1000 * statistics.median(drafting) / blocks if blocks and any(drafting) else None,
            "accuracy": result.correct / result.scored if result.scored else None,
            "scored": result.scored,
        }
    speed = {m: s["decode_tokens_per_s"] for m, s in out.items()}
    end_to_end = {m: s["tokens_per_s"] for m, s in out.items()}
    measured = [b for b in BASELINES if speed.get(b)]
    best = max(measured, key=lambda b: speed[b]) if measured else None
    for mode, summary in out.items():
        for base in BASELINES:
            if base in first:
                summary[f"speedup_vs_{base}"] = _ratio(speed[mode], speed[base])
                summary[f"end_to_end_speedup_vs_{base}"] = _ratio(end_to_end[mode], end_to_end[base])
        summary["best_baseline"] = best
        summary["speedup_vs_best_baseline"] = _ratio(speed[mode], speed[best]) if best else None
        speedup = summary.get("speedup_vs_ar")
        summary["overhead_c"] = summary["tau"] / speedup - 1 if speedup else None
        if "ar" in first:
            same = [a == b for a, b in zip(first[mode].outputs, first["ar"].outputs, strict=True)]
            summary["identical_to_ar"] = sum(same) / len(same) if same else None
        else:
            summary["identical_to_ar"] = None
    return out


def _spread(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def _ratio(a: float, b: float | None) -> float | None:
    if not a or not b or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def format_table(summaries: dict[str, dict], columns: Sequence[str]) -> str:
    """A plain-text table: one row per mode; a time column shows its median."""
    header = ["gen_mode", *columns]
    rows = [[mode] + [_fmt(_median(s.get(c))) for c in columns] for mode, s in summaries.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)


def _median(value):
    return value["median"] if isinstance(value, dict) and "median" in value else value


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
