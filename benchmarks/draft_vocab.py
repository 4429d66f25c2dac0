"""Give a saved head a draft vocabulary: the S most frequent answer tokens of its training data (plus EOS).

    python benchmarks/draft_vocab.py --head DIR --data answers.jsonl[,more.jsonl] --size 8192

``--data``: question/answer JSON lines (e.g. the self-distilled caches under experiments/selfdistill), tokenised
as training tokenises them (``tjdnet.data.encode_example``: chat template, answer + EOS, cut to ``--seq_len``).
The head directory is rewritten atomically with ``draft_vocab.json`` (see tjdnet.heads.vocab); ``--size 0``
removes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tjdnet.data import answer_tokens, encode_example
from tjdnet.data.sources import read_qa_jsonl
from tjdnet.heads.vocab import frequent_tokens
from tjdnet.loading import load_tokenizer
from tjdnet.model import TJDModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, help="a directory written by TJDModel.save_pretrained")
    parser.add_argument("--data", required=True, help="question/answer JSON-lines files, comma-separated")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--seq_len", type=int, default=512, help="as in training (key_experiment.py --seq_len)")
    args = parser.parse_args()
    model = TJDModel.from_pretrained(args.head)
    tokenizer = load_tokenizer(model.config.model)
    ids = None
    if args.size:
        examples = [e for path in args.data.split(",") for e in read_qa_jsonl(Path(path))]
        answers = [answer_tokens(encode_example(tokenizer, e, args.seq_len)) for e in examples]
        ids = frequent_tokens(answers, args.size, model.vocab_size, keep=[tokenizer.eos_token_id])
    model.head.set_draft_vocab(ids)
    model.save_pretrained(args.head)
    print(f"{args.head}: draft vocabulary of {args.size or model.vocab_size} tokens")


if __name__ == "__main__":
    main()
