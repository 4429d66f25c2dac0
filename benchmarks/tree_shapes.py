"""Draft tree shapes on the clock: `ar` and trees of several sizes, interleaved prompt by prompt.

    python benchmarks/tree_shapes.py --head DIR --dataset gsm8k [--prompts 30] [--shapes 8x4,12x4,16x4]
        [--auto 24x4] [--max_new_tokens 128] [--dtype bfloat16] [--threads 2]

A shape NxK is `speculative_tree` with N nodes and K prefixes expanded per depth, the head's tree alone; NxK+L also
grafts lookup chains of up to L tokens onto it (``tree_lookup``); ``--auto NxK[+L]`` adds `speculative_tree_auto`
with at most N nodes. Each prompt is decoded once by every setting, in alternating order,
so host drift reaches them alike; the output is `ar`'s everywhere. Printed per setting: tau (tokens per pass, the
prompt's included, as `tjdnet bench` counts it), decode tokens/s, speedup over `ar`, ms per step and the part of it
spent drafting. Prompts: MT-Bench first turns or GSM8K dev questions (../shared/data or --path), formatted as
`tjdnet bench` formats them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import real_prompts

from tjdnet.decoding import mode_arguments


@dataclass
class Totals:
    tokens: int = 0
    passes: int = 0
    steps: int = 0
    seconds: float = 0.0
    draft_seconds: float = 0.0


def _shape(text: str) -> tuple[int, int, int]:
    """(nodes, per depth, lookup tokens) of an ``NxK`` or ``NxK+L`` shape."""
    tree, _, lookup = text.partition("+")
    nodes, topk = (int(v) for v in tree.split("x"))
    return nodes, topk, int(lookup or 0)


def settings(shapes: str, auto: str | None) -> dict[str, dict]:
    """Named generate() keyword arguments: `ar`, then one per tree shape."""
    named = {"ar": mode_arguments("ar")}
    for shape in shapes.split(",") if shapes else []:
        nodes, topk, lookup = _shape(shape)
        named[f"tree {shape}"] = mode_arguments("speculative_tree", nodes, topk, tree_lookup=lookup)
    if auto:
        nodes, topk, lookup = _shape(auto)
        named[f"auto {auto}"] = mode_arguments(
            "speculative_tree_auto", tree_topk=topk, tree_max_nodes=nodes, tree_lookup=lookup
        )
    return named


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_prompts.add_arguments(parser)
    parser.add_argument("--shapes", default="8x4,12x4,16x4", help="comma-separated NxK or NxK+L tree shapes")
    parser.add_argument("--auto", help="NxK: also a tree of at most N nodes sized per step")
    args = parser.parse_args()
    model, tokenizer, prompts = real_prompts.load(args)
    named = settings(args.shapes, args.auto)
    for kwargs in named.values():  # warm-up, and the sized tree's pass costs measured before any timing
        model.generate(prompts[0], max_new_tokens=16, **kwargs)
    totals = {name: Totals() for name in named}
    for i, ids in enumerate(prompts):
        for name in list(named) if i % 2 == 0 else list(named)[::-1]:
            stats = model.generate(
                ids, max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id, **named[name]
            ).stats
            total = totals[name]
            total.tokens += stats.new_tokens
            total.passes += stats.forward_passes
            total.steps += stats.decode_steps
            total.seconds += stats.decode_time_s
            total.draft_seconds += stats.draft_time_s
    ar_rate = totals["ar"].tokens / totals["ar"].seconds
    report = {}
    for name, total in totals.items():
        rate = total.tokens / total.seconds
        report[name] = {
            "tau": total.tokens / total.passes,
            "decode_tokens_per_s": rate,
            "speedup_vs_ar": rate / ar_rate,
            "ms_per_step": 1000 * total.seconds / total.steps,
            "draft_ms_per_step": 1000 * total.draft_seconds / total.steps,
        }
        row = report[name]
        print(
            f"{args.dataset} {name:12s} tau {row['tau']:.3f}  {rate:6.2f} tok/s  {row['speedup_vs_ar']:.3f}x  "
            f"{row['ms_per_step']:.2f} ms/step ({row['draft_ms_per_step']:.2f} drafting)"
        )
    print(json.dumps({"args": vars(args), "report": report}))


if __name__ == "__main__":
    main()
