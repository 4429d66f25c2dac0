"""Generate answers for a list of examples with several decoding modes, interleaved, and score them.

Shared by ``tjdnet test`` and the benchmarks: per mode it sums tokens, passes and time over batches,
so tau and tokens/s are ratios of sums (the protocol of ``anchors.md`` §15.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tjdnet.data import Example, collate, encode_prompt, is_correct
from tjdnet.decoding import GenerationOutput, GenerationStats
from tjdnet.decoding.stats import acceptance_by_position

logger = logging.getLogger(__name__)


@dataclass
class ModeResult:
    """Totals of one decoding mode over all examples."""

    gen_mode: str
    new_tokens: int = 0
    forward_passes: int = 0
    row_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0
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
        self.prefill_time_s += stats.prefill_time_s
        self.decode_time_s += stats.decode_time_s
        self.reached = _add_lists(self.reached, stats.reached)
        self.accepted_at = _add_lists(self.accepted_at, stats.accepted_at)
        self.histogram = _add_lists(self.histogram, stats.accepted_length_histogram)

    @property
    def tau(self) -> float:
        return self.new_tokens / self.row_passes if self.row_passes else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens; None for modes that draft nothing."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_s(self) -> float:
        total = self.prefill_time_s + self.decode_time_s
        return self.new_tokens / total if total else 0.0

    @property
    def accuracy(self) -> float | None:
        """Fraction of scored answers that are correct; None when the dataset has no answers."""
        return self.correct / self.scored if self.scored else None

    def summary(self) -> dict:
        return {
            "gen_mode": self.gen_mode,
            "new_tokens": self.new_tokens,
            "forward_passes": self.forward_passes,
            "tau": self.tau,
            "acceptance_rate": self.acceptance_rate,
            "per_position_acceptance": acceptance_by_position(self.accepted_at, self.reached),
            "accepted_length_histogram": self.histogram,
            "prefill_time_s": self.prefill_time_s,
            "decode_time_s": self.decode_time_s,
            "tokens_per_s": self.tokens_per_s,
            "accuracy": self.accuracy,
        }


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


Generator = Callable[[torch.Tensor, torch.Tensor], GenerationOutput]


def prompt_batches(tokenizer, examples: Sequence[Example], batch_size: int, device: str = "cpu"):
    """Yield (examples, input_ids (B, T), attention_mask (B, T)) with left padding."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        encoded = [encode_prompt(tokenizer, e) for e in chunk]
        rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in encoded]
        batch = collate(rows, tokenizer.pad_token_id, padding_side="left")
        yield chunk, batch["input_ids"].to(device), batch["attention_mask"].to(device)


def evaluate_modes(
    generators: dict[str, Generator],
    tokenizer,
    examples: Sequence[Example],
    batch_size: int = 1,
    scored: bool = True,
    warmup: bool = True,
    device: str = "cpu",
) -> dict[str, ModeResult]:
    """Run every generator on every batch (modes interleaved per batch) and total the results.

    Args:
        generators: mode name -> function (input_ids, attention_mask) -> GenerationOutput.
        scored: compare the decoded answers with the examples' answers (``####`` parsing).
    """
    results = {mode: ModeResult(mode) for mode in generators}
    batches = list(prompt_batches(tokenizer, examples, batch_size, device))
    if warmup and batches:
        for generate in generators.values():
            _, ids, mask = batches[0]
            generate(ids[:1], mask[:1])
    for i, (chunk, ids, mask) in enumerate(batches):
        for mode, generate in generators.items():
            out = generate(ids, mask)
            result = results[mode]
            result.add(out.stats)
            for example, tokens in zip(chunk, out.new_tokens, strict=True):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                result.outputs.append(tokens)
                result.texts.append(text)
                if scored and example.answer is not None:
                    result.scored += 1
                    result.correct += int(is_correct(text, example.answer))
        logger.info("evaluated %d/%d prompts", min((i + 1) * batch_size, len(examples)), len(examples))
    return results


def compare_to(results: dict[str, ModeResult], baseline: str = "ar") -> dict[str, dict]:
    """Summaries with ``speedup_vs_<baseline>`` and ``identical_to_<baseline>`` (fraction of prompts)."""
    base = results.get(baseline)
    out = {}
    for mode, result in results.items():
        summary = result.summary()
        if base is not None:
            summary[f"speedup_vs_{baseline}"] = result.tokens_per_s / base.tokens_per_s if base.tokens_per_s else None
            same = [a == b for a, b in zip(result.outputs, base.outputs, strict=True)]
            summary[f"identical_to_{baseline}"] = sum(same) / len(same) if same else None
        out[mode] = summary
    return out


def format_table(summaries: dict[str, dict], columns: Sequence[str]) -> str:
    """A plain-text table: one row per mode."""
    header = ["gen_mode", *columns]
    rows = [[mode] + [_fmt(s.get(c)) for c in columns] for mode, s in summaries.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
