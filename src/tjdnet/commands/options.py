"""What ``tjdnet test``, ``bench`` and ``generate`` share: the decoding options, the choice of prompts, loading
the model to decode with, and turning a command function's signature into its command line."""

from __future__ import annotations

import re
from argparse import ArgumentError
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from tjdnet.attention import ATTENTION_CHOICES
from tjdnet.checkpoints import load_trained
from tjdnet.checks import check_choice, check_int
from tjdnet.decoding import (
    DEFAULT_TREE_LOOKUP,
    DEFAULT_TREE_MAX_NODES,
    DEFAULT_TREE_NODES,
    DEFAULT_TREE_TEMPERATURE,
    DEFAULT_TREE_TOPK,
    mode_arguments,
)
from tjdnet.decoding.tree import check_tree_temperature
from tjdnet.devices import resolve_device
from tjdnet.files import keep_previous, write_json
from tjdnet.loading import DTYPES
from tjdnet.model import TJDModel
from tjdnet.quantization import check_draft_weights


@dataclass
class DecodingOptions:
    """How our modes decode.

    Attributes:
        max_new_tokens: most tokens generated per prompt.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights (default: as trained; float32 for a base model).
        horizon: block length (default: the head's).
        tree_nodes: draft tree size of ``speculative_tree``.
        tree_topk: prefixes expanded per tree depth.
        tree_temperature: T > 0: trees keep the most probable prefixes under the head's conditionals softened to
            q^(1/T) (T > 1: more alternatives near the root); the output is the same.
        tree_lookup: trees also verify up to this many tokens that followed the latest earlier occurrence of the
            text's last 2-4 tokens (prompt lookup, at no drafting cost; 0: the head's tree only).
        tree_max_nodes: largest draft tree of ``speculative_tree_auto``, which verifies, each step, as many of its
            nodes as maximise expected tokens per second on this machine.
        attention: ``exact`` (lossless in 16-bit floats), ``model`` (the model's own kernel) or ``auto`` (exact
            for 16-bit models).
        draft_weights: ``int8`` (the head drafts with int8 copies of its weights), ``model`` (its own weights) or
            ``auto`` (int8 in the lossless ``speculative`` modes where a one-off timing on this machine finds it
            faster, as for bfloat16 on AVX-512 CPUs; its own weights otherwise and in the draft modes).
        num_threads: torch CPU threads (default: torch's choice).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when there is one).
    """

    max_new_tokens: int = 128
    dtype: str | None = None
    horizon: int | None = None
    tree_nodes: int = DEFAULT_TREE_NODES
    tree_topk: int = DEFAULT_TREE_TOPK
    tree_temperature: float = DEFAULT_TREE_TEMPERATURE
    tree_lookup: int = DEFAULT_TREE_LOOKUP
    tree_max_nodes: int = DEFAULT_TREE_MAX_NODES
    attention: str = "auto"
    draft_weights: str = "auto"
    num_threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.device = str(resolve_device(self.device))
        for name, low in (
            ("max_new_tokens", 1),
            ("horizon", 1),
            ("tree_nodes", 0),
            ("tree_topk", 1),
            ("tree_lookup", 0),
            ("tree_max_nodes", 1),
            ("num_threads", 1),
        ):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low)
        if self.dtype is not None:
            check_choice("dtype", self.dtype, DTYPES)
        check_choice("attention", self.attention, ATTENTION_CHOICES)
        check_draft_weights(self.draft_weights)
        check_tree_temperature(self.tree_temperature)

    def apply_threads(self) -> None:
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)

    def generate_kwargs(self, mode: str) -> dict[str, Any]:
        """``TJDModel.generate`` keyword arguments of a named mode (see :func:`tjdnet.decoding.mode_arguments`)."""
        kwargs = mode_arguments(
            mode,
            self.tree_nodes,
            self.tree_topk,
            self.attention,
            self.tree_max_nodes,
            self.draft_weights,
            self.tree_temperature,
            self.tree_lookup,
        )
        return {**kwargs, "horizon": self.horizon, "max_new_tokens": self.max_new_tokens}


@dataclass
class DataChoice:
    """Which prompts to answer.

    Attributes:
        dataset: ``stemp``, ``gsm8k``, ``jsonl``, ``sharegpt`` or ``mt_bench`` (a ``selfdistill`` checkpoint is
            tested on its source dataset).
        path: file or directory of the data.
        max_num_samples: prompts to use (default: the whole split).
        domain_shift: stemp's test shift: ``in``, ``mild`` or ``hard``.
    """

    dataset: str | None = None
    path: str | None = None
    max_num_samples: int | None = None
    domain_shift: str | None = None


def load_for_decoding(
    ckpt_path: str | None, model: str | None, dtype: str | None, merge_lora: bool = True, device: str = "cpu"
):
    """(TJDModel in eval mode on ``device``, tokenizer, {"checkpoint", "model": settings}, data settings) from a
    trained checkpoint (``best.ckpt`` or a save_pretrained directory) or, without one, a base model with its own
    next-token head only. LoRA adapters are merged unless ``merge_lora`` is False."""
    if ckpt_path is not None:
        trained = load_trained(ckpt_path, dtype, device)
        if merge_lora:
            trained.model.merge_adapters()
        return trained.model, trained.tokenizer, {"checkpoint": str(ckpt_path), "model": trained.settings}, trained.data
    tjd, tokenizer = TJDModel.from_base(
        model, dtype=dtype or "float32", device=device, model_head="stp", train_mode="head"
    )
    settings = {"model": model, "model_head": "stp", "horizon": 1, "rank": 1}
    return tjd.eval(), tokenizer, {"checkpoint": None, "model": settings}, {}


def report(payload: dict, table: str, out: Path, interrupted: bool, keep_previous_file: bool = False) -> None:
    """Print ``table``, then write ``payload`` to ``out`` (after moving an earlier file aside when
    ``keep_previous_file``); after a Ctrl-C, say what was kept and raise KeyboardInterrupt again."""
    print(table)
    kept = keep_previous(out) if keep_previous_file else None
    write_json(out, {**payload, "interrupted": interrupted})
    if kept is not None:
        print(f"earlier results moved to {kept}")
    if interrupted:
        print(f"interrupted: results of the {payload['num_prompts']} prompts finished written to {out}")
        raise KeyboardInterrupt
    print(f"results written to {out}")


def parse_call(function: Callable, args: list[str], prog: str, description: str) -> Any:
    """Call ``function`` with the options in ``args``: its command line is its signature (docstring for the help;
    ``**options`` flags come from the dataclass it passes them to, a dataclass parameter gives ``--<name>.*``)."""
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_function_arguments(function, as_positional=False)
    try:
        cfg = parser.instantiate_classes(parser.parse_args(args))
    except ArgumentError as error:
        raise ValueError(option_error(str(error))) from None
    return function(**vars(cfg))


def option_error(message: str) -> str:
    """jsonargparse's multi-line ``Parser key "x": ... Expected a <class 'int'> ... Got value: abc`` as one line,
    ``--x: expected int, got 'abc'``; other parser errors keep their first line."""
    key = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if key is None:
        return message.strip().splitlines()[0] if message.strip() else "bad options"
    types = [name for name in re.findall(r"Expected a <class '(\w+)'>", message) if name != "NoneType"]
    value = re.search(r"(?:Given|Got) value: (.*)", message)
    if types and value:
        return f"--{key.group(1)}: expected {' or '.join(dict.fromkeys(types))}, got {value.group(1).strip()!r}"
    return f"--{key.group(1)}: {' '.join(key.group(2).split())}"
