"""``mps``: matrix-product-state (tensor-train) joint with bond dimension R and non-negative cores.

Equivalently an HMM over R hidden states along the block: an input-dependent initial state
distribution, input-dependent transitions between consecutive positions, and one emission
distribution per (state, position). Normalised by construction:

    p(y | h) = sum_s pi(s_1) theta_{s_1,1}[y_1] prod_{k>1} T_k(s_{k-1}, s_k) theta_{s_k,k}[y_k]
"""

from __future__ import annotations

import torch
from torch import nn

from tjdnet.heads.base import HeadConfig, JointHead


class MPSHead(JointHead):
    def __init__(self, config: HeadConfig, unembedding: nn.Module, embedding: nn.Module | None = None) -> None:
        super().__init__(config, unembedding, embedding)
        self.initial = nn.Linear(config.hidden_size, config.rank)
        n_trans = max(config.horizon - 1, 0) * config.rank * config.rank
        self.transitions = nn.Linear(config.hidden_size, n_trans)
        for layer in (self.initial, self.transitions):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def log_init(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.initial(h.to(self.initial.weight.dtype)).float(), dim=-1)

    def log_trans(self, h: torch.Tensor) -> torch.Tensor:
        scores = self.transitions(h.to(self.transitions.weight.dtype)).float()
        scores = scores.view(h.shape[0], self.horizon - 1, self.rank, self.rank)
        return torch.log_softmax(scores, dim=-1)
