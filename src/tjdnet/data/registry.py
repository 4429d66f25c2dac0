"""The dataset registry: one name per dataset, one function to load a split of any of them."""

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tjdnet.data.examples import Conversation, Example
from tjdnet.data.sources import SPLITS, load_gsm8k, load_mt_bench, load_qa, load_sharegpt
from tjdnet.data.stemp import SHIFT_MEANS, load_stemp

Records = list[Example] | list[Conversation]


@dataclass(frozen=True)
class DatasetSpec:
    """How to load a dataset, and what it offers.

    load: ``(split, path, seed, domain_shift) -> records``.
    path: ``"required"``, ``"optional"`` (a fallback exists) or ``"none"`` (generated).
    scored: whether examples carry reference answers that ``is_correct`` can score.
    splits: the splits it has.
    """

    load: Callable[[str, Path | None, int, str], Records]
    path: str
    scored: bool
    splits: tuple[str, ...] = SPLITS


DATASETS: dict[str, DatasetSpec] = {
    "stemp": DatasetSpec(
        lambda split, path, seed, shift: load_stemp(split, seed=seed, domain_shift=shift), path="none", scored=True
    ),
    "gsm8k": DatasetSpec(lambda split, path, seed, shift: load_gsm8k(split, path), path="optional", scored=True),
    "jsonl": DatasetSpec(lambda split, path, seed, shift: load_qa(split, path), path="required", scored=True),
    "sharegpt": DatasetSpec(
        lambda split, path, seed, shift: load_sharegpt(split, path),
        path="required",
        scored=False,
        splits=("train", "eval"),
    ),
    "mt_bench": DatasetSpec(
        lambda split, path, seed, shift: load_mt_bench(split, path), path="required", scored=False, splits=("test",)
    ),
}


def load_examples(
    name: str,
    split: str,
    path: str | Path | None = None,
    max_num_samples: int | None = None,
    seed: int = 0,
    domain_shift: str = "in",
) -> Records:
    """One split (``train``, ``eval`` or ``test``) of dataset ``name``, as Examples or Conversations.

    ``max_num_samples`` keeps that many records, chosen with ``seed`` and kept in file order; it applies to
    the split asked for, so pass it for training only if evaluation should stay complete. ``seed`` also seeds
    the stemp generator; ``domain_shift`` (``in``, ``mild``, ``hard``) applies to stemp's eval and test splits.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if split not in spec.splits:
        raise ValueError(f"{name} has no split {split!r}; allowed: {', '.join(spec.splits)}")
    if domain_shift not in SHIFT_MEANS:
        raise ValueError(f"domain_shift={domain_shift!r}; allowed: {', '.join(SHIFT_MEANS)}")
    if domain_shift != "in" and name != "stemp":
        raise ValueError(f"domain_shift={domain_shift!r} applies to stemp only, not {name}")
    if path is None and spec.path == "required":
        raise ValueError(f"dataset {name} needs a path (--data.path)")
    if path is not None and spec.path == "none":
        raise ValueError(f"dataset {name} is generated and takes no path, got {path}")
    if max_num_samples is not None and max_num_samples < 1:
        raise ValueError(f"max_num_samples={max_num_samples}; must be a positive integer or None")
    records = spec.load(split, None if path is None else Path(path).expanduser(), seed, domain_shift)
    if max_num_samples is None or max_num_samples >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), max_num_samples))
    return [records[i] for i in keep]
