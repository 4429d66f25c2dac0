"""``tjdnet test``: answer a dataset's test split with each decoding mode and report accuracy, tau,
tokens/s and speedup over ``ar`` — as a table on the terminal and as JSON in the run directory."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from tjdnet.commands.options import DataChoice, DecodingOptions, load_for_decoding, parse_call
from tjdnet.data import DATASETS, load_examples
from tjdnet.decoding import NAMED_MODES
from tjdnet.evaluation import format_table, run_modes, summarise
from tjdnet.files import write_json
from tjdnet.machine import machine_info

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("accuracy", "tau", "acceptance_rate", "tokens_per_s", "speedup_vs_ar", "identical_to_ar")


def parse_gen_modes(value: str | list[str], allowed: tuple[str, ...] = NAMED_MODES) -> list[str]:
    """The modes in ``value`` (comma-separated), checked against ``allowed``."""
    modes = [m.strip() for m in value.split(",")] if isinstance(value, str) else list(value)
    modes = [m for m in modes if m]
    if not modes:
        raise ValueError("--gen_modes is empty; give one or more of " + ", ".join(allowed))
    for mode in modes:
        if mode not in allowed:
            raise ValueError(f"unknown gen_mode {mode!r}; allowed: {', '.join(allowed)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"--gen_modes {','.join(modes)} names a mode twice")
    return modes


def test_split(dataset: str) -> str:
    return "test" if "test" in DATASETS[dataset].splits else DATASETS[dataset].splits[-1]


def run_test(
    ckpt_path: str | Path,
    gen_modes: str = "ar,speculative",
    gen_mode: str | None = None,
    batch_size: int = 1,
    out: str | None = None,
    merge_lora: bool = True,
    data: DataChoice | dict | None = None,
    **options,
) -> dict:
    """Evaluate a checkpoint; returns the JSON payload (also written to ``out`` or <run dir>/test_results.json).

    Args:
        ckpt_path: best.ckpt / last.ckpt of a run, or a save_pretrained directory.
        gen_modes: comma-separated modes: ar, draft, speculative, speculative_tree.
        gen_mode: a single mode (same as ``gen_modes``).
        batch_size: prompts per batch.
        out: JSON path (default: <run>/test_results.json).
        merge_lora: fold LoRA adapters into the backbone before decoding.
        data: which prompts (default: the test split of the checkpoint's dataset).
        **options: the fields of :class:`~tjdnet.commands.options.DecodingOptions`.
    """
    decoding = DecodingOptions(**options)
    modes = parse_gen_modes(gen_mode or gen_modes)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not allowed; use an integer >= 1")
    decoding.apply_threads()
    ckpt_path = Path(ckpt_path)
    model, tokenizer, description, trained_data = load_for_decoding(str(ckpt_path), None, decoding.dtype, merge_lora)
    chosen = vars(data) if isinstance(data, DataChoice) else dict(data or {})
    data = {**trained_data, **{k: v for k, v in chosen.items() if v is not None}}
    dataset = data.get("source") if data.get("dataset") == "selfdistill" else data.get("dataset", "stemp")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    split = test_split(dataset)
    examples = load_examples(
        dataset,
        split,
        data.get("path"),
        data.get("max_num_samples"),
        data.get("seed", 0),
        data.get("domain_shift", "in"),
    )
    generate = partial(model.generate, eos_token_id=tokenizer.eos_token_id)
    generators = {mode: partial(generate, **decoding.generate_kwargs(mode)) for mode in modes}
    logger.info("testing %s on %d %s/%s prompts with %s", ckpt_path, len(examples), dataset, split, ", ".join(modes))
    runs = run_modes(generators, model.backbone, tokenizer, examples, batch_size, scored=DATASETS[dataset].scored)
    summaries = summarise(runs, num_prompts=len(examples))
    payload = {
        **description,
        "dataset": dataset,
        "split": split,
        "num_prompts": len(examples),
        "args": {"gen_modes": modes, "batch_size": batch_size, **vars(decoding), "data": data},
        "parameters": model.parameter_report(),
        "machine": machine_info(),
        "results": summaries,
        "samples": {mode: runs[0][mode].texts[:3] for mode in modes},
    }
    out = Path(out) if out is not None else ckpt_path.parent / "test_results.json"
    write_json(out, payload)
    print(format_table(summaries, TABLE_COLUMNS))
    print(f"results written to {out}")
    return payload


def run_test_cli(args: list[str]) -> dict:
    return parse_call(run_test, args, "tjdnet test", "Evaluate a checkpoint written by `tjdnet fit`.")
