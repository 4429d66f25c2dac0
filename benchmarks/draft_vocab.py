"""Give a saved head a draft vocabulary: the S most frequent answer tokens of its training data (plus EOS).

    python benchmarks/draft_vocab.py --head DIR --data answers.jsonl[,more.jsonl] --size 8192

``--data``: JSON lines with an ``answer`` field (e.g. the self-distilled caches under experiments/selfdistill).
The head directory is rewritten atomically with ``draft_vocab.json`` (see tjdnet.heads.vocab); ``--size 0``
removes it.
"""

from __future__ import annotations

import argparse
import json

from tjdnet.heads.vocab import frequent_tokens
from tjdnet.model import TJDModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, help="a directory written by TJDModel.save_pretrained")
    parser.add_argument("--data", required=True, help="JSON-lines files with an 'answer' field, comma-separated")
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    model, tokenizer = TJDModel.from_pretrained(args.head)
    ids = None
    if args.size:
        answers = [json.loads(line)["answer"] for path in args.data.split(",") for line in open(path) if line.strip()]
        tokens = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        ids = frequent_tokens(tokens, args.size, model.vocab_size, keep=[tokenizer.eos_token_id])
    model.head.set_draft_vocab(ids)
    model.save_pretrained(args.head)
    print(f"{args.head}: draft vocabulary of {args.size or model.vocab_size} tokens")


if __name__ == "__main__":
    main()
