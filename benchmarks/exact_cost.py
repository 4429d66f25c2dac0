"""What lossless bfloat16 costs an `ar` step: milliseconds per token of plain KV-cached decoding on the embedded
SmolLM2-135M with the model's own attention, with exact attention and products of 1-32 rows (a one-row product
multiplied alone, as before the fix of issue 22), and with exact attention and 2-32 rows (the default).

    python benchmarks/exact_cost.py [--prompts 4] [--max_new_tokens 64] [--rounds 3] [--threads 2]

The settings are interleaved prompt by prompt, round after round, so host drift reaches all of them alike; it
prints the median ms/token of each and its ratio to the model's own attention.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from tjdnet import row_invariance
from tjdnet.data import encode_prompt
from tjdnet.data.sources import read_qa_jsonl
from tjdnet.model import TJDModel

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "dev.jsonl"
SETTINGS = {  # name: (attention, rows per product)
    "model attention": ("model", row_invariance.INVARIANT_ROWS),
    "exact, 1-32 rows": ("exact", (1, row_invariance.INVARIANT_ROWS[1])),
    "exact, 2-32 rows": ("exact", row_invariance.INVARIANT_ROWS),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = TJDModel.from_base(
        "smollm2-135m", dtype="bfloat16", model_head="cp", horizon=2, train_mode="head", loss_mode="draft"
    )
    model.eval()
    prompts = [torch.tensor([encode_prompt(tokenizer, e)]) for e in read_qa_jsonl(args.data)[: args.prompts]]
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    model.generate(prompts[0], gen_mode="ar", max_new_tokens=8)  # warm-up
    for _ in range(args.rounds):
        for ids in prompts:
            for name, (attention, rows) in SETTINGS.items():
                row_invariance.INVARIANT_ROWS = rows
                out = model.generate(ids, gen_mode="ar", attention=attention, max_new_tokens=args.max_new_tokens)
                times[name].append(1000 * out.stats.decode_time_s / max(1, out.stats.new_tokens - 1))
    base = statistics.median(times["model attention"])
    print(f"{'setting':<18} ms/token  vs model attention   ({len(prompts)} prompts x {args.rounds} rounds)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18} {median:8.2f}  {median / base:6.3f}x")


if __name__ == "__main__":
    main()
