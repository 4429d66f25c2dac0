"""A fingerprint of a base model, recorded with every trained head, so a head is never used on another model.

A head is trained against one backbone's hidden states: on a model of another size it cannot load, and on the
same architecture with other weights (a re-downloaded revision, a fine-tuned copy at the same path) it loads but
drafts for a model it has never seen. The fingerprint holds the model's name, a hash of its architecture (the
config without paths, dtypes and versions) and a hash of a sample of its weights rounded to bfloat16, so the
same weights match whichever dtype they were loaded in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

SAMPLE = 4096  # values hashed from each end of the first and last weight tensors
VOLATILE_CONFIG_KEYS = ("dtype", "torch_dtype", "transformers_version", "architectures", "name_or_path")


def base_fingerprint(lm: nn.Module, name: str) -> dict[str, Any]:
    """{"model", "hidden_size", "vocab_size", "config", "weights"} of ``lm`` before any fine-tuning."""
    config = {k: v for k, v in lm.config.to_dict().items() if not k.startswith("_") and k not in VOLATILE_CONFIG_KEYS}
    weights = hashlib.sha1()
    tensors = [p for _, p in lm.named_parameters()]
    for tensor in (tensors[0], tensors[-1]):
        flat = tensor.detach().flatten()
        sample = torch.cat([flat[:SAMPLE], flat[-SAMPLE:]]).to(torch.bfloat16).float().cpu()
        weights.update(sample.numpy().tobytes())
    embedding = lm.get_input_embeddings().weight
    return {
        "model": name,
        "hidden_size": int(embedding.shape[1]),
        "vocab_size": int(embedding.shape[0]),
        "config": hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "weights": weights.hexdigest()[:16],
    }


def check_base(saved: dict[str, Any] | None, current: dict[str, Any], source: str) -> None:
    """ValueError when ``source`` (a checkpoint or saved head) was trained on another base model than ``current``.

    ``saved`` is None for files written before fingerprints were recorded: they are not checked.
    """
    if not saved:
        return
    trained_on = f"{source} was trained on {saved['model']!r}"
    if saved["config"] != current["config"]:
        raise ValueError(
            f"{trained_on} (hidden size {saved['hidden_size']}, vocabulary {saved['vocab_size']}), not on this "
            f"{current['model']!r} (hidden size {current['hidden_size']}, vocabulary {current['vocab_size']})"
        )
    if saved["weights"] != current["weights"]:
        raise ValueError(
            f"{trained_on}, whose weights have changed since ({current['model']!r} loads other weights); "
            "use the weights it was trained on"
        )
