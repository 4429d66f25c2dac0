"""Matrix products whose result for a row does not depend on the rows it was multiplied with: with
:mod:`tjdnet.attention`, what lossless verification in 16-bit floats needs.

A pass that verifies k drafted tokens multiplies k rows (more for a tree or a batch) where one-token decoding
multiplies one. CPU GEMM libraries choose their kernel by the number of rows, and kernels sum the K terms of a
row's dot products in different orders. Measured with torch 2.13's bfloat16 products (oneDNN): a single row goes
through another kernel than two or more rows do (on an AVX-512-bf16 AMD EPYC, K = 1536 or 2048 gives a few outputs
of a one-row product another last bit than the same row among 2-40 rows; K <= 1024 agrees), and beyond 32 rows
another kernel again (an AMX Xeon). In bfloat16 such a last-bit difference in a hidden state sometimes flips a
near-tie argmax a few tokens later, and a speculative answer parts from the one-token answer.

Inside :func:`row_invariant_products`, every row-wise product layer of a model (``nn.Linear`` and its subclasses,
transformers' ``Conv1D``, including the layers inside LoRA wrappers) multiplies between ``INVARIANT_ROWS[0]`` and
``INVARIANT_ROWS[1]`` rows per call: one row is multiplied beside a copy of itself, larger inputs in blocks of at
most 32 rows, a last block of one row padded the same way. Every row then goes through the same kernel, whatever
the pass it belongs to. float32 products obey the same rule where exact decoding is asked for in float32
(``attention="exact"``): oneDNN's float32 products of 2-40 rows agree row by row there, one row alone does not.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# (fewest, most) rows per product inside row_invariant_products; tests/test_row_invariance.py checks, on
# the machine it runs on, that any row gets the same bits anywhere in this range.
INVARIANT_ROWS = (2, 32)
ROW_WISE_LAYERS = (nn.Linear, Conv1D)
_USERS = "_tjdnet_row_invariant_users"  # how many open row_invariant_products blocks wrapped this layer
_BEFORE = "_tjdnet_row_invariant_before"  # the layer's own instance-level forward, if it had one (hooks, ...)


def in_row_blocks(
    product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows: tuple[int, int]
) -> torch.Tensor:
    """``product(x)`` for a row-wise ``product`` ((M, K) -> (M, N)), computed so that it only ever sees between
    ``rows[0]`` and ``rows[1]`` rows at once.

    Args:
        x: (..., K); its leading dimensions are flattened into rows.
    Returns:
        (..., N), each row as ``product`` gives it within an allowed number of rows.
    """
    fewest, most = rows
    count = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if count == 0 or fewest <= count <= most:
        return product(x)
    flat = x.reshape(count, x.shape[-1])
    parts = []
    for start in range(0, count, most):
        block = flat[start : start + most]
        n = block.shape[0]
        if n < fewest:  # copies of its first row take the missing places, and are dropped from the result
            block = torch.cat([block, block[:1].expand(fewest - n, -1)])
        parts.append(product(block)[:n])
    return torch.cat(parts).view(*x.shape[:-1], -1)


class _Active(threading.local):
    depth = 0


_active = _Active()  # per thread: one thread's exact decoding leaves the products of another alone
_lock = threading.Lock()


def _row_invariant_forward(forward: Callable[..., torch.Tensor], x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if not _active.depth or not x.is_floating_point() or (torch.is_grad_enabled() and x.requires_grad):
        return forward(x, *args, **kwargs)
    return in_row_blocks(lambda rows: forward(rows, *args, **kwargs), x, INVARIANT_ROWS)


def _wrap(layer: nn.Module) -> None:
    users = layer.__dict__.get(_USERS, 0)
    if users == 0:
        layer.__dict__[_BEFORE] = layer.__dict__.get("forward")
        layer.__dict__["forward"] = functools.partial(_row_invariant_forward, layer.forward)
    layer.__dict__[_USERS] = users + 1


def _unwrap(layer: nn.Module) -> None:
    users = layer.__dict__[_USERS] - 1
    if users == 0:
        before = layer.__dict__.pop(_BEFORE)
        del layer.__dict__["forward"], layer.__dict__[_USERS]
        if before is not None:
            layer.__dict__["forward"] = before
    else:
        layer.__dict__[_USERS] = users


@contextmanager
def row_invariant_products(model: nn.Module) -> Iterator[None]:
    """Inside the block, the floating-point products of ``model``'s row-wise layers give a row the same bits however
    many rows came with it (in this thread). The layers' forward is wrapped for the block only (nested and
    concurrent blocks share one wrapper) and restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, ROW_WISE_LAYERS)]
    with _lock:
        for layer in layers:
            _wrap(layer)
    _active.depth += 1
    try:
        yield
    finally:
        _active.depth -= 1
        with _lock:
            for layer in layers:
                _unwrap(layer)
