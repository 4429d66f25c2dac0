"""``tjdnet test``: answer a dataset's test split with each decoding mode and report accuracy, tau,
tokens/s and speedup over ``ar`` — as a table on the terminal and as JSON in the run directory."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from tjdnet.checks import check_int
from tjdnet.commands.options import DataChoice, DecodingOptions, load_for_decoding, parse_call, report
from tjdnet.data import DATASETS, load_examples
from tjdnet.decoding import NAMED_MODES
from tjdnet.evaluation import format_table, run_modes
from tjdnet.files import check_writable
from tjdnet.machine import machine_info

logger = logging.getLogger(__name__)

RESULTS_FILE = "test_results.json"
# What a test takes from the training data settings: which data, not how much of it (test the whole split).
INHERITED_DATA = ("dataset", "path", "source", "seed", "domain_shift")
# decode-only tokens/s beside the decode-only speedup (docs/metrics.md)
TABLE_COLUMNS = ("accuracy", "tau", "acceptance_rate", "decode_tokens_per_s", "speedup_vs_ar", "identical_to_ar")


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


def data_source(data: dict, default: str | None = None) -> str | None:
    """The dataset whose test split evaluates a run fitted on ``data`` (a ``selfdistill`` run: its source's;
    ``default`` when ``data`` names none)."""
    return data.get("source") if data.get("dataset") == "selfdistill" else data.get("dataset", default)


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
        gen_modes: comma-separated modes: ar, draft, draft_anchored, speculative, speculative_tree,
            speculative_tree_auto.
        gen_mode: a single mode (same as ``gen_modes``).
        batch_size: prompts per batch.
        out: JSON path (default: test_results.json in the run or save_pretrained directory; an earlier one is
            kept as test_results.<k>.json).
        merge_lora: fold LoRA adapters into the backbone before decoding.
        data: which prompts (default: the whole test split of the checkpoint's dataset).
        **options: the fields of :class:`~tjdnet.commands.options.DecodingOptions`.
    """
    decoding = DecodingOptions(**options)
    modes = parse_gen_modes(gen_mode or gen_modes)
    check_int("batch_size", batch_size)
    ckpt_path = Path(ckpt_path)
    run_dir = ckpt_path if ckpt_path.is_dir() else ckpt_path.parent  # a save_pretrained directory or a run's
    out_path = check_writable(out if out is not None else run_dir / RESULTS_FILE)
    decoding.apply_threads()
    model, tokenizer, description, trained_data = load_for_decoding(
        str(ckpt_path), None, decoding.dtype, merge_lora, decoding.device
    )
    chosen = vars(data) if isinstance(data, DataChoice) else dict(data or {})
    inherited = {k: v for k, v in trained_data.items() if k in INHERITED_DATA}
    data = {**inherited, **{k: v for k, v in chosen.items() if v is not None}}
    dataset = data_source(data, default="stemp")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    split = test_split(dataset)
    path, shift = data.get("path"), data.get("domain_shift", "in")
    examples = load_examples(dataset, split, path, data.get("max_num_samples"), data.get("seed", 0), shift)
    if not examples:
        raise ValueError(f"the {dataset} {split} split has no examples to test" + (f" in {path}" if path else ""))
    generate = partial(model.generate, eos_token_id=tokenizer.eos_token_id)
    generators = {mode: partial(generate, **decoding.generate_kwargs(mode)) for mode in modes}
    logger.info("testing %s on %d %s/%s prompts with %s", ckpt_path, len(examples), dataset, split, ", ".join(modes))
    evaluation = run_modes(
        generators, model.backbone, tokenizer, examples, batch_size, scored=DATASETS[dataset].scored,
        device=decoding.device,
    )  # fmt: skip
    summaries = evaluation.summaries()
    payload = {
        **description,
        "dataset": dataset,
        "split": split,
        "num_prompts": evaluation.num_prompts,
        "args": {"gen_modes": modes, "batch_size": batch_size, **vars(decoding), "data": data},
        "parameters": model.parameter_report(),
        "machine": machine_info(),
        "results": summaries,
        "samples": {mode: evaluation.runs[0][mode].texts[:3] for mode in modes},
    }
    table = format_table(summaries, TABLE_COLUMNS)
    report(payload, table, out_path, evaluation.interrupted, keep_previous_file=out is None)
    return payload


def run_test_cli(args: list[str]) -> dict:
    return parse_call(run_test, args, "tjdnet test", "Evaluate a checkpoint written by `tjdnet fit`.")
