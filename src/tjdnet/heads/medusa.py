"""``medusa``: Medusa-1-style heads (Cai et al. 2024): independent per-position residual blocks into the shared,
frozen output embedding.

Position 1 is the backbone's own next-token distribution (in speculative decoding the verifier supplies that
token anyway); position k > 1 reads z_k = h + silu(W_k h + b_k), W_k zero at first, so every head starts as the
next-token distribution. The block distribution is the product of the positions' distributions (a rank-1 joint);
its draft trees keep, per step, the most probable prefixes under that product, i.e. the top-k tokens of each head
combined (Medusa's tree, chosen per step instead of calibrated once).
"""

from __future__ import annotations

import torch
from torch import nn

from tjdnet.heads.base import HeadConfig
from tjdnet.heads.multihead import MultiHead


class MedusaHead(MultiHead):
    uses_adapters = False

    def __init__(self, config: HeadConfig, unembedding: nn.Module, embedding: nn.Module | None = None) -> None:
        super().__init__(config, unembedding, embedding)
        d, n = config.hidden_size, config.horizon - 1
        self.res_weight = nn.Parameter(torch.zeros(n, d, d))
        self.res_bias = nn.Parameter(torch.zeros(n, d))

    def component_states(
        self, h: torch.Tensor, components: slice | torch.Tensor = slice(None), first: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, n_selected, D): h for position 1, h + silu(W_k h + b_k) for position k > 1."""
        x = h.to(self.res_weight.dtype)
        inner = torch.einsum("bd,nde->bne", x, self.res_weight) + self.res_bias
        later = x.unsqueeze(1) + torch.nn.functional.silu(inner)
        return torch.cat([x.unsqueeze(1), later], dim=1)[:, components]
