"""The device a command runs on: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when there is one), checked
where it is given, and the clock that times work on it."""

from __future__ import annotations

import re
import time

import torch

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "auto")


def resolve_device(name: str | torch.device) -> torch.device:
    """The ``torch.device`` named by ``name``; ValueError when it is malformed or not present on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"device={name!r} is not allowed; use one of {', '.join(DEVICE_CHOICES)}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} is not available: this torch sees no CUDA GPU; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} is not available: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; the CPU needs nothing)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_clock(device: torch.device | str) -> float:
    """``time.perf_counter()`` once everything queued on ``device`` has finished."""
    synchronize(device)
    return time.perf_counter()
