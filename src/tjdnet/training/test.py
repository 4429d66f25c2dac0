"""``tjdnet test``: answer a dataset's test split with each decoding mode and report accuracy, tau,
tokens/s and speedup over ``ar`` — as a table on the terminal and as JSON in the run directory."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from jsonargparse import ArgumentParser

from tjdnet.data import DATASETS, load_examples
from tjdnet.decoding import DEFAULT_TREE_NODES, DEFAULT_TREE_TOPK, NAMED_MODES, add_decoding_arguments, mode_arguments
from tjdnet.evaluation import compare_to, evaluate_modes, format_table
from tjdnet.files import write_json
from tjdnet.machine import machine_info
from tjdnet.training.restore import load_trained

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("accuracy", "tau", "acceptance_rate", "tokens_per_s", "speedup_vs_ar", "identical_to_ar")


def parse_gen_modes(value: str | list[str]) -> list[str]:
    modes = [m.strip() for m in value.split(",")] if isinstance(value, str) else list(value)
    for mode in modes:
        if mode not in NAMED_MODES:
            raise ValueError(f"unknown gen_mode {mode!r}; allowed: {', '.join(NAMED_MODES)}")
    if not modes:
        raise ValueError("--gen_modes is empty; give one or more of " + ", ".join(NAMED_MODES))
    return modes


def run_test(
    ckpt_path: str | Path,
    gen_modes: str | list[str] = "ar,speculative",
    max_new_tokens: int = 128,
    batch_size: int = 1,
    data_overrides: dict | None = None,
    dtype: str | None = None,
    horizon: int | None = None,
    out: str | Path | None = None,
    merge_lora: bool = True,
    tree_nodes: int = DEFAULT_TREE_NODES,
    tree_topk: int = DEFAULT_TREE_TOPK,
    attention: str = "auto",
) -> dict:
    """Evaluate a checkpoint; returns the JSON payload (also written to ``out`` or <run dir>/test_results.json)."""
    modes = parse_gen_modes(gen_modes)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not allowed; use an integer >= 1")
    ckpt_path = Path(ckpt_path)
    module, data_hparams = load_trained(ckpt_path, dtype)
    data = {**data_hparams, **{k: v for k, v in (data_overrides or {}).items() if v is not None}}
    dataset = data.get("source") if data.get("dataset") == "selfdistill" else data.get("dataset", "stemp")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    split = "test" if "test" in DATASETS[dataset].splits else DATASETS[dataset].splits[-1]
    examples = load_examples(
        dataset,
        split,
        data.get("path"),
        data.get("max_num_samples"),
        data.get("seed", 0),
        data.get("domain_shift", "in"),
    )
    model, tokenizer = module.model, module.tokenizer
    if merge_lora:
        model.merge_adapters()
    generate = partial(model.generate, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    generators = {
        mode: partial(generate, horizon=horizon, **mode_arguments(mode, tree_nodes, tree_topk, attention))
        for mode in modes
    }
    logger.info("testing %s on %d %s/%s prompts with %s", ckpt_path, len(examples), dataset, split, ", ".join(modes))
    results = evaluate_modes(generators, tokenizer, examples, batch_size, scored=DATASETS[dataset].scored)
    summaries = compare_to(results, "ar") if "ar" in results else compare_to(results, modes[0])
    payload = {
        "checkpoint": str(ckpt_path),
        "dataset": dataset,
        "split": split,
        "num_prompts": len(examples),
        "args": {
            "gen_modes": modes,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "dtype": dtype,
            "horizon": horizon,
            "tree_nodes": tree_nodes,
            "tree_topk": tree_topk,
            "attention": attention,
            "data": data,
        },
        "model": dict(module.hparams),
        "parameters": model.parameter_report(),
        "machine": machine_info(),
        "results": summaries,
        "samples": {mode: results[mode].texts[:3] for mode in modes},
    }
    out = Path(out) if out is not None else ckpt_path.parent / "test_results.json"
    write_json(out, payload)
    print(format_table(summaries, TABLE_COLUMNS))
    print(f"results written to {out}")
    return payload


def run_test_cli(args: list[str]) -> dict:
    parser = ArgumentParser(prog="tjdnet test", description="Evaluate a checkpoint written by `tjdnet fit`.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="best.ckpt or last.ckpt of a run")
    parser.add_argument(
        "--gen_modes", type=str, default="ar,speculative", help="comma-separated: " + ",".join(NAMED_MODES)
    )
    parser.add_argument("--gen_mode", type=str | None, default=None, help="a single mode (same as --gen_modes)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--dtype", type=str | None, default=None, help="float32 or bfloat16 (default: as trained)")
    parser.add_argument("--horizon", type=int | None, default=None, help="block length (default: the head's)")
    add_decoding_arguments(parser)
    parser.add_argument("--num_threads", type=int | None, default=None)
    parser.add_argument("--out", type=str | None, default=None, help="JSON path (default: <run>/test_results.json)")
    parser.add_argument("--data.dataset", type=str | None, default=None)
    parser.add_argument("--data.path", type=str | None, default=None)
    parser.add_argument("--data.max_num_samples", type=int | None, default=None)
    parser.add_argument("--data.domain_shift", type=str | None, default=None)
    cfg = parser.parse_args(args)
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    return run_test(
        cfg.ckpt_path,
        gen_modes=cfg.gen_mode or cfg.gen_modes,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        data_overrides=vars(cfg.data),
        dtype=cfg.dtype,
        horizon=cfg.horizon,
        out=cfg.out,
        tree_nodes=cfg.tree_nodes,
        tree_topk=cfg.tree_topk,
        attention=cfg.attention,
    )
