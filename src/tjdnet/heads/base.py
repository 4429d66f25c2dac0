"""Shared machinery of every head: component adapters into the frozen output embedding,
the exact block distribution, and the chunked memory-bounded training log-likelihood.

A head with rank R and horizon H owns R x H *components*. Component (r, k) turns the hidden state
h (B, D) into a vector z_rk = h + W_out,rk silu(W_in,rk h) (B, D) and then into the distribution
softmax(E z_rk) over the vocabulary, where E is the backbone's own output embedding (shared and
frozen). W_out starts at zero, so every component starts as the base model's next-token
distribution. Subclasses only say how the components are combined: the initial state / mixture
weights and the transitions along the block.

A *token-conditioned* head (``token_conditioned=True``) also reads the block's first token y_1: the components
of positions 2..H take h + C e(y_1) instead of h, where e is the backbone's (frozen) input embedding and C a
learned D x D map, zero at first. Each product term is still normalised (y_1's own emission does not depend on
y_1), so the block distribution stays exact. In speculative decoding y_1 is the verifier's token, so the
draft of y_2.. sees it, as the base model would; the head stays one pass per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tjdnet.heads.block import BlockDistribution
from tjdnet.heads.vocab import DraftVocab
from tjdnet.kernels import onednn_requested, use_onednn_linears, weight_state
from tjdnet.tensorops.logspace import IGNORE_INDEX, chain_log_prob
from tjdnet.tensorops.vocab_log_prob import target_log_probs

DEFAULT_LOSS_CHUNK_ELEMENTS = 2**24


@dataclass
class HeadConfig:
    """Hyper-parameters of a head.

    Attributes:
        name: one of ``stp``, ``multihead``, ``cp``, ``mps``.
        horizon: H, the number of future tokens modelled jointly.
        rank: R, mixture components (cp) or bond dimension (mps); 1 for stp/multihead.
        hidden_dim: width of each component's residual adapter.
        hidden_size: D, the backbone's hidden size.
        vocab_size: V, the size of the output embedding.
        loss_chunk_elements: most vocabulary logits alive at once in the training loss.
        token_conditioned: positions 2..H also read the block's first token (see the module docstring).
        extra_features: n, how many more D-wide hidden states (intermediate layers of the backbone, EAGLE-3's
            fused features) follow the last one in the head's input h (B, (1 + n) D).
        context_window: W, the latest positions before the block an ``eagle`` drafter attends over (0: none).
    """

    name: str
    hidden_size: int
    vocab_size: int
    horizon: int = 1
    rank: int = 1
    hidden_dim: int = 64
    loss_chunk_elements: int = DEFAULT_LOSS_CHUNK_ELEMENTS
    token_conditioned: bool = False
    extra_features: int = 0
    context_window: int = 0

    @property
    def input_size(self) -> int:
        """Width of the head's input: the last hidden state and the extra features."""
        return self.hidden_size * (1 + self.extra_features)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / RMS(x) over the last dimension (statistics in float32)."""
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)


class ComponentAdapters(nn.Module):
    """n residual bottleneck adapters applied to the same hidden state in one batched product."""

    def __init__(self, n: int, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(n, dim, hidden_dim) / math.sqrt(dim))
        self.w_out = nn.Parameter(torch.zeros(n, hidden_dim, dim))

    def forward(self, x: torch.Tensor, components: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Map x (B, D), shared by the selected components, or (B, n_selected, D), one each, to (B, n_selected, D)."""
        x = x.to(self.w_in.dtype)
        w_in, w_out = self.w_in[components], self.w_out[components]
        if x.dim() == 2:
            inner, x = torch.einsum("bd,cde->bce", x, w_in), x.unsqueeze(1)
        else:
            inner = torch.einsum("bcd,cde->bce", x, w_in)
        return x + torch.einsum("bce,ced->bcd", torch.nn.functional.silu(inner), w_out)


class JointHead(nn.Module):
    """Base class: models p(y_1..y_H | h) with R x H components sharing the output embedding.

    Subclasses implement :meth:`log_init` and :meth:`log_trans`.

    Args:
        unembedding: the backbone's output embedding (V x D).
        embedding: the backbone's input embedding; needed by token-conditioned heads only.
    """

    uses_adapters = True

    def __init__(self, config: HeadConfig, unembedding: nn.Module, embedding: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.horizon = config.horizon
        self.rank = config.rank
        # Tuples hide the backbone's embeddings from this module's parameters and state dict.
        self._unembedding = (unembedding,)
        self._embedding = (embedding,)
        n = config.rank * config.horizon
        self.adapters = ComponentAdapters(n, config.hidden_size, config.hidden_dim) if self.uses_adapters else None
        self.condition = None
        if config.token_conditioned:
            if embedding is None:
                raise ValueError("a token-conditioned head needs the backbone's input embedding")
            self.condition = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            nn.init.zeros_(self.condition.weight)
        self.feature_fuse = None
        if config.extra_features:
            # Zero at first: a head reading extra features starts as the head without them.
            self.feature_fuse = nn.Linear(config.extra_features * config.hidden_size, config.hidden_size, bias=False)
            nn.init.zeros_(self.feature_fuse.weight)
        self.draft_vocab: DraftVocab | None = None
        self._draft_unembedding: tuple = ()  # (layer, what it was built from)

    @property
    def unembedding(self) -> nn.Module:
        return self._unembedding[0]

    @property
    def embedding(self) -> nn.Module | None:
        return self._embedding[0]

    @property
    def token_conditioned(self) -> bool:
        return self.condition is not None

    def set_draft_vocab(self, ids: torch.Tensor | list[int] | None) -> None:
        """Draft from these token ids only at inference (:mod:`tjdnet.heads.vocab`); None drafts from all."""
        self.draft_vocab = None if ids is None else DraftVocab.of(ids, self.config.vocab_size)
        self._draft_unembedding = ()

    def draft_unembedding(self) -> nn.Linear:
        """The output embedding's rows of the draft vocabulary, as a linear layer (built on first use, and again
        when the embedding changed: other values, dtype or device)."""
        weight, bias = self.unembedding.weight, getattr(self.unembedding, "bias", None)
        source = weight_state(weight)
        if self._draft_unembedding and self._draft_unembedding[1] == source:
            return self._draft_unembedding[0]
        ids = self.draft_vocab.ids.to(weight.device)
        layer = nn.Linear(weight.shape[1], len(ids), bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight[ids])
            if bias is not None:
                layer.bias.copy_(bias[ids])
        layer.requires_grad_(False)
        if onednn_requested():
            use_onednn_linears(layer)
        self._draft_unembedding = (layer, source)  # a tuple keeps it out of the parameters and the state dict
        return layer

    @property
    def window_size(self) -> int:
        """W, the latest positions before the block the head attends over (:mod:`tjdnet.heads.window`); 0 for the
        heads that read h alone."""
        return 0

    def context(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D) W [n(x_1); ...; n(x_n)]: the extra features x_i of an input h (B, (1 + n) D), each RMS-normalised
        (the residual stream grows with depth), mixed into one D-wide vector; zeros without extra features."""
        d = self.config.hidden_size
        if self.feature_fuse is None:
            return torch.zeros_like(h[..., :d])
        extras = rms_norm(h[..., d:].unflatten(-1, (-1, d)).to(self.feature_fuse.weight.dtype)).flatten(-2)
        return self.feature_fuse(extras).to(h.dtype)

    def read(self, h: torch.Tensor) -> torch.Tensor:
        """The (B, D) state the components read: the last hidden state plus :meth:`context` (checked input)."""
        self.check_hidden(h)
        if self.feature_fuse is None:
            return h
        return h[..., : self.config.hidden_size] + self.context(h)

    def log_init(self, h: torch.Tensor) -> torch.Tensor:
        """(B, R) log initial state distribution (mixture weights)."""
        raise NotImplementedError

    def log_trans(self, h: torch.Tensor) -> torch.Tensor | None:
        """(B, H-1, R, R) log transitions along the block, or None for a mixture of products."""
        return None

    def component_inputs(
        self, h: torch.Tensor, components: slice | torch.Tensor, first: torch.Tensor | None
    ) -> torch.Tensor:
        """What the selected components read: h (B, D) itself, or (B, n_selected, D) for a token-conditioned
        head, where components past the block's first position add C e(first) (``first``: (B,) token ids)."""
        if self.condition is None:
            return h
        later = (torch.arange(self.rank * self.horizon, device=h.device)[components] % self.horizon) > 0
        if not later.any():
            return h
        if first is None:
            raise ValueError("this head is token-conditioned: pass the block's first token (first=...)")
        weight = self.condition.weight
        shift = self.condition(self.embedding(first).to(weight.dtype))  # (B, D)
        return h.to(weight.dtype).unsqueeze(1) + later[None, :, None].to(weight.dtype) * shift.unsqueeze(1)

    def component_states(
        self, h: torch.Tensor, components: slice | torch.Tensor = slice(None), first: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, n_selected, D) inputs of the output embedding; component index = r * H + k."""
        if self.adapters is None:
            return h.unsqueeze(1)[:, components]
        return self.adapters(self.component_inputs(h, components, first), components)

    def component_logits(
        self,
        h: torch.Tensor,
        components: slice | torch.Tensor = slice(None),
        first: torch.Tensor | None = None,
        draft: bool = False,
    ) -> torch.Tensor:
        """(B, n_selected, V) float32 vocabulary logits of the selected components; (B, n_selected, S) over the
        draft vocabulary when ``draft`` and one is set."""
        z = self.component_states(h, components, first)
        # One (B*n, D) product: a 3-D input whose strides do not fold falls back to a batched product
        # with the (V, D) weight expanded per row, several times slower on CPU.
        flat = z.reshape(-1, z.shape[-1]).to(self.unembedding.weight.dtype)
        unembedding = self.draft_unembedding() if draft and self.draft_vocab is not None else self.unembedding
        return unembedding(flat).float().unflatten(0, z.shape[:2])

    def check_hidden(self, h: torch.Tensor) -> None:
        config = self.config
        if h.shape[-1] != config.input_size:
            extra = f" x (1 + {config.extra_features} extra features)" if config.extra_features else ""
            raise ValueError(
                f"hidden size {h.shape[-1]} does not match the head's input size {config.input_size} "
                f"(hidden_size={config.hidden_size}{extra})"
            )

    def check_targets(self, y: torch.Tensor) -> None:
        if y.shape[-1] != self.horizon:
            raise ValueError(f"target block of length {y.shape[-1]} does not match horizon={self.horizon}")
        bad = ((y < 0) & (y != IGNORE_INDEX)) | (y >= self.config.vocab_size)
        if bad.any():
            value = int(y[bad][0])
            raise ValueError(
                f"token id {value} is out of range; allowed ids are 0..{self.config.vocab_size - 1} "
                f"or {IGNORE_INDEX} (ignored)"
            )

    def forward(
        self, h: torch.Tensor, horizon: int | None = None, first: torch.Tensor | None = None
    ) -> BlockDistribution:
        """The exact distribution of the first ``horizon`` (default H) tokens of the block.

        All needed components go through the output embedding in one batched product (its draft vocabulary's rows
        only, when one is set: :meth:`set_draft_vocab`).

        Args:
            h: (B, D) last hidden states, or (B, (1 + n) D) with n extra features after them.
            first: (B,) the block's first token, which a token-conditioned head needs for ``horizon`` > 1
                (the returned distribution is then only meaningful for blocks that start with it).
        """
        h = self.read(h)
        horizon = self.horizon if horizon is None else horizon
        components = slice(None)
        if horizon < self.horizon:
            grid = torch.arange(self.rank, device=h.device)[:, None] * self.horizon + torch.arange(horizon)
            components = grid.flatten()
        logits = self.component_logits(h, components, first, draft=True)  # (B, R*horizon, V or S)
        log_emit = torch.log_softmax(logits, dim=-1).unflatten(1, (self.rank, horizon))
        log_trans = self.log_trans(h)
        if log_trans is not None:
            log_trans = log_trans[:, : horizon - 1].float()
        vocab = None if self.draft_vocab is None else self.draft_vocab.to(h.device)
        return BlockDistribution(self.log_init(h).float(), log_trans, log_emit, vocab)

    def token_log_probs(
        self, h: torch.Tensor, y: torch.Tensor, first: torch.Tensor | None = None, draft: bool = False
    ) -> torch.Tensor:
        """Log emission probability of each target under each component, memory-bounded.

        Vocabulary logits are produced chunk by chunk, so at most ``loss_chunk_elements`` of them are alive
        at once, in the forward and the backward pass. With a frozen ``nn.Linear`` output embedding (as TJDModel
        keeps it in every train mode) the gradient is taken in the forward pass (:func:`target_log_probs`);
        otherwise each chunk runs under activation checkpointing.

        Args:
            h: (N, D) hidden states; y: (N, H) targets, -100 where ignored; first: (N,) the blocks' first
                tokens (token-conditioned heads only).
            draft: emit over the draft vocabulary (when one is set); ``y`` then holds positions in it.
        Returns:
            (N, R, H) float32 log-probabilities, 0 at ignored targets.
        """
        draft = draft and self.draft_vocab is not None
        if draft and torch.is_grad_enabled() and any(p.requires_grad for p in self.unembedding.parameters()):
            raise ValueError("a loss in the draft vocabulary needs a frozen output embedding")
        layer = self.draft_unembedding() if draft else self.unembedding
        n, n_comp = h.shape[0], self.rank * self.horizon
        vocab = self.draft_vocab.size if draft else self.config.vocab_size
        targets = y.repeat(1, self.rank)  # (N, R*H), component index r * H + k
        budget = self.config.loss_chunk_elements
        comps_per_chunk = n_comp if budget >= vocab * n_comp else max(1, budget // vocab)
        rows_per_chunk = max(1, budget // (vocab * comps_per_chunk))
        needs_grad = torch.is_grad_enabled() and (h.requires_grad or self.adapters is not None)
        if needs_grad and self._frozen_linear_unembedding():
            return self._fused_token_log_probs(h, targets, max(1, budget // vocab), first, layer)
        columns = []
        for c0 in range(0, n_comp, comps_per_chunk):
            c1 = min(c0 + comps_per_chunk, n_comp)
            rows = []
            for r0 in range(0, n, rows_per_chunk):
                window = slice(r0, r0 + rows_per_chunk)
                args = (h[window], targets[window, c0:c1], c0, c1, None if first is None else first[window], draft)
                if needs_grad:
                    rows.append(checkpoint(self._chunk_token_log_probs, *args, use_reentrant=False))
                else:
                    rows.append(self._chunk_token_log_probs(*args))
            columns.append(torch.cat(rows, dim=0))
        return torch.cat(columns, dim=1).unflatten(1, (self.rank, self.horizon))

    def _frozen_linear_unembedding(self) -> bool:
        layer = self.unembedding
        return isinstance(layer, nn.Linear) and not any(p.requires_grad for p in layer.parameters())

    def _fused_token_log_probs(
        self, h: torch.Tensor, targets: torch.Tensor, chunk_rows: int, first: torch.Tensor | None, layer: nn.Linear
    ) -> torch.Tensor:
        """(N, R, H) as :meth:`token_log_probs`, through :func:`target_log_probs` (no recomputation)."""
        z = self.component_states(h, first=first)  # (N, R*H, D)
        lp = target_log_probs(
            z.reshape(-1, z.shape[-1]), targets.clamp_min(0).reshape(-1), layer.weight, layer.bias, chunk_rows
        )
        lp = lp.view(targets.shape) * (targets != IGNORE_INDEX)
        return lp.unflatten(1, (self.rank, self.horizon))

    def _chunk_token_log_probs(
        self, h: torch.Tensor, targets: torch.Tensor, c0: int, c1: int, first: torch.Tensor | None, draft: bool
    ) -> torch.Tensor:
        logits = self.component_logits(h, slice(c0, c1), first, draft)  # (n, c, V or S)
        picked = logits.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (picked - torch.logsumexp(logits, dim=-1)) * (targets != IGNORE_INDEX)

    def log_prob(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        first: torch.Tensor | None = None,
        draft: bool = False,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exact normalised log p(y | h) for h (B, D) (or (B, (1 + n) D): :meth:`forward`), y (B, H); -100 targets
        are marginalised. (B,)

        ``inputs`` (B, H): the block's tokens an autoregressive drafter is fed while scoring y (teacher forcing;
        default y). The heads here condition on no drafted token, so they ignore it.

        A token-conditioned head reads ``first`` (B,), the token at the block's first position even where its
        label is ignored (default: ``y[:, 0]``, which must then be observed).

        With ``draft`` and a draft vocabulary set, p is the distribution the head drafts from (each component
        renormalised over the subset) and targets outside the subset are marginalised: the training loss of a
        head that will only ever propose those tokens, at ~S/V of the full loss's cost.
        """
        h = self.read(h)
        self.check_targets(y)
        if self.token_conditioned and first is None and self.horizon > 1:
            if (y[:, 0] == IGNORE_INDEX).any():
                raise ValueError("a token-conditioned head needs first=... where a block's first target is ignored")
            first = y[:, 0]
        if draft and self.draft_vocab is not None:
            local = self.draft_vocab.to(y.device).local(y.clamp_min(0))
            y = torch.where((y == IGNORE_INDEX) | (local < 0), IGNORE_INDEX, local)
        token_lp = self.token_log_probs(h, y, first, draft)
        return chain_log_prob(self.log_init(h).float(), _float_or_none(self.log_trans(h)), token_lp)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _float_or_none(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()
