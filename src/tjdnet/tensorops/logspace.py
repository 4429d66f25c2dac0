"""Pure log-space contractions for mixture-of-products (CP) and tensor-train (MPS/HMM) joints.

Both families are expressed as a hidden-state chain over R states along the block of H tokens:

    p(y_1..y_H) = sum_{s_1..s_H} init[s_1] * prod_k emit[s_k, k, y_k] * prod_{k<H} trans_k[s_k, s_{k+1}]

A CP (mixture of products) is the special case ``trans_k = identity`` (the state never changes), and
independent multi-token heads are the case R = 1. Every quantity is kept as a log-probability and
combined with ``logsumexp``, so nothing under- or overflows for any H or R.

A *message* (B, R) is ``log p(y_<k, s_k = r)``: the forward variable of the chain before position k.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def emit(message: torch.Tensor, token_log_probs: torch.Tensor) -> torch.Tensor:
    """Absorb the emission at one position into a message.

    Args:
        message: (B, R) forward log-message before the position.
        token_log_probs: (B, R) log emission probability of the observed token under each state
            (0 for a marginalised position).
    Returns:
        (B, R) message including the emission.
    """
    return message + token_log_probs


def transition(message: torch.Tensor, log_trans: torch.Tensor | None) -> torch.Tensor:
    """Move a message to the next position.

    Args:
        message: (B, R) forward log-message after an emission, or (B, ..., R).
        log_trans: (B, R, R) row-normalised log transition matrix (from-state, to-state), broadcastable
            as (B, ..., R, R) against the message; or None for the identity (mixture of products).
    Returns:
        (B, R) (or (B, ..., R)) message for the next position.
    """
    if log_trans is None:
        return message
    return torch.logsumexp(message.unsqueeze(-1) + log_trans, dim=-2)


def chain_log_prob(
    log_init: torch.Tensor, log_trans: torch.Tensor | None, token_log_probs: torch.Tensor
) -> torch.Tensor:
    """Exact log-probability of a block under the chain.

    Args:
        log_init: (B, R) log initial state distribution (mixture weights for CP).
        log_trans: (B, H-1, R, R) log transitions, or None for a mixture of products.
        token_log_probs: (B, R, H) log emission probability of each observed token under each state;
            0 at marginalised positions (a normalised emission sums to one over the vocabulary).
    Returns:
        (B,) log p(y).
    """
    horizon = token_log_probs.shape[-1]
    if log_trans is None:
        return torch.logsumexp(log_init + token_log_probs.sum(dim=-1), dim=-1)
    message = log_init
    for k in range(horizon):
        message = emit(message, token_log_probs[..., k])
        if k < horizon - 1:
            message = transition(message, log_trans[:, k])
    return torch.logsumexp(message, dim=-1)


def conditional_log_probs(message: torch.Tensor, log_emit: torch.Tensor) -> torch.Tensor:
    """Distribution of the next token given the observed prefix.

    Args:
        message: (B, R) forward log-message before position k, or (B, ..., R) for several prefixes.
        log_emit: (B, R, V) log emission distributions at position k, or (B, ..., R, V) broadcastable
            against the message.
    Returns:
        (B, V) (or (B, ..., V)) normalised log q(y_k | y_<k).
    """
    joint = torch.logsumexp(message.unsqueeze(-1) + log_emit, dim=-2)
    return joint - torch.logsumexp(message, dim=-1, keepdim=True)
