"""``multihead``: H independent softmax heads (Medusa / Meta multi-token prediction baseline)."""

from __future__ import annotations

import torch

from tjdnet.heads.base import JointHead


class MultiHead(JointHead):
    def log_init(self, h: torch.Tensor) -> torch.Tensor:
        return h.new_zeros(h.shape[0], 1)
