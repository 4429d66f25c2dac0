"""``cp``: rank-R canonical-polyadic joint, i.e. a mixture of R products of per-position
distributions with input-dependent mixture weights:

    p(y | h) = sum_r alpha_r(h) prod_k theta_rk(h)[y_k]
"""

from __future__ import annotations

import torch
from torch import nn

from tjdnet.heads.base import HeadConfig, JointHead


class CPHead(JointHead):
    def __init__(self, config: HeadConfig, unembedding: nn.Module, embedding: nn.Module | None = None) -> None:
        super().__init__(config, unembedding, embedding)
        self.mixture = nn.Linear(config.hidden_size, config.rank)
        nn.init.zeros_(self.mixture.weight)
        nn.init.zeros_(self.mixture.bias)

    def log_init(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.mixture(h.to(self.mixture.weight.dtype)).float(), dim=-1)
