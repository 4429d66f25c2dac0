"""Where a decoding step's time goes: milliseconds per step in each part of `ar`, chain and tree steps.

    python benchmarks/step_cost.py --head DIR [--dtype bfloat16] [--modes ar,speculative,tree8,tree16]
        [--prompts 4] [--max_new_tokens 128] [--threads 2]

Wraps the parts of tjdnet.decoding.generate (backbone pass, next-token head, joint head, choosing a chain's
tokens (for `eagle`: its drafter steps), tree construction and mask, acceptance, KV-cache bookkeeping) with
timers and decodes GSM8K dev questions from ../shared/data.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import time

import torch

from tjdnet.data import Example, encode_prompt
from tjdnet.decoding import mode_arguments
from tjdnet.heads.block import SequentialDraft
from tjdnet.loading import load_tokenizer
from tjdnet.model import TJDModel

GENERATE = importlib.import_module("tjdnet.decoding.generate")
PARTS = {
    "backbone": ("model", "features"),
    "next_token_head": ("model", "next_token_logits"),
    "joint_head": ("head_class", "forward"),
    "chain_draft": ("drafts", "draft"),  # choosing the chain's tokens from the head's distribution
    "tree": ("generate", "build_draft_tree"),
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
    parser.add_argument("--head", required=True, help="a directory written by TJDModel.save_pretrained")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--modes", default="ar,speculative,tree8,tree16", help="named modes; treeN: a tree of N")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default="../shared/data/gsm8k/dev.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = TJDModel.from_pretrained(args.head, dtype=args.dtype)
    tokenizer = load_tokenizer(model.config.model)
    model.eval()
    totals: dict[str, float] = collections.defaultdict(float)
    instrument(model, totals)
    questions = [json.loads(line)["question"] for line in open(args.data)][: args.prompts]
    prompts = [torch.tensor([encode_prompt(tokenizer, Example(q, None))]) for q in questions]
    modes = {}
    for mode in args.modes.split(","):
        modes[mode] = mode_arguments(*(("speculative_tree", int(mode[4:])) if mode.startswith("tree") else (mode,)))
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
