"""The exact joint distribution of one block of H tokens, as produced by a head at inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tjdnet.heads.vocab import DraftVocab
from tjdnet.sampling import SamplingConfig, choose_tokens, process_log_probs
from tjdnet.tensorops.logspace import (
    IGNORE_INDEX,
    chain_log_prob,
    conditional_log_probs,
    emit,
    transition,
)


class SequentialDraft:
    """Drafting by position for any block distribution with a left-to-right state ("message").

    Subclasses provide ``start()``, ``conditional(message, k)`` (log q over their emission vocabulary),
    ``observe(message, k, tokens)``, ``token_ids(index)``, ``horizon``, ``vocab`` (a DraftVocab or None),
    ``batch_size`` and ``emission_size``.
    """

    vocab: DraftVocab | None

    def draft(
        self,
        config: SamplingConfig,
        prefix: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose the rest of the block position by position, conditioned on a given prefix.

        Greedy picks the sequential conditional argmax; sampling is ancestral within the block.

        Args:
            prefix: (B, P) tokens already fixed at positions 0..P-1 (e.g. the verifier's own token).
            length: how many tokens to choose after the prefix (default: up to the horizon).
        Returns:
            tokens (B, L) and their processed draft log-distributions (B, L, V), over the whole vocabulary.
        """
        message = self.start()
        fixed = 0 if prefix is None else prefix.shape[1]
        end = self.horizon if length is None else min(self.horizon, fixed + length)
        for k in range(fixed):
            message = self.observe(message, k, prefix[:, k])
        tokens, dists = [], []
        for k in range(fixed, end):
            log_q = process_log_probs(self.conditional(message, k), config)
            token = self.token_ids(choose_tokens(log_q, config, generator))
            tokens.append(token)
            dists.append(log_q if self.vocab is None else self.vocab.expand(log_q))
            if k < end - 1:
                message = self.observe(message, k, token)
        if not tokens:
            vocab = self.emission_size if self.vocab is None else self.vocab.vocab_size
            empty = torch.zeros(self.batch_size, 0, vocab, device=message.device)
            return torch.zeros(self.batch_size, 0, dtype=torch.long, device=message.device), empty
        return torch.stack(tokens, dim=1), torch.stack(dists, dim=1)


@dataclass
class BlockDistribution(SequentialDraft):
    """p(y_1..y_H | h) for a batch of hidden states, with all vocabulary log-probs materialised.

    Attributes:
        log_init: (B, R) log initial state / mixture weights.
        log_trans: (B, H-1, R, R) log transitions, or None for a mixture of products.
        log_emit: (B, R, H, V) float32 log emission distributions (each row sums to one); with a draft vocabulary
            the last dimension is its S tokens instead.
        vocab: the draft vocabulary the emissions range over (:mod:`tjdnet.heads.vocab`), or None for all tokens.
            Tokens passed in and returned are always vocabulary ids; a token outside the subset has probability
            zero, and observing one tells nothing about the hidden state.
    """

    log_init: torch.Tensor
    log_trans: torch.Tensor | None
    log_emit: torch.Tensor
    vocab: DraftVocab | None = None

    @property
    def horizon(self) -> int:
        return self.log_emit.shape[2]

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Exact log p(y) for blocks y (B, H); positions equal to -100 are marginalised. Returns (B,)."""
        observed = y != IGNORE_INDEX
        local = self._local(y.clamp_min(0))
        index = local.clamp_min(0)[:, None, :, None].expand(-1, self.log_emit.shape[1], -1, 1)
        token_lp = self.log_emit.gather(-1, index).squeeze(-1) * observed[:, None, :]
        outside = (local < 0) & observed  # an observed token the draft vocabulary lacks has probability zero
        return chain_log_prob(self.log_init, self.log_trans, token_lp.masked_fill(outside[:, None, :], float("-inf")))

    def start(self) -> torch.Tensor:
        """The (B, R) message before the first position."""
        return self.log_init

    def conditional(self, message: torch.Tensor, k: int) -> torch.Tensor:
        """(B, ..., V) log q(y_k | y_<k) given messages (B, ..., R) before position k (0-based)."""
        return conditional_log_probs(message, self._per_prefix(self.log_emit[:, :, k], message))

    def observe(self, message: torch.Tensor, k: int, tokens: torch.Tensor) -> torch.Tensor:
        """Condition messages (B, ..., R) on tokens (B, ...) at position k; returns the messages before k + 1."""
        log_emit = self.log_emit[:, :, k]  # (B, R, V)
        local = self._local(tokens).reshape(tokens.shape[0], 1, -1)
        index = local.clamp_min(0).expand(-1, log_emit.shape[1], -1)  # (B, R, F)
        token_lp = log_emit.gather(-1, index).masked_fill(local < 0, 0.0).transpose(1, 2).reshape(message.shape)
        message = emit(message, token_lp)
        if self.log_trans is not None and k < self.horizon - 1:
            message = transition(message, self._per_prefix(self.log_trans[:, k], message))
        return message

    def token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of indices into ``log_emit``'s last dimension."""
        return index if self.vocab is None else self.vocab.ids[index]

    def _local(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.vocab is None else self.vocab.local(tokens)

    @staticmethod
    def _per_prefix(x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """View a per-row tensor (B, R, ...) as (B, 1.., R, ...) to broadcast against messages (B, ..., R)."""
        return x.view(x.shape[0], *([1] * (message.dim() - 2)), *x.shape[1:])

    @property
    def batch_size(self) -> int:
        return self.log_emit.shape[0]

    @property
    def emission_size(self) -> int:
        return self.log_emit.shape[-1]
