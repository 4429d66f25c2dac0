"""Acceptance rules for verifying a drafted block against the verifier's distributions.

Both rules take the verifier's processed log-distributions at the k + 1 positions of a step: position i
(0 <= i < k) scores draft token i, position k supplies the bonus token when the whole draft is accepted.
"""

from __future__ import annotations

import torch

from tjdnet.sampling import SamplingConfig, argmax, choose_tokens


def leading_true(accepted: torch.Tensor) -> torch.Tensor:
    """(B,) number of leading True values in each row of a (B, k) boolean tensor."""
    return accepted.long().cumprod(dim=1).sum(dim=1)


def greedy_accept(draft: torch.Tensor, target_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept the longest draft prefix equal to the verifier's argmax, then take its next argmax.

    Args:
        draft: (B, k) drafted tokens.
        target_log_probs: (B, k + 1, V) verifier log-distributions.
    Returns:
        n_accepted (B,) in 0..k and the verifier's token after the accepted prefix (B,).
    """
    choice = argmax(target_log_probs)  # (B, k + 1)
    n_accepted = leading_true(draft == choice[:, :-1])
    return n_accepted, choice.gather(1, n_accepted[:, None]).squeeze(1)


def greedy_accept_tree(
    tokens: torch.Tensor, parents: torch.Tensor, target_log_probs: torch.Tensor, depth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Follow the verifier's argmax from the root down a draft tree while some child carries it.

    Args:
        tokens, parents: (B, N) the tree's nodes (see :class:`~tjdnet.decoding.tree.DraftTree`).
        target_log_probs: (B, N + 1, V) verifier log-distributions after the root (index 0) and each node.
        depth: the tree's greatest depth.
    Returns:
        path (B, depth + 1): node indices from the root, the first n_accepted + 1 meaningful (the rest repeat
        the last); n_accepted (B,) in 0..depth; the verifier's token after the path (B,).
    """
    choice = argmax(target_log_probs)  # (B, N + 1)
    node = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    n_accepted = torch.zeros_like(node)
    path = [node]
    for d in range(depth):
        wanted = choice.gather(1, node[:, None])
        match = (parents == node[:, None]) & (tokens == wanted)  # children are distinct: at most one match
        found = match.any(dim=1) & (n_accepted == d)
        node = torch.where(found, match.long().argmax(dim=1) + 1, node)
        n_accepted = n_accepted + found.long()
        path.append(node)
    return torch.stack(path, dim=1), n_accepted, choice.gather(1, node[:, None]).squeeze(1)


def speculative_accept(
    draft: torch.Tensor,
    draft_log_probs: torch.Tensor,
    target_log_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative rejection sampling: the emitted tokens are distributed exactly as the verifier's.

    Draft token i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the
    next token is drawn from norm(max(0, p_i - q_i)); when all k are accepted it is drawn from p_k.

    Args:
        draft: (B, k) tokens drawn from the draft distributions.
        draft_log_probs: (B, k, V) processed draft log-distributions q.
        target_log_probs: (B, k + 1, V) processed verifier log-distributions p.
    Returns:
        n_accepted (B,) in 0..k and the next token (B,).
    """
    batch, k = draft.shape
    p_draft = target_log_probs[:, :k].gather(-1, draft[..., None]).squeeze(-1)
    q_draft = draft_log_probs.gather(-1, draft[..., None]).squeeze(-1)
    u = torch.rand(batch, k, generator=generator, device=draft.device)
    n_accepted = leading_true(u.log() < p_draft - q_draft)
    rows = torch.arange(batch, device=draft.device)
    p_next = target_log_probs[rows, n_accepted].exp()  # (B, V)
    rejected = n_accepted < k
    if k > 0 and rejected.any():
        q_next = draft_log_probs[rows, n_accepted.clamp_max(k - 1)].exp()
        residual = (p_next - q_next).clamp_min(0)
        # When p == q the residual vanishes; rejection then had probability zero, so p is a safe fallback.
        usable = rejected & (residual.sum(-1) > 0)
        p_next = torch.where(usable[:, None], residual, p_next)
    probs = p_next / p_next.sum(-1, keepdim=True)
    next_token = choose_tokens(probs.log(), SamplingConfig(do_sample=True), generator)
    return n_accepted, next_token
