"""``tjdnet fit-heads``: train one or more draft heads on the same data, each saved with ``save_pretrained``.

The backbone is frozen (``head`` mode), so its hidden states over the data are computed once and every head is
trained on exactly the same answer positions in the same order for the same steps
(:mod:`tjdnet.training.head_features`): the fair way to compare heads, and much cheaper than a backbone pass per
step. With ``--draft_vocab S`` each head drafts from (and is trained in) the S tokens most frequent in the answers.

    tjdnet distill --out data/distilled.jsonl --chat_prompts 1024
    tjdnet fit-heads --data data/distilled.jsonl --heads eagle:1:4,mps:2:4:tc,medusa:1:4 --out_dir heads
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tjdnet.checks import check_choice, check_int
from tjdnet.commands.options import parse_call
from tjdnet.data import DATASETS, answer_tokens, encode_example, load_examples
from tjdnet.data.sources import read_qa_jsonl
from tjdnet.files import write_json
from tjdnet.heads import check_head_settings
from tjdnet.heads.vocab import check_draft_vocab_size, frequent_tokens
from tjdnet.loading import DTYPES
from tjdnet.machine import machine_info
from tjdnet.model import TJDConfig, TJDModel
from tjdnet.training.head_features import (
    COMPUTE_DTYPES,
    Features,
    cached_features,
    check_loss_weight,
    check_targets,
    collect_features,
    evaluate_head,
    fit_head,
)

logger = logging.getLogger(__name__)


SPEC_FORMAT = "head:rank:horizon[:tc][:w<width>][:lr<rate>][:f<layer>/<layer>...][:c<window>]"


@dataclass(frozen=True)
class HeadSpec:
    """One head to train, written ``head:rank:horizon[:tc][:w<width>][:lr<rate>][:f<layer>/<layer>...][:c<window>]``
    (e.g. ``eagle:1:4:w1024:lr1e-3``, ``mps:2:4:tc``, ``eagle:1:5:f10/20``: also reading layers 10 and 20,
    ``eagle:1:5:c16``: also attending over the 16 latest positions)."""

    head: str
    rank: int
    horizon: int
    token_conditioned: bool
    hidden_dim: int
    lr: float
    feature_layers: tuple[int, ...] = ()
    context_window: int = 0

    @property
    def name(self) -> str:
        name = f"{self.head}_r{self.rank}_h{self.horizon}" + ("_tc" if self.token_conditioned else "")
        name += f"_f{'-'.join(map(str, self.feature_layers))}" if self.feature_layers else ""
        return name + (f"_c{self.context_window}" if self.context_window else "")


def parse_head_specs(value: str, hidden_dim: int, lr: float) -> list[HeadSpec]:
    """``--heads`` as HeadSpecs (``hidden_dim`` and ``lr`` unless an item gives its own); one-line error on a bad
    item."""
    specs = []
    for item in value.split(","):
        parts = item.strip().split(":")
        options = {"tc": False, "w": hidden_dim, "lr": lr, "f": (), "c": 0}
        well_formed = len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit()
        for extra in parts[3:]:
            key = next((k for k in ("tc", "lr", "w", "f", "c") if extra.startswith(k)), None)
            try:
                options[key] = _option_value(key, extra[len(key) :])
            except (KeyError, TypeError, ValueError):
                well_formed = False
        if not well_formed or options["lr"] <= 0:
            raise ValueError(f"--heads item {item!r} is not {SPEC_FORMAT} (e.g. eagle:1:4:lr1e-3)")
        spec = HeadSpec(parts[0], int(parts[1]), int(parts[2]), *(options[k] for k in ("tc", "w", "lr", "f", "c")))
        check_head_settings(
            spec.head,
            spec.horizon,
            spec.rank,
            spec.hidden_dim,
            spec.token_conditioned,
            spec.feature_layers,
            spec.context_window,
        )
        specs.append(spec)
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"--heads {value!r} names a head twice")
    return specs


def _option_value(key: str, text: str) -> bool | int | float | tuple[int, ...]:
    """The value of one ``--heads`` item option, from the text after its key."""
    if key == "tc":
        if text:
            raise ValueError(text)
        return True
    if key == "f":
        return tuple(int(layer) for layer in text.split("/"))
    return int(text) if key in ("w", "c") else float(text)


def parse_sources(data: str, dataset: str) -> list[tuple[str, Path]]:
    """``--data`` as (dataset, path) pairs: comma-separated ``path`` (read as ``dataset``) or ``<dataset>=<path>``
    items; a one-line error for an unknown dataset or a missing path."""
    sources = []
    for item in data.split(","):
        name, _, path = item.strip().rpartition("=") if "=" in item else ("", "", item.strip())
        name = name or dataset
        if name not in DATASETS:
            raise ValueError(f"--data item {item!r}: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
        if not path or not Path(path).expanduser().exists():
            raise FileNotFoundError(f"--data {path or item!r} does not exist")
        sources.append((name, Path(path).expanduser()))
    return sources


def read_source(name: str, path: Path, seed: int) -> list:
    """The training examples of one ``--data`` source: all rows of a JSONL file, else the dataset's train split."""
    if name == "jsonl" and path.is_file():
        examples = read_qa_jsonl(path)  # all of it: held-out positions measure the fit
    else:
        examples = load_examples(name, "train", path, seed=seed)
    if not examples:
        raise ValueError(f"{path} holds no training examples")
    return examples


def run_fit_heads(
    data: str,
    heads: str = "eagle:1:4",
    out_dir: str = "heads",
    prefix: str = "",
    model: str = "smollm2-135m",
    dataset: str = "jsonl",
    steps: int = 2000,
    batch_positions: int = 256,
    lr: float = 3e-3,
    hidden_dim: int = 256,
    draft_vocab: int | None = 8192,
    seq_len: int = 512,
    held_out: int = 512,
    feature_dtype: str = "bfloat16",
    seed: int = 0,
    num_threads: int | None = None,
    targets: str = "data",
    features_cache: str | None = None,
    feature_loss: float = 0.0,
    teacher_loss: float = 0.0,
    compute_dtype: str = "float32",
) -> dict:
    """Train every head of ``heads`` on ``data``; save each to ``out_dir/<name>`` and report held-out NLLs.

    Args:
        data: training data, comma-separated sources: each the JSONL file ``tjdnet distill`` wrote (all its
            rows), or a directory or file of ``dataset`` (its train split), or ``<dataset>=<path>`` for a source
            of another dataset (e.g. ``distilled.jsonl,gsm8k=data/gsm8k``).
        heads: comma-separated ``head:rank:horizon[:tc][:w<width>][:lr<rate>][:f<layer>/<layer>...]`` (heads:
            stp, multihead, cp, mps, medusa, eagle; ``tc``: token-conditioned; ``w``: adapter / MLP width, default
            ``hidden_dim``; ``lr``: its own learning rate, default ``lr``; ``f``: the head also reads the hidden
            states after these decoder layers, EAGLE-3-style; ``c``: an eagle drafter also attends over the
            backbone's features of this many latest positions, EAGLE-style).
        out_dir: where each head's save_pretrained directory goes.
        prefix: put before each head's directory name
            (``<prefix><head>_r<rank>_h<horizon>[_tc][_f<layers>][_c<window>]``).
        model: the frozen base model (the one the data was distilled from).
        dataset: how ``data`` is read (jsonl, gsm8k, sharegpt, ...); its train split is used.
        steps: optimiser steps per head.
        batch_positions: answer positions per step.
        lr: peak AdamW learning rate (warm-up, then cosine decay) of heads that give none.
        hidden_dim: default width of each head's adapters (eagle: of its MLP).
        draft_vocab: draft from the S most frequent answer tokens (None: the whole vocabulary).
        seq_len: longest training row in tokens.
        held_out: positions kept out of training for the held-out NLL (whole rows: at least this many).
        feature_dtype: of the backbone while it computes the features (the heads train in float32).
        seed: seed of the held-out split, the initialisation and the order of positions.
        num_threads: torch CPU threads.
        targets: what the heads learn to predict: ``data``, the answers' tokens (right for self-distilled data),
            or ``model``, the backbone's own greedy next token at each answer position given the text before it
            (self-distillation of any text in the features pass, no generation).
        features_cache: a directory to keep the backbone's features in, one file per source of ``data`` (keyed by
            its encoded rows, the base model's fingerprint and every setting they depend on), so that another run
            on the same data trains at once and one that adds a source computes that source only. Several GB for
            ~10k answers.
        feature_loss: weight w of EAGLE-1's regression loss (eagle heads only): each step minimises the NLL +
            w x the smooth-L1 distance of the drafted features to the backbone's own at the same positions.
        teacher_loss: weight w of a soft-target loss (eagle heads only): each step also minimises w x the KL
            divergence of each drafted conditional from the backbone's own next-token distribution at the same
            position (its whole ranking, not only the argmax the targets hold).
        compute_dtype: of the heads' matrix products while they train: float32, or bfloat16 (mixed precision:
            weights and optimiser state stay float32; about twice as fast on CPUs with bfloat16 instructions).
    """
    if not isinstance(lr, int | float) or lr <= 0:
        raise ValueError(f"lr={lr!r} is not allowed; use a number > 0")
    specs = parse_head_specs(heads, hidden_dim, lr)
    for name, value in (("steps", steps), ("batch_positions", batch_positions), ("seq_len", seq_len)):
        check_int(name, value)
    check_int("held_out", held_out, 0)
    check_choice("feature_dtype", feature_dtype, DTYPES)
    check_targets(targets)
    for spec in specs:
        check_loss_weight("feature_loss", feature_loss, spec.head)
        check_loss_weight("teacher_loss", teacher_loss, spec.head)
    check_choice("compute_dtype", compute_dtype, COMPUTE_DTYPES)
    sources = parse_sources(data, dataset)
    if num_threads is not None:
        check_int("num_threads", num_threads)
        torch.set_num_threads(num_threads)
    per_source = [read_source(name, path, seed) for name, path in sources]
    examples = [e for source in per_source for e in source]

    start = time.perf_counter()
    layers = sorted({layer for s in specs for layer in s.feature_layers})
    backbone, tokenizer = TJDModel.from_base(
        model, dtype=feature_dtype, model_head="stp", train_mode="head", feature_layers=layers
    )
    source_rows = [[encode_example(tokenizer, e, seq_len) for e in source] for source in per_source]
    rows = [row for part in source_rows for row in part]
    horizon = max(s.horizon for s in specs)
    settings = {
        "base": backbone.base_fingerprint, "dtype": feature_dtype, "layers": layers, "horizon": horizon,
        "targets": targets, "pad": tokenizer.pad_token_id,
    }  # fmt: skip

    def compute(part: list[dict]) -> Callable[[], Features]:
        return lambda: collect_features(backbone.eval(), part, horizon, tokenizer.pad_token_id, targets=targets)

    # each source's features are cached on their own: adding a source to --data pays for that source only
    parts = [cached_features(features_cache, part, settings, compute(part)) for part in source_rows]
    features = parts[0] if len(parts) == 1 else Features.concatenate(parts, [len(part) for part in source_rows])
    del parts
    train, evaluation = features.split(held_out, seed)
    positions = len(features)
    del features  # the split holds copies
    features_s = time.perf_counter() - start
    logger.info("%d answer positions (%d held out) in %.0f s", positions, len(evaluation), features_s)
    backbone = None  # free it before the heads train
    vocab_ids = None
    lm, _ = TJDModel.from_base(model, dtype="float32", model_head="stp", train_mode="head")
    if draft_vocab is not None:
        check_draft_vocab_size(draft_vocab, lm.vocab_size, "draft_vocab")
        answers = [answer_tokens(r) for r in rows]
        vocab_ids = frequent_tokens(answers, draft_vocab, lm.vocab_size, keep=[tokenizer.eos_token_id])

    report = {}
    for spec in specs:
        config = TJDConfig(
            model=model,
            model_head=spec.head,
            horizon=spec.horizon,
            rank=spec.rank,
            hidden_dim=spec.hidden_dim,
            train_mode="head",
            token_conditioned=spec.token_conditioned,
            loss_mode="draft",
            draft_vocab_size=draft_vocab,
            feature_layers=list(spec.feature_layers),
            context_window=spec.context_window,
        )
        torch.manual_seed(seed)
        head_model = TJDModel(lm.lm, config)
        head_model.head.set_draft_vocab(vocab_ids)
        in_draft = vocab_ids is not None
        head_train, head_evaluation = (f.with_layers(layers, spec.feature_layers) for f in (train, evaluation))
        before = evaluate_head(head_model, head_evaluation, draft=in_draft)
        t0 = time.perf_counter()
        losses = fit_head(
            head_model,
            head_train,
            steps,
            batch_positions,
            spec.lr,
            seed=seed,
            draft=in_draft,
            feature_loss=feature_loss,
            teacher_loss=teacher_loss,
            compute_dtype=compute_dtype,
        )
        fit_s = time.perf_counter() - t0
        after = evaluate_head(head_model, head_evaluation, draft=in_draft)
        del head_train, head_evaluation
        directory = Path(out_dir) / f"{prefix}{spec.name}"
        head_model.save_pretrained(directory, tokenizer)
        report[directory.name] = {
            **vars(spec),
            "parameters": head_model.head.num_parameters(),
            "held_out_nll_before": before,
            "held_out_nll_after": after,
            "train_loss_last": losses[-1],
            "feature_loss": feature_loss,
            "teacher_loss": teacher_loss,
            "compute_dtype": compute_dtype,
            "targets": targets,
            "fit_s": round(fit_s, 1),
            "directory": str(directory),
        }
        write_json(directory / "training.json", report[directory.name])
        print(f"{spec.name}: held-out NLL/token {before:.3f} -> {after:.3f} in {fit_s:.0f} s, saved to {directory}")
    summary = {
        "data": data,
        "model": model,
        "examples": len(examples),
        "targets": targets,
        "positions": positions,
        "held_out": len(evaluation),
        "steps": steps,
        "batch_positions": batch_positions,
        "lr": lr,
        "draft_vocab": draft_vocab,
        "features_s": round(features_s, 1),
        "machine": machine_info(),
        "heads": report,
    }
    write_json(Path(out_dir) / "fit_heads.json", summary)
    return summary


def run_fit_heads_cli(args: list[str]) -> dict:
    return parse_call(run_fit_heads, args, "tjdnet fit-heads", "Train draft heads on the same cached features.")
