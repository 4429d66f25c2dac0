"""int8 weights for drafting: the head's matrix products read 8-bit copies of its weights.

A drafting step is a handful of few-row products (M = the tree's nodes at one depth) whose cost on a CPU is reading
the weights: an EAGLE-style drafter with an 8,192-token draft vocabulary reads ~16 MB of bfloat16 weights per
depth. With each weight row stored as int8 and one scale (symmetric, per output row), torch's weight-only int8
product (``aten._weight_int8pack_mm``) reads half the bytes of bfloat16. Measured on the
2-core AMD EPYC of our CI (2 threads, M = 4): the (576 -> 8,192) draft-vocabulary product 338 -> 158 us, the
drafter's (576 -> 1,728) product 52 -> 31 us; drafting a tree of SmolLM2-135M's shipped head 5.1 -> 3.4 ms a step.

The int8 kernel is fast only where torch vectorised it (bfloat16 on AVX-512 CPUs; float32 and float16 are 4-10x
slower than their own products there), so ``auto`` measures both products once per process
(:func:`int8_pays_off`) and drafts in int8 only where it wins.

Verification never reads these weights: in ``speculative`` decoding the quantised head changes which tokens are
proposed (rarely: the rounding is ~0.4% of a row's largest weight), never the output, and sampled outputs keep
their distribution (acceptance uses the drafted distribution the int8 products gave). In ``draft`` modes the head's
tokens are the output, so there the head keeps its own weights unless int8 is asked for.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Iterator

import torch
from torch import nn

from tjdnet.checks import check_choice
from tjdnet.kernels import use_onednn_linears, weight_state

DRAFT_WEIGHTS = ("auto", "int8", "model")
LOSSLESS_MODES = ("speculative",)
_INT8_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ALIGNMENT = 64  # bytes; a fresh CPU tensor is aligned so
# torch 2.13's bfloat16 int8 kernel gives wrong sums or crashes unless the inner dimension is a multiple of 16
# (float32 and float16 were right for every size we tried); other sizes take the expanded copy
_FUSED_K_MULTIPLE = 16
_CACHE = "_tjdnet_int8"  # (what the copy was made from, int8 weight (N, K), scales (N,))


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation of ``weight`` (N, K): (q (N, K) int8, scales (N,) float32) with
    ``weight ~= q * scales[:, None]``, each element off by at most half its row's scale (an all-zero row gets
    scale 1 and zeros)."""
    w = weight.detach().float()
    largest = w.abs().amax(dim=-1)
    scales = torch.where(largest > 0, largest / 127, torch.ones_like(largest))
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def check_draft_weights(draft_weights: object) -> None:
    check_choice("draft_weights", draft_weights, DRAFT_WEIGHTS)


def resolve_draft_weights(draft_weights: str, gen_mode: str, head: nn.Module) -> bool:
    """Whether ``head`` drafts with int8 weights in ``gen_mode``: ``int8`` always, ``model`` never, ``auto`` in the
    lossless modes (where it can change the speed only) when :func:`int8_pays_off` for the head's largest layer;
    never in ``ar``, which does not draft."""
    check_draft_weights(draft_weights)
    if gen_mode == "ar" or draft_weights == "model":
        return False
    if draft_weights == "int8":
        return True
    if gen_mode not in LOSSLESS_MODES:
        return False
    layers = int8_layers(head)
    if not layers:
        return False
    largest = max(layers, key=lambda layer: layer.weight.numel()).weight
    if largest.device.type != "cpu":
        return False
    return int8_pays_off(largest.dtype, *largest.shape, torch.get_num_threads())


@functools.lru_cache
def int8_pays_off(dtype: torch.dtype, outputs: int, inputs: int, threads: int, rows: int = 4) -> bool:
    """Whether, on this CPU with ``threads`` threads, a (rows, inputs) x (inputs, outputs) product is at least 10%
    faster through the int8 kernel than in ``dtype`` (measured once per process and shape: ~70 ms for the shipped
    head's 8,192 x 576 draft-vocabulary product, most of it making the random weight and its int8 copy).

    torch's int8 kernel is fast only where it is vectorised: on an AVX-512-bf16 AMD EPYC bfloat16 takes half the
    time of oneDNN's bfloat16 product, while float32 and float16 take 4-10x longer."""
    if dtype not in _INT8_DTYPES or inputs % _FUSED_K_MULTIPLE:
        return False
    generator = torch.Generator().manual_seed(0)
    plain = nn.Linear(inputs, outputs, bias=False, dtype=dtype)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(outputs, inputs, generator=generator))
    use_onednn_linears(plain)  # as generate computes the head's float products (tjdnet.kernels)
    quantised = copy.deepcopy(plain)
    quantised.__class__ = Int8Linear
    x = torch.randn(rows, inputs, generator=generator).to(dtype)
    with torch.inference_mode():
        times = {layer: [] for layer in (plain, quantised)}
        for round_ in range(6):
            for layer, spent in times.items():
                start = time.perf_counter()
                layer(x)
                if round_ > 0:  # the first round warms up (and makes the int8 copy)
                    spent.append(time.perf_counter() - start)
    return min(times[quantised]) < 0.9 * min(times[plain])


class Int8Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose products without autograd read an int8 copy of the
    weight, made on first use and again when the weight changes (values, dtype or device).

    On CPU the product is torch's fused weight-only int8 kernel (for inner dimensions that are a multiple of 16);
    elsewhere the copy is expanded to the input's dtype (the same numbers, without the speed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _INT8_DTYPES or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        q, scales = self._int8()
        flat = x.reshape(-1, x.shape[-1])
        if flat.device.type == "cpu" and flat.shape[0] > 0 and flat.shape[1] % _FUSED_K_MULTIPLE == 0:
            flat = flat.contiguous()
            if flat.data_ptr() % _ALIGNMENT:  # the kernel's vector loads crash on an input a view left unaligned
                flat = flat.clone()
            out = torch.ops.aten._weight_int8pack_mm(flat, q, scales.to(x.dtype))
        else:
            out = nn.functional.linear(flat, (q.to(torch.float32) * scales[:, None]).to(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        source = weight_state(self.weight)
        cached = getattr(self, _CACHE, None)
        if cached is None or cached[0] != source:
            cached = (source, *int8_rows(self.weight))
            object.__setattr__(self, _CACHE, cached)  # not a buffer: stays out of the state dict
        return cached[1], cached[2]


def int8_layers(head: nn.Module) -> list[nn.Linear]:
    """The row-wise product layers a head drafts with: its own ``nn.Linear`` layers (and subclasses) and its
    draft-vocabulary projection, never the backbone's embeddings it shares (those also verify)."""
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if getattr(head, "draft_vocab", None) is not None:
        layers.append(head.draft_unembedding())
    return layers


@contextlib.contextmanager
def int8_drafting(head: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block the head's product layers (:func:`int8_layers`) compute as :class:`Int8Linear`; they get
    their own classes back afterwards. Does nothing unless ``enabled``."""
    layers = int8_layers(head) if enabled else []
    classes = [type(layer) for layer in layers]
    for layer in layers:
        layer.__class__ = Int8Linear
    try:
        yield
    finally:
        for layer, cls in zip(layers, classes, strict=True):
            layer.__class__ = cls
