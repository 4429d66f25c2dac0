"""Where a decoding step's time goes: milliseconds per step in each part of `ar`, chain and tree steps.

    python benchmarks/step_cost.py --head DIR --dataset gsm8k [--dtype bfloat16] [--modes ar,speculative,tree8,tree16]
        [--start 0] [--prompts 4] [--max_new_tokens 128] [--threads 2]

Wraps the parts of tjdnet.decoding.generate (backbone pass, next-token head, joint head, choosing a chain's
tokens (for `eagle`: its drafter steps), tree construction and mask, acceptance, KV-cache bookkeeping) with
timers and decodes GSM8K dev questions or MT-Bench first turns (benchmarks/real_prompts.py). ``treeN`` is the
head's N-node tree alone, ``treeN+L`` with lookup chains of up to L tokens grafted on (``tree_lookup``).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import time

import real_prompts

from tjdnet.decoding import mode_arguments
from tjdnet.heads.block import SequentialDraft
from tjdnet.model import TJDModel

GENERATE = importlib.import_module("tjdnet.decoding.generate")
PARTS = {
    "backbone": ("model", "features"),
    "next_token_head": ("model", "next_token_logits"),
    "joint_head": ("head_class", "forward"),
    "chain_draft": ("drafts", "draft"),  # choosing the chain's tokens from the head's distribution
    "tree": ("generate", "build_draft_tree"),
    "lookup_graft": ("generate", "graft_chains"),  # lookup chains merged into the tree (treeN+L)
    "tree_mask": ("generate", "tree_attention_mask"),
    "accept": ("generate", "greedy_accept"),
    "accept_tree": ("generate", "greedy_accept_tree"),
    "kv_keep_path": ("rows", "keep_path"),
    "kv_keep_first": ("rows", "keep_first"),
}


def instrument(model: TJDModel, totals: dict[str, float]) -> None:
    owners = {"model": model, "head_class": type(model.head), "generate": GENERATE, "rows": GENERATE._Rows}
    owners["drafts"] = SequentialDraft
    for label, (owner, name) in PARTS.items():
        target = owners[owner]
        inner = getattr(target, name)

        def timed(*args, _inner=inner, _label=label, **kwargs):
            start = time.perf_counter()
            result = _inner(*args, **kwargs)
            totals[_label] += time.perf_counter() - start
            return result

        setattr(target, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_prompts.add_arguments(parser)
    parser.set_defaults(prompts=4)
    parser.add_argument(
        "--modes", default="ar,speculative,tree8,tree16", help="named modes; treeN: a tree of N, treeN+L: with lookup"
    )
    args = parser.parse_args()
    model, tokenizer, prompts = real_prompts.load(args)
    totals: dict[str, float] = collections.defaultdict(float)
    instrument(model, totals)
    modes = {}
    for mode in args.modes.split(","):
        if mode.startswith("tree"):
            nodes, _, lookup = mode[4:].partition("+")
            modes[mode] = mode_arguments("speculative_tree", int(nodes), tree_lookup=int(lookup or 0))
        else:
            modes[mode] = mode_arguments(mode)
    model.generate(prompts[0], max_new_tokens=8)  # warm-up
    report = {}
    for mode, kwargs in modes.items():
        totals.clear()
        steps = tokens = passes = 0
        decode_s = prefill_s = 0.0
        for ids in prompts:
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id, **kwargs)
            stats = out.stats
            steps, tokens, passes = steps + stats.decode_steps, tokens + stats.new_tokens, passes + stats.forward_passes
            decode_s, prefill_s = decode_s + stats.decode_time_s, prefill_s + stats.prefill_time_s
        totals["backbone"] -= prefill_s  # per decode step: the prompt's pass is left out
        parts = {k: round(1000 * v / steps, 2) for k, v in totals.items() if v}
        parts["total"] = round(1000 * decode_s / steps, 2)
        report[mode] = {"tau": tokens / passes, "decode_tok_s": tokens / decode_s, "ms_per_step": parts}
        print(f"{mode}: tau {report[mode]['tau']:.2f}, {report[mode]['decode_tok_s']:.1f} tok/s, ms per step {parts}")
    print(json.dumps({"args": vars(args), "report": report}))


if __name__ == "__main__":
    main()
