"""``stp``: the plain next-token head (H = 1) — the backbone's own output embedding, no parameters."""

from __future__ import annotations

import torch

from tjdnet.heads.base import JointHead


class STPHead(JointHead):
    uses_adapters = False

    def log_init(self, h: torch.Tensor) -> torch.Tensor:
        return h.new_zeros(h.shape[0], 1)
