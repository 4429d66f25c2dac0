"""Where runs live (``experiments/<run-name>/``) and how a run is named."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def run_name(model: dict, data: dict) -> str:
    """A readable, stable run name: the key hyper-parameters plus a hash of every model and data setting.

    Trainer settings (epochs, steps) are left out, so extending a run resumes it from ``last.ckpt``.
    """
    base = Path(str(model["model"]).rstrip("/")).name
    head = f"{model['model_head']}-h{model['horizon']}-r{model['rank']}"
    blob = json.dumps({"model": model, "data": data}, sort_keys=True, default=str)
    return f"{base}-{head}-{model['train_mode']}-{data['dataset']}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def experiments_dir() -> Path:
    """``$TJDNET_EXPERIMENTS`` or ``experiments`` (relative to the working directory)."""
    return Path(os.environ.get("TJDNET_EXPERIMENTS", "experiments"))
