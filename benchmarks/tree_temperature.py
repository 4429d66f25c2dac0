"""Tokens per pass of `speculative_tree` against the tree temperature, on a slice of real prompts.

    python benchmarks/tree_temperature.py --head DIR --dataset mt_bench [--start 30] [--prompts 40]
        [--temperatures 1.0,1.1,1.2,1.3] [--tree_nodes 8] [--tree_topk 4] [--dtype bfloat16] [--threads 2]

Greedy decoding is deterministic, so tau (new tokens per verifying step; `bench` also counts the prompt's pass)
compares across temperatures without repeats or interleaving; the output is `ar`'s at every temperature.
Prompts: MT-Bench first turns or GSM8K dev questions (the test split of `tjdnet bench --data.dataset`, from
../shared/data or --path), formatted as `tjdnet bench` formats them.
"""

from __future__ import annotations

import argparse
import json

import torch

from tjdnet.data import encode_prompt
from tjdnet.data.registry import load_examples
from tjdnet.decoding import mode_arguments
from tjdnet.loading import load_tokenizer
from tjdnet.model import TJDModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, help="a directory written by TJDModel.save_pretrained")
    parser.add_argument("--dataset", choices=["gsm8k", "mt_bench"], required=True)
    parser.add_argument("--path", help="the dataset's directory or file (default: ../shared/data/<dataset>)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--temperatures", default="1.0,1.1,1.2,1.3")
    parser.add_argument("--tree_nodes", type=int, default=8)
    parser.add_argument("--tree_topk", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = TJDModel.from_pretrained(args.head, dtype=args.dtype).eval()
    tokenizer = load_tokenizer(model.config.model)
    examples = load_examples(args.dataset, "test", args.path or f"../shared/data/{args.dataset}")
    prompts = [torch.tensor([encode_prompt(tokenizer, e)]) for e in examples[args.start : args.start + args.prompts]]
    report = {}
    for temperature in (float(t) for t in args.temperatures.split(",")):
        kwargs = mode_arguments("speculative_tree", args.tree_nodes, args.tree_topk, tree_temperature=temperature)
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
