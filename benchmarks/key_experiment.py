"""The key experiment: joint heads vs independent heads on the embedded model, trained on its own answers.

The product recipe is ``tjdnet distill`` + ``tjdnet fit-heads`` + ``tjdnet bench --compare`` (docs/cli.md); this
script, which does the same in one process, is kept to reproduce the earlier tables of benchmarks/README.md.

1. Self-distil GSM8K-train questions with the base model (greedy, cached under ``experiments/selfdistill``,
   the same cache ``tjdnet fit --data.dataset selfdistill`` uses); with ``--chat_prompts N``, also N chat
   prompts the model writes itself (``tjdnet.distill.prompts``), answered the same way (``--teacher_dtype
   bfloat16``: by the model in bfloat16, as it will decode); with ``--opener_prompts N``, N more whose user
   message starts with one of ``REQUEST_OPENERS`` (writing, role-play, coding, ... requests).
2. Run the frozen backbone once over them and keep the answer positions (``head`` mode: every head would see
   exactly these hidden states).
3. Train every head config on the same positions, in the same order, for the same steps
   (``tjdnet.training.head_features``; ``--train_in_draft_vocab``: in its draft vocabulary); save each with
   ``save_pretrained`` and report its held-out NLL.
4. Decode GSM8K dev and MT-Bench prompts with our ``ar`` and every head's ``speculative`` mode (and, with
   ``--tree_nodes N``, its ``speculative_tree`` mode), all interleaved per prompt in one process on the shared
   backbone (the engine of ``tjdnet test`` / ``bench``, ``tjdnet.evaluation``); write one
   ``tjdnet bench``-format JSON per head and dataset, so ``tjdnet bench-plot`` draws them.

    HF_HUB_OFFLINE=1 python benchmarks/key_experiment.py --gsm8k ../shared/data/gsm8k \\
        --mt_bench ../shared/data/mt_bench --out_dir benchmarks/results/key
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from functools import partial
from pathlib import Path

import torch

from tjdnet.commands.bench import format_bench_table
from tjdnet.data import Example, answer_tokens, encode_example, load_examples
from tjdnet.decoding import DEFAULT_TREE_TOPK, mode_arguments
from tjdnet.distill import REQUEST_OPENERS, base_model_answerer, distill_settings, sample_user_prompts, self_distill
from tjdnet.evaluation import run_modes
from tjdnet.files import write_json
from tjdnet.heads.vocab import frequent_tokens
from tjdnet.loading import load_causal_lm
from tjdnet.machine import machine_info
from tjdnet.model import TJDConfig, TJDModel
from tjdnet.runs import experiments_dir
from tjdnet.training.head_features import collect_features, evaluate_head, fit_head

logger = logging.getLogger("key_experiment")

DEFAULT_CONFIGS = "multihead:1:2,multihead:1:4,cp:2:2,cp:2:4,cp:8:2,cp:8:4,mps:2:2,mps:2:4,mps:8:2,mps:8:4"


def parse_configs(value: str) -> list[tuple[str, int, int, bool]]:
    """``head:rank:horizon[:tc],...`` -> [(head, rank, horizon, token_conditioned)]."""
    configs = []
    for item in value.split(","):
        parts = item.split(":")
        well_formed = len(parts) in (3, 4) and parts[1].isdigit() and parts[2].isdigit() and parts[3:] in ([], ["tc"])
        if not well_formed:
            raise SystemExit(f"--configs item {item!r} is not head:rank:horizon[:tc] (e.g. cp:8:4 or cp:8:4:tc)")
        configs.append((parts[0], int(parts[1]), int(parts[2]), parts[3:] == ["tc"]))
    return configs


def results_of(results: dict[str, dict], name: str) -> dict[str, dict]:
    """One head's results in ``tjdnet bench`` form: ``ar``, ``speculative`` and, if run, ``speculative_tree``."""
    out = {"ar": results["ar"], "speculative": results[name]}
    if f"{name}/tree" in results:
        out["speculative_tree"] = results[f"{name}/tree"]
    return out


def distill(args: argparse.Namespace, teacher: TJDModel, tokenizer) -> list[Example]:
    """GSM8K-train questions and self-written chat prompts (``--chat_prompts``, ``--opener_prompts``) with
    ``teacher``'s answers."""
    settings = distill_settings(args.model, args.distill_max_new_tokens, args.teacher_dtype)
    questions = load_examples("gsm8k", "train", args.gsm8k, args.train_questions, args.seed)
    answer = base_model_answerer(teacher, tokenizer, args.distill_max_new_tokens, args.distill_batch_size)
    cache = experiments_dir() / "selfdistill"
    distilled = self_distill(questions, answer, cache, args.distill_batch_size, settings)
    for n, openers in ((args.chat_prompts, ()), (args.opener_prompts, REQUEST_OPENERS)):
        if n:
            prompts = sample_user_prompts(
                teacher, tokenizer, n, args.distill_batch_size, seed=args.seed, cache_dir=cache, openers=openers
            )
            chat = [Example(p, None) for p in prompts]
            distilled += self_distill(chat, answer, cache, args.distill_batch_size, settings)
    return distilled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--gsm8k", required=True, help="directory of GSM8K train / test jsonl")
    parser.add_argument("--mt_bench", required=True, help="MT-Bench question.jsonl or its directory")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="head:rank:horizon, comma-separated")
    parser.add_argument("--train_questions", type=int, default=64)
    parser.add_argument("--chat_prompts", type=int, default=0, help="self-written chat prompts added to the data")
    parser.add_argument(
        "--opener_prompts", type=int, default=0, help="self-written chat prompts that start with a request opener"
    )
    parser.add_argument("--distill_max_new_tokens", type=int, default=128)
    parser.add_argument("--distill_batch_size", type=int, default=8)
    parser.add_argument(
        "--teacher_dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="of the frozen model while it writes the prompts and answers and computes the hidden states the "
        "heads train on (bfloat16: ~4x faster on AMX CPUs; the heads train in float32 either way)",
    )
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--held_out", type=int, default=512, help="positions kept for the held-out NLL")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch_positions", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden_dim", type=int, default=64)
    parser.add_argument("--num_prompts", type=int, default=8, help="per benchmark dataset")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tree_nodes", type=int, default=0, help="also bench speculative_tree with this tree size")
    parser.add_argument("--tree_topk", type=int, default=DEFAULT_TREE_TOPK)
    parser.add_argument("--draft_vocab", type=int, default=0, help="draft from the S most frequent answer tokens")
    parser.add_argument(
        "--train_in_draft_vocab",
        action="store_true",
        help="train the distribution drafted from the --draft_vocab tokens (loss ~S/V as costly)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="of decoding (training is float32)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", default="benchmarks/results/key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.num_threads)
    out_dir = Path(args.out_dir)
    configs = parse_configs(args.configs)

    if args.train_in_draft_vocab and not args.draft_vocab:
        raise SystemExit("--train_in_draft_vocab needs --draft_vocab S")
    lm, tokenizer = load_causal_lm(args.model, dtype="float32")
    base_config = TJDConfig(model=args.model, model_head="stp", horizon=1, rank=1, train_mode="head", loss_mode="draft")
    base = TJDModel(lm, base_config).eval()
    teacher = base
    if args.teacher_dtype != "float32":
        teacher = TJDModel(load_causal_lm(args.model, dtype=args.teacher_dtype)[0], base_config).eval()

    t0 = time.perf_counter()
    distilled = distill(args, teacher, tokenizer)
    distill_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = [encode_example(tokenizer, e, args.seq_len) for e in distilled]
    max_horizon = max(c[2] for c in configs)
    features = collect_features(teacher, rows, max_horizon, tokenizer.pad_token_id)
    del teacher
    train, held_out = features.split(args.held_out, args.seed)
    features_s = time.perf_counter() - t0
    logger.info("%d answer positions, %d held out, in %.0f s", len(features), len(held_out), features_s)

    draft_vocab = None
    if args.draft_vocab:
        answers = [answer_tokens(r) for r in rows]
        draft_vocab = frequent_tokens(answers, args.draft_vocab, base.vocab_size, keep=[tokenizer.eos_token_id])
    models: dict[str, TJDModel] = {}
    training: dict[str, dict] = {}
    for head, rank, horizon, token_conditioned in configs:
        name = f"{head}_r{rank}_h{horizon}" + ("_tc" if token_conditioned else "")
        config = TJDConfig(
            model=args.model,
            model_head=head,
            horizon=horizon,
            rank=rank,
            hidden_dim=args.hidden_dim,
            train_mode="head",
            token_conditioned=token_conditioned,
            loss_mode="draft",
        )
        torch.manual_seed(args.seed)
        model = TJDModel(lm, config)
        model.head.set_draft_vocab(draft_vocab)
        in_draft = args.train_in_draft_vocab
        nll_before = evaluate_head(model, held_out, draft=in_draft)
        t0 = time.perf_counter()
        losses = fit_head(model, train, args.steps, args.batch_positions, args.lr, seed=args.seed, draft=in_draft)
        fit_s = time.perf_counter() - t0
        nll_after = evaluate_head(model, held_out, draft=in_draft)
        model.save_pretrained(out_dir / "heads" / name)
        models[name] = model.eval()
        training[name] = {
            "head": head,
            "rank": rank,
            "horizon": horizon,
            "token_conditioned": token_conditioned,
            "parameters": model.head.num_parameters(),
            "held_out_nll_before": nll_before,
            "held_out_nll_after": nll_after,
            "train_loss_first": losses[0],
            "train_loss_last": losses[-1],
            "fit_s": fit_s,
        }
        logger.info("%s: held-out NLL/token %.3f -> %.3f in %.0f s", name, nll_before, nll_after, fit_s)

    description = {
        "model": args.model,
        "distilled_questions": len(distilled),
        "chat_prompts": args.chat_prompts,
        "opener_prompts": args.opener_prompts,
        "answer_positions": len(features),
        "train_positions": len(train),
        "held_out_positions": len(held_out),
        "distill_s": distill_s,
        "features_s": features_s,
        "args": vars(args),
        "machine": machine_info(),
        "training": training,
    }
    write_json(out_dir / "training.json", description)

    lm.to(getattr(torch, args.dtype))
    for model in models.values():
        model.head.to(getattr(torch, args.dtype))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    decode = partial(dict, max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    for dataset, path in (("gsm8k", args.gsm8k), ("mt_bench", args.mt_bench)):
        examples = load_examples(dataset, "test", path, args.num_prompts, args.seed)
        generators = {"ar": partial(base.generate, gen_mode="ar", **decode())}
        generators |= {n: partial(m.generate, gen_mode="speculative", **decode()) for n, m in models.items()}
        if args.tree_nodes:
            tree = mode_arguments("speculative_tree", args.tree_nodes, args.tree_topk, tree_lookup=0)
            generators |= {f"{n}/tree": partial(m.generate, **tree, **decode()) for n, m in models.items()}
        with torch.inference_mode():
            evaluation = run_modes(
                generators, base.backbone, tokenizer, examples, 1, args.repeats, args.warmup, dataset == "gsm8k"
            )
        results = evaluation.summaries()
        for name, info in training.items():
            payload = {
                "checkpoint": str(out_dir / "heads" / name),
                "model": {
                    "model": args.model,
                    "model_head": info["head"],
                    **{k: info[k] for k in ("rank", "horizon", "token_conditioned")},
                },
                "dataset": dataset,
                "split": "test",
                "num_prompts": len(examples),
                "args": {**vars(args), "batch_size": 1, "gen_modes": list(results_of(results, name))},
                "dtype": args.dtype,
                "machine": machine_info(),
                "training": info,
                "results": results_of(results, name),
                "skipped": {},
            }
            write_json(out_dir / f"{dataset}_{name}.json", payload)
        table = {"results": results}
        print(f"\n== {dataset}: {len(examples)} prompts, {args.max_new_tokens} new tokens, batch 1, {args.dtype} ==")
        print(format_bench_table(table))
    print(json.dumps({n: round(t["held_out_nll_after"], 3) for n, t in training.items()}, indent=1))


if __name__ == "__main__":
    main()
