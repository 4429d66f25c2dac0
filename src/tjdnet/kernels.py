"""Inference products of ``nn.Linear`` on CPU through oneDNN instead of MKL.

``nn.Linear`` sends float32 CPU products to MKL's sgemm, which is slow for the few-row products of decoding.
Measured on the 2-core AMD EPYC of our CI (float32, 2 threads): the (M, 576) x (576, 49152) vocabulary
projection takes 11.7 / 21.8 / 33 ms at M = 1 / 4 / 32 through MKL and 5.4 / 7.2 / 15 ms through oneDNN, and a
cached SmolLM2-135M step over 1 / 4 new tokens 57.6 / 85 ms against 43 / 53.5 ms (results equal to ~1e-5).
oneDNN was never slower, up to M = 1024. bfloat16 already goes through oneDNN, so nothing changes there.
"""

from __future__ import annotations

import os

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


def use_onednn_linears(module: nn.Module, enabled: bool = True) -> int:
    """Turn every plain ``nn.Linear`` inside ``module`` into a :class:`OneDNNLinear` (or back), in place.

    Returns how many layers changed (none where this torch build has no oneDNN).
    """
    if enabled and not torch.backends.mkldnn.is_available():
        return 0
    source, target = (nn.Linear, OneDNNLinear) if enabled else (OneDNNLinear, nn.Linear)
    changed = 0
    for layer in module.modules():
        if type(layer) is source:
            layer.__class__ = target
            changed += 1
    return changed
