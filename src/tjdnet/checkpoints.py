"""A trained TJDModel back from disk, without Lightning: a ``tjdnet fit`` checkpoint (``best.ckpt``) or a
directory written by ``TJDModel.save_pretrained``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tjdnet.config import TJDConfig
from tjdnet.fingerprint import check_base
from tjdnet.loading import load_causal_lm, load_tokenizer, saved_tokenizer
from tjdnet.model import CONFIG_FILE, TJDModel

STATE_PREFIX = "model."  # the Lightning module holds the TJDModel as ``model``
BASE_KEY = "base_model"  # the fingerprint of the base model (tjdnet.fingerprint)


@dataclass
class Trained:
    """A trained model in eval mode and what it was trained with.

    Attributes:
        settings: its ``--model.*`` settings (those of :class:`~tjdnet.config.TJDConfig`, plus the optimiser's
            for a fit checkpoint).
        data: the ``--data.*`` settings it was fitted with (empty for a save_pretrained directory).
    """

    model: TJDModel
    tokenizer: Any
    settings: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    """torch.load with a one-line error for a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # truncated zip archives raise several different error types
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(error).__name__}: {error})") from None


def checkpoint_settings(checkpoint: dict, path: str | Path) -> dict[str, Any]:
    """The ``--model.*`` settings saved in a fit checkpoint (Lightning's private ``_`` entries left out)."""
    if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path} was not written by `tjdnet fit` (no hyper_parameters)")
    return {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}


def restore_trained_weights(
    model: TJDModel, checkpoint: dict, prefix: str = STATE_PREFIX, source: str = "the checkpoint"
) -> None:
    """Load a fit checkpoint's trained weights (head, LoRA / backbone) and draft vocabulary into ``model``, after
    checking that ``model`` is built on the base model they were trained on."""
    check_base(checkpoint.get(BASE_KEY), model.base_fingerprint, source)
    state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    missing = model.trained_keys() - set(state)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} trained weights, e.g. {prefix}{sorted(missing)[0]}")
    model.load_state_dict(state, strict=False)
    model.head.set_draft_vocab(checkpoint.get("draft_vocab"))


def load_trained(path: str | Path, dtype: str | None = None, device: str = "cpu") -> Trained:
    """The model saved at ``path`` (a fit checkpoint file or a save_pretrained directory), in eval mode.

    Args:
        dtype: ``float32`` / ``bfloat16``; None keeps the training dtype (float32 for a directory).
    """
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        model = TJDModel.from_pretrained(path, dtype=dtype or "float32", device=device)
        tokenizer = saved_tokenizer(path) or load_tokenizer(model.config.model)
        return Trained(model, tokenizer, model.config.to_json())
    if path.is_dir():
        raise FileNotFoundError(f"{path} is neither a checkpoint file nor a saved TJDModel ({CONFIG_FILE} is missing)")
    checkpoint = load_checkpoint_file(path)
    settings = checkpoint_settings(checkpoint, path)
    if dtype is not None:
        settings["dtype"] = dtype
    config = TJDConfig.from_settings(settings)
    lm, tokenizer = load_causal_lm(config.model, dtype=settings.get("dtype", "float32"), device=device)
    model = TJDModel(lm, config)
    restore_trained_weights(model, checkpoint, source=f"checkpoint {path}")
    data = dict(checkpoint.get("datamodule_hyper_parameters", {}))
    return Trained(model.to(device).eval(), tokenizer, settings, data)
