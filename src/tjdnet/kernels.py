"""Inference products of ``nn.Linear`` on CPU through oneDNN instead of MKL.

``nn.Linear`` sends float32 CPU products to MKL's sgemm, which is slow for the few-row products of decoding.
Measured on the 2-core AMD EPYC of our CI (float32, 2 threads): the (M, 576) x (576, 49152) vocabulary
projection takes 11.7 / 21.8 / 33 ms at M = 1 / 4 / 32 through MKL and 5.4 / 7.2 / 15 ms through oneDNN, and a
cached SmolLM2-135M step over 1 / 4 new tokens 57.6 / 85 ms against 43 / 53.5 ms (results equal to ~1e-5).
oneDNN was never slower, up to M = 1024. bfloat16 already goes through oneDNN, so nothing changes there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn


def _onednn_applies(layer: nn.Linear, x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or x.dtype != layer.weight.dtype:
        return False
    # The oneDNN op has no autograd formula: whatever needs a gradient keeps nn.Linear's path.
    if not torch.is_grad_enabled():
        return True
    bias_grad = layer.bias is not None and layer.bias.requires_grad
    return not (x.requires_grad or layer.weight.requires_grad or bias_grad)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` with the same parameters and state dict, computing without autograd through oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _onednn_applies(self, x):
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


LINEAR_KERNEL_ENV = "TJDNET_LINEAR_KERNEL"
LINEAR_KERNELS = ("onednn", "default")


def onednn_requested() -> bool:
    """Whether ``$TJDNET_LINEAR_KERNEL`` (``onednn``, the default; ``default``: plain ``nn.Linear``) asks for it."""
    value = os.environ.get(LINEAR_KERNEL_ENV, "onednn")
    if value not in LINEAR_KERNELS:
        raise ValueError(f"{LINEAR_KERNEL_ENV}={value!r} is not allowed; use one of {', '.join(LINEAR_KERNELS)}")
    return value == "onednn"


def use_onednn_linears(module: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` inside ``module`` into a :class:`OneDNNLinear`, in place, for good (a
    module tjdnet owns; :func:`cpu_kernels` does it for a block only). Returns how many layers changed (none
    where this torch build has no oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.Linear:
            layer.__class__ = OneDNNLinear
            changed += 1
    return changed


def weight_state(weight: torch.Tensor) -> tuple:
    """What a copy derived from ``weight`` (a draft-vocabulary slice, an int8 copy) depends on: its storage,
    in-place updates, dtype and device. A copy made when these were the same is still valid. (An inference tensor
    keeps no version counter; it cannot be changed in place outside inference mode.)"""
    version = 0 if weight.is_inference() else weight._version
    return (weight.data_ptr(), version, weight.dtype, weight.device)


_flush_depth = 0


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush float32 denormals to zero inside the block, then back to torch's default (off).

    Log-space heads exponentiate many very negative numbers; on x86 CPUs the resulting denormals make softmax and
    logsumexp up to 100x slower (a 4-token draft took 340 ms instead of 3 ms). Values below 1.2e-38 change no
    result that matters. Nested blocks keep it on until the outermost one ends.
    """
    global _flush_depth
    if _flush_depth == 0:
        torch.set_flush_denormal(True)
    _flush_depth += 1
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def cpu_kernels(module: nn.Module) -> Iterator[None]:
    """Inside the block: denormals flushed, and ``module``'s ``nn.Linear`` layers computing through oneDNN when
    ``$TJDNET_LINEAR_KERNEL`` asks for it (the default). The layers are plain ``nn.Linear`` again afterwards, so a
    caller's model is left as it was given. The class swap keeps parameters and state dict: it costs a walk over
    the modules, microseconds against any forward pass."""
    with flushed_denormals():
        if not onednn_requested():
            yield
            return
        changed = [m for m in module.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"]
        if not torch.backends.mkldnn.is_available():
            changed = []
        for layer in changed:
            layer.__class__ = OneDNNLinear
        try:
            yield
        finally:
            for layer in changed:
                layer.__class__ = nn.Linear
