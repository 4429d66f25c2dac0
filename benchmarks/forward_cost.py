"""Decoding cost on the embedded model: our `ar` vs transformers `generate`, and the cost of one cached
forward pass over k new tokens relative to k = 1 (the bound on any speedup on this machine; a draft tree of
N nodes costs about k = N + 1).

    python benchmarks/forward_cost.py [--model smollm2-135m] [--dtype float32] [--threads 2] [--repeats 5]
        [--linear_kernel {onednn,default}] [--attention {auto,exact,model}] [--ks 1,2,3,4,5,6,7,8,9]

``--attention``: the cached forwards' attention as decoding computes it (``auto``: exact for 16-bit floats,
tjdnet.attention), or forced exact / the model's own (what every dtype got before heads17p). ``--linear_kernel
default`` turns tjdnet's oneDNN linear layers (tjdnet.kernels) off to show what they change.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from transformers import DynamicCache

from tjdnet.attention import ATTENTION_CHOICES, exact_attention_in, resolve_attention
from tjdnet.data import Example, encode_prompt
from tjdnet.kernels import LINEAR_KERNEL_ENV, cpu_kernels
from tjdnet.machine import machine_info
from tjdnet.model import TJDModel

PROMPT = "Explain how a transformer language model generates text, step by step, in detail."


def forward_cost(model: TJDModel, context: int, ks: list[int], repeats: int, exact: bool) -> dict[int, float]:
    """Median seconds of one cached forward over k new tokens after a `context`-token prefix (with ``exact``
    attention and row-invariant products, as lossless 16-bit decoding runs them)."""
    ids = torch.randint(100, 1000, (1, context + max(ks)))
    times: dict[int, list[float]] = {k: [] for k in ks}
    with torch.inference_mode(), cpu_kernels(model), exact_attention_in(model.lm, exact):
        for _ in range(repeats):
            for k in ks:  # interleaved over k to cancel drift
                cache = DynamicCache(config=model.lm.config)
                model.hidden_states(ids[:, :context], cache=cache)
                start = time.perf_counter()
                hidden = model.hidden_states(ids[:, context : context + k], cache=cache)
                model.next_token_logits(hidden)
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def decode_speed(model: TJDModel, tokenizer, new_tokens: int, repeats: int) -> dict[str, float]:
    """Median tokens/s of greedy decoding: our KV-cached `ar` and transformers `generate`."""
    ids = torch.tensor([encode_prompt(tokenizer, Example(PROMPT, None))])
    results: dict[str, list[float]] = {"ar": [], "hf_generate": []}
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(ids, gen_mode="ar", max_new_tokens=new_tokens)
        results["ar"].append(out.stats.new_tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        with torch.inference_mode(), cpu_kernels(model):
            hf = model.lm.generate(
                ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
            )
        results["hf_generate"].append((hf.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--linear_kernel", choices=("onednn", "default"), default="onednn")
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto")
    parser.add_argument("--ks", default="1,2,3,4,5,6,7,8,9", help="new-token counts to time (1 is always timed)")
    args = parser.parse_args()
    os.environ[LINEAR_KERNEL_ENV] = args.linear_kernel  # read by every cpu_kernels block, generate's included
    torch.set_num_threads(args.threads)
    model, tokenizer = TJDModel.from_base(
        args.model, dtype=args.dtype, model_head="stp", horizon=1, rank=1, train_mode="head", loss_mode="draft"
    )
    model.eval()
    decode_speed(model, tokenizer, 8, 1)  # warm-up
    speed = decode_speed(model, tokenizer, args.new_tokens, args.repeats)
    ks = sorted({1, *(int(k) for k in args.ks.split(","))})
    exact = resolve_attention(args.attention, model.lm.dtype)
    cost = forward_cost(model, args.context, ks, args.repeats, exact)
    relative = {k: v / cost[1] for k, v in cost.items()}
    print(
        f"greedy, batch 1, {args.new_tokens} new tokens, {args.dtype}, {args.threads} threads, {args.linear_kernel}, "
        f"{'exact' if exact else 'model'} attention in the cached forwards"
    )
    print(f"  ours ar: {speed['ar']:.1f} tok/s   transformers generate: {speed['hf_generate']:.1f} tok/s")
    print(f"cached forward over k new tokens ({args.context}-token context), relative to k = 1:")
    print("  " + "  ".join(f"k={k}: {relative[k]:.2f}" for k in cost) + f"   (k=1: {cost[1] * 1000:.1f} ms)")
    print(
        json.dumps(
            {
                "args": vars(args),
                "machine": machine_info(),
                "tokens_per_s": speed,
                "forward_s": cost,
                "relative_cost": relative,
            }
        )
    )


if __name__ == "__main__":
    main()
