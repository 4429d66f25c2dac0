"""Attention whose result for a query does not depend on how the query was batched: lossless verification in
16-bit floats.

Speculative decoding promises the tokens of one-token-at-a-time decoding. A pass that verifies k drafted
tokens computes the same attention rows as k single-token passes, but the fused kernels sum them in another
order (other blockings for k queries than for one, keys at other slots under a tree mask), and in bfloat16 or
float16 the hidden states are rounded after every layer, so a last-bit difference sometimes flips a near-tie
argmax and the outputs part ways. ``exact`` attention computes scores, softmax and the weighted sum of values in
float64 from the (exactly converted) 16-bit inputs and rounds once at the end: any two summation orders then
agree to ~1e-16, far below the 16-bit rounding step, so each query's output is the same bits however the pass
was made up. The matrix products need the same care (a GEMM library picks other kernels for one row, for a few
rows and for many): inside :func:`exact_attention_in` they run through :func:`tjdnet.row_invariance
.row_invariant_products` (checked by tests/test_attention.py and tests/test_row_invariance.py).

float32 models keep the model's own attention: their rounding is fine enough that greedy outputs already agree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tjdnet.checks import check_choice
from tjdnet.row_invariance import row_invariant_products

EXACT = "tjdnet_exact"
ATTENTION_CHOICES = ("auto", "exact", "model")
_MASKED = torch.finfo(torch.float64).min  # exp(_MASKED - max) is exactly 0, and a fully masked row stays finite


def exact_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Softmax attention in float64 (a transformers ``AttentionInterface`` function; inference only).

    Args:
        query: (B, Hq, q, d); key, value: (B, Hk, L, d) with Hq a multiple of Hk (grouped-query attention).
        attention_mask: (B or 1, 1, q, L), boolean (True attends) or additive; None means causal, the queries
            being the last q of the L positions.
    Returns:
        ((B, q, Hq, d) in the query's dtype, None).
    """
    if dropout:
        raise ValueError(f"exact attention is for inference; dropout={dropout} is not allowed")
    _calls.count += 1
    batch, q_heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = q_heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    queries = (query.to(torch.float64) * scale).reshape(batch, kv_heads, group * q_len, dim)  # heads share a kv head
    scores = (queries @ key.to(torch.float64).transpose(-1, -2)).view(batch, kv_heads, group, q_len, kv_len)
    if attention_mask is not None or q_len > 1:  # a single query with no mask attends to every key
        scores.add_(_additive_mask(attention_mask, q_len, kv_len, query.device)[:, :, None])
    probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, group * q_len, kv_len)
    out = (probs @ value.to(torch.float64)).view(batch, q_heads, q_len, dim)
    return out.transpose(1, 2).to(query.dtype).contiguous(), None


class _MaskCache(threading.local):
    """The last (mask or causal shape, its float64 form), per thread: one forward hands every layer the same mask."""

    key: object = None
    value: torch.Tensor | None = None


_last_mask = _MaskCache()


class _Calls(threading.local):
    count = 0


_calls = _Calls()  # exact_attention calls in this thread: whether a model really computes attention through it


def _additive_mask(mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """(B or 1, 1, q, L) float64 mask, 0 where a query attends and ``_MASKED`` elsewhere; None means causal."""
    key = (q_len, kv_len, device) if mask is None else mask
    cached = _last_mask.key
    if key is cached or (mask is None and isinstance(cached, tuple) and key == cached):
        return _last_mask.value
    if mask is None:
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril_(kv_len - q_len)[None, None]
    if mask.dtype == torch.bool:
        additive = torch.zeros(mask.shape, dtype=torch.float64, device=device).masked_fill_(~mask, _MASKED)
    else:
        additive = mask.to(torch.float64).clamp_(min=_MASKED)
    _last_mask.key, _last_mask.value = key, additive
    return additive


def register_exact_attention() -> None:
    """Make ``tjdnet_exact`` a transformers attention implementation (idempotent; done by
    :func:`exact_attention_in`, so importing this module registers nothing)."""
    AttentionInterface.register(EXACT, exact_attention)
    AttentionMaskInterface.register(EXACT, sdpa_mask)


def resolve_attention(choice: str, dtype: torch.dtype) -> bool:
    """Whether ``choice`` (``auto``: exact for 16-bit floats; ``exact``; ``model``: the model's own) means exact."""
    check_choice("attention", choice, ATTENTION_CHOICES)
    if choice == "auto":
        return dtype in (torch.bfloat16, torch.float16)
    return choice == "exact"


@contextmanager
def exact_attention_in(lm: torch.nn.Module, enabled: bool = True) -> Iterator[Callable[[], bool]]:
    """Run a transformers model with :func:`exact_attention`, and its matrix products row-invariant
    (:func:`tjdnet.row_invariance.row_invariant_products`), inside the block; a no-op when not ``enabled``.

    Yields a function telling whether exact attention has computed anything since the block began: False after a
    forward pass means the model's attention does not go through transformers' ``AttentionInterface``.
    """
    previous = lm.config._attn_implementation
    start = _calls.count
    if not enabled:
        yield lambda: False
        return
    if previous != EXACT:
        register_exact_attention()
        lm.set_attn_implementation(EXACT)
    try:
        with row_invariant_products(lm):
            yield lambda: _calls.count > start
    finally:
        _last_mask.key = _last_mask.value = None  # let the last mask go
        if previous != EXACT:
            lm.set_attn_implementation(previous)
