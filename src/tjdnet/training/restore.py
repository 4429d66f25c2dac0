"""Rebuild a trained model from a Lightning checkpoint written by ``tjdnet fit``."""

from __future__ import annotations

from pathlib import Path

from tjdnet.training.checkpoint_io import load_checkpoint_file
from tjdnet.training.module import TJDLitModule


def load_trained(ckpt_path: str | Path, dtype: str | None = None, device: str = "cpu") -> tuple[TJDLitModule, dict]:
    """The LightningModule with its trained weights, in eval mode, and the checkpoint's data settings.

    Args:
        dtype: override the training dtype (``float32`` / ``bfloat16``); None keeps it.
    Returns:
        (module, datamodule hyper-parameters saved with the checkpoint).
    """
    checkpoint = load_checkpoint_file(ckpt_path)
    if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {ckpt_path} was not written by `tjdnet fit` (no hyper_parameters)")
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    if dtype is not None:
        hparams["dtype"] = dtype
    module = TJDLitModule(**hparams)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    module.to(device).eval()
    return module, dict(checkpoint.get("datamodule_hyper_parameters", {}))
