"""Lightning checkpoint files written atomically: a kill -9 at any moment leaves the old file or the new one."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tjdnet.checkpoints import load_checkpoint_file
from tjdnet.files import atomic_file, stale_temporaries


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save through :func:`tjdnet.files.atomic_file`; load with one-line errors for bad files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        for stale in stale_temporaries(path):  # left by a writer killed with -9; only one process saves a run
            stale.unlink(missing_ok=True)
        with atomic_file(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint_file(path, map_location)
