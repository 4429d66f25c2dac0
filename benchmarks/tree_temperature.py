"""Tokens per pass of `speculative_tree` against the tree temperature, on a slice of real prompts.

    python benchmarks/tree_temperature.py --head DIR --dataset mt_bench [--start 30] [--prompts 40]
        [--temperatures 1.0,1.1,1.2,1.3] [--tree_nodes 8] [--tree_topk 4] [--dtype bfloat16] [--threads 2]

(The head's trees alone: no lookup chains.)

Greedy decoding is deterministic, so tau (new tokens per verifying step; `bench` also counts the prompt's pass)
compares across temperatures without repeats or interleaving; the output is `ar`'s at every temperature.
Prompts: MT-Bench first turns or GSM8K dev questions (the test split of `tjdnet bench --data.dataset`, from
../shared/data or --path), formatted as `tjdnet bench` formats them.
"""

from __future__ import annotations

import argparse
import json

import real_prompts

from tjdnet.decoding import mode_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_prompts.add_arguments(parser)
    parser.add_argument("--temperatures", default="1.0,1.1,1.2,1.3")
    parser.add_argument("--tree_nodes", type=int, default=8)
    parser.add_argument("--tree_topk", type=int, default=4)
    args = parser.parse_args()
    model, _, prompts = real_prompts.load(args)
    report = {}
    for temperature in (float(t) for t in args.temperatures.split(",")):
        kwargs = mode_arguments(
            "speculative_tree", args.tree_nodes, args.tree_topk, tree_temperature=temperature, tree_lookup=0
        )
        tokens = passes = 0
        for ids in prompts:
            stats = model.generate(ids, max_new_tokens=args.max_new_tokens, **kwargs).stats
            tokens += sum(len(row.accepted_lengths) + sum(row.accepted_lengths) for row in stats.rows)
            passes += sum(len(row.accepted_lengths) for row in stats.rows)
        report[temperature] = tokens / passes
        print(f"{args.dataset} [{args.start}, {args.start + len(prompts)}) T={temperature}: tau {tokens / passes:.4f}")
    print(json.dumps({"args": vars(args), "tau": report}))


if __name__ == "__main__":
    main()
