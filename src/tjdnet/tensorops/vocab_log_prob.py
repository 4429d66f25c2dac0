"""log softmax(z W^T + b)[y] over a large vocabulary, with its gradient taken in the forward pass.

For a fixed output embedding W (V, D) the gradient of ``lp = log softmax(z W^T + b)[y]`` with respect to
z is ``W[y] - softmax(z W^T + b) @ W``, a (D,) vector that does not depend on anything downstream. The
forward pass computes it chunk by chunk and keeps it instead of the (M, V) logits, so the backward pass is
one multiplication: two vocabulary-sized products per row in all, where activation checkpointing needs
three (forward, recomputation, input gradient), and at most ``chunk_rows`` x V logits alive at once.
Only valid when W and b receive no gradient.
"""

from __future__ import annotations

import torch


class _TargetLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, weight, bias, chunk_rows):
        log_probs = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
        jacobian = torch.empty(z.shape, dtype=torch.float32, device=z.device)
        for r0 in range(0, z.shape[0], chunk_rows):
            rows = slice(r0, r0 + chunk_rows)
            logits = torch.nn.functional.linear(z[rows].to(weight.dtype), weight, bias).float()  # (m, V)
            y = targets[rows]
            log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            log_probs[rows] = logits.gather(-1, y[:, None]).squeeze(-1) - log_norm.squeeze(-1)
            probs = logits.sub_(log_norm).exp_()
            expected = (probs.to(weight.dtype) @ weight).float()  # (m, D)
            jacobian[rows] = weight[y].float() - expected
        ctx.save_for_backward(jacobian)
        ctx.z_dtype = z.dtype
        return log_probs

    @staticmethod
    def backward(ctx, grad_log_probs):
        (jacobian,) = ctx.saved_tensors
        grad_z = (grad_log_probs[:, None] * jacobian).to(ctx.z_dtype)
        return grad_z, None, None, None, None


def target_log_probs(
    z: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_rows: int = 256,
) -> torch.Tensor:
    """Float32 log-probabilities (M,) of ``targets`` (M,) under softmax(z W^T + b), differentiable in z only.

    Args:
        z: (M, D) inputs of the output embedding; targets: (M,) token ids in 0..V-1.
        weight: (V, D) output embedding; bias: (V,) or None. Neither may require a gradient.
        chunk_rows: rows whose logits are materialised at once.
    """
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("target_log_probs needs a frozen output embedding; use the checkpointed loss instead")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows}; allowed: a positive integer")
    return _TargetLogProb.apply(z, targets, weight, bias, chunk_rows)
