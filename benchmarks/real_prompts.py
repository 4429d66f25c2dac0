"""What the real-prompt benchmark scripts share: a trained head and a slice of MT-Bench first turns or GSM8K dev
questions (the test split of `tjdnet bench --data.dataset`, from ../shared/data or --path), formatted as `tjdnet
bench` formats them."""

from __future__ import annotations

import argparse

import torch

from tjdnet.data import encode_prompt
from tjdnet.data.registry import load_examples
from tjdnet.loading import load_tokenizer
from tjdnet.model import TJDModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--head, --dataset, --path, --start, --prompts, --max_new_tokens, --dtype, --threads."""
    parser.add_argument("--head", required=True, help="a directory written by TJDModel.save_pretrained")
    parser.add_argument("--dataset", choices=["gsm8k", "mt_bench"], required=True)
    parser.add_argument("--path", help="the dataset's directory or file (default: ../shared/data/<dataset>)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)


def load(args: argparse.Namespace) -> tuple[TJDModel, object, list[torch.Tensor]]:
    """(the head's model in eval mode, its tokenizer, the prompts [start, start + prompts) as (1, L) ids), with
    torch set to ``args.threads`` threads."""
    torch.set_num_threads(args.threads)
    model = TJDModel.from_pretrained(args.head, dtype=args.dtype).eval()
    tokenizer = load_tokenizer(model.config.model)
    examples = load_examples(args.dataset, "test", args.path or f"../shared/data/{args.dataset}")
    chosen = examples[args.start : args.start + args.prompts]
    return model, tokenizer, [torch.tensor([encode_prompt(tokenizer, e)]) for e in chosen]
